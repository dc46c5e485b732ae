"""`python -m orchestrator ablate SPEC.yaml [--set k=v] [--dry-run] [--resume] [--address A] [--tracking-uri URI]
[--verbose]`."""

from __future__ import annotations

from orchestrator.commands.sweep import add_run_args, execute, with_store


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help="run an ablation (factorial or listed cells x seeds) as a grid sweep (see search_spaces/ablations/)",
    )
    p.add_argument("spec", help="YAML ablation spec, e.g. search_spaces/ablations/quickstart_table1.yaml")
    add_run_args(
        p,
        "an ablation",
        "seeds=1, data.root=/data/ttpla, factors.distill.cam=[gradcam,layercam], "
        "resources.max_concurrent=4, name=table1-b",
        "the cells, seeds",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.run.ablate import load_ablation

    console = Console()
    ab = load_ablation(args.spec, args.overrides)
    ab.sweep = with_store(ab.sweep, args, console)
    if args.dry_run:
        from orchestrator.run.ablate import render

        console.print(render(ab))
        return 0
    if execute(ab.sweep, args, console):
        return 1
    from orchestrator.tracking.store import resolve_store

    uri = ab.sweep.mlflow.tracking_uri
    store = "" if uri == resolve_store().uri else f" --tracking-uri {uri}"
    console.print(
        f"tables (mean ± std over {ab.seeds} seed(s)): python -m orchestrator report {ab.sweep.name}{store}",
        highlight=False,
    )
    return 0
