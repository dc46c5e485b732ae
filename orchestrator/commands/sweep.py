"""`python -m orchestrator sweep SPEC.yaml [--set k=v] [--dry-run] [--resume [auto]] [--address A] [--tracking-uri URI]
[--verbose]`."""

from __future__ import annotations

import argparse
import os

from orchestrator.errors import UserError
from orchestrator.tracking.store import add_tracking_uri


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="search distillation settings with Ray Tune + Optuna (see search_spaces/)")
    p.add_argument("spec", help="YAML sweep spec, e.g. search_spaces/quickstart.yaml")
    add_run_args(
        p,
        "a sweep",
        "data.root=/data/ttpla, search.num_samples=20, space.distill.alpha.high=1.0, resources.max_concurrent=4",
        "the resolved space",
    )
    p.set_defaults(run=run)


def add_run_args(p, what: str, examples: str, dry: str) -> None:
    """The options `sweep` and `ablate` share."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a spec key (repeatable): {examples}",
    )
    p.add_argument("--dry-run", action="store_true", help=f"print {dry} and per-trial resources; run nothing")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        type=_resume_mode,
        metavar="auto",
        help=f"continue {what} whose driver stopped: finished trials are kept, unfinished ones "
        "continue from their last checkpoint; '--resume auto' continues it if it exists and starts it "
        "if not (a retried Kubernetes job, a requeued SLURM job); a second driver while one runs is refused",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on ('auto', 'ray://head:10001'); default $RAY_ADDRESS, else a local Ray",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's own trial tables and worker logs")
    add_tracking_uri(p)


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"'{text}': --resume takes no value, or 'auto'")
    return text


def run(args) -> int:
    from rich.console import Console

    from orchestrator.spec.sweep import load_sweep_spec

    console = Console()
    spec = with_store(load_sweep_spec(args.spec, args.overrides), args, console)
    if args.dry_run:
        from orchestrator.run.dry_run import render

        console.print(render(spec))
        return 0
    return execute(spec, args, console)


def with_store(spec, args, console):
    """The spec on the store every command resolves the same way (orchestrator.tracking.store:
    --tracking-uri > $MLFLOW_TRACKING_URI > the spec > results/mlflow.db), printed first, with the
    Ray cluster it will run on."""
    from orchestrator.tracking.store import resolve_store

    store = resolve_store(args.tracking_uri, spec.mlflow.tracking_uri, spec.results)
    console.print(store.line(), highlight=False, soft_wrap=True)
    address, source = (args.address, "--address") if args.address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
    console.print(f"ray: {address} ({source})" if address else "ray: a local Ray on this machine", highlight=False)
    return spec.model_copy(update={"mlflow": spec.mlflow.model_copy(update={"tracking_uri": store.uri})})


def check_resume_store(spec, resume: bool) -> None:
    """A resumed sweep stays on the store it started on: runs are found again by their tags there."""
    import json

    from orchestrator.run.storage import SPEC_FILE, read_text
    from orchestrator.spec.paths import join
    from orchestrator.tracking.store import FLAG

    try:
        started = json.loads(read_text(join(spec.experiment_dir, SPEC_FILE)))["mlflow"]["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if resume and started and started != spec.mlflow.tracking_uri:
        raise UserError(
            f"sweep {spec.name!r} started on the MLflow store {started}, not {spec.mlflow.tracking_uri}: "
            f"resume it there ({FLAG} {started})"
        )


def execute(spec, args, console) -> int:
    """Run (or resume) a sweep spec; exit code 1 when every trial failed."""
    from orchestrator.run.sweep import run_sweep

    check_resume_store(spec, args.resume)
    outcome = run_sweep(spec, resume=args.resume, address=args.address, verbose=args.verbose, console=console)
    if outcome.status == "failed":
        first = next((r.error for r in outcome.rows if r.error), "no trial ran")
        console.print(f"[red]every trial failed[/]; first error: {first}")
        return 1
    return 0
