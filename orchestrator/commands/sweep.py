"""`python -m orchestrator sweep SPEC.yaml [--set k=v] [--dry-run] [--resume] [--address A] [--verbose]`."""

from __future__ import annotations


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
        action="store_true",
        help=f"continue {what} whose driver stopped: finished trials are kept, unfinished ones "
        "continue from their last checkpoint",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run on ('auto', 'ray://head:10001'); default $RAY_ADDRESS, else a local Ray",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's own trial tables and worker logs")


def run(args) -> int:
    from rich.console import Console

    from orchestrator.spec.sweep import load_sweep_spec

    console = Console()
    spec = load_sweep_spec(args.spec, args.overrides)
    if args.dry_run:
        from orchestrator.run.dry_run import render

        console.print(render(spec))
        return 0
    return execute(spec, args, console)


def execute(spec, args, console) -> int:
    """Run (or resume) a sweep spec; exit code 1 when every trial failed."""
    from orchestrator.run.sweep import run_sweep

    outcome = run_sweep(spec, resume=args.resume, address=args.address, verbose=args.verbose, console=console)
    if outcome.status == "failed":
        first = next((r.error for r in outcome.rows if r.error), "no trial ran")
        console.print(f"[red]every trial failed[/]; first error: {first}")
        return 1
    return 0
