"""`python -m orchestrator ablate SPEC.yaml [--set k=v] [--dry-run] [--resume] [--address A] [--verbose]`."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("ablate", help="run an ablation (factorial or listed cells x seeds) as a grid sweep "
                                      "(see search_spaces/ablations/)")
    p.add_argument("spec", help="YAML ablation spec, e.g. search_spaces/ablations/quickstart_table1.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key (repeatable): seeds=1, data.root=/data/ttpla, "
                        "factors.distill.cam=[gradcam,layercam], resources.max_concurrent=4, name=table1-b")
    p.add_argument("--dry-run", action="store_true", help="print the cells, seeds and per-trial resources; run nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue an ablation whose driver stopped: finished trials are kept, unfinished ones "
                        "continue from their last checkpoint")
    p.add_argument("--address", default=None,
                   help="Ray cluster to run on ('auto', 'ray://head:10001'); default $RAY_ADDRESS, else a local Ray")
    p.add_argument("--verbose", action="store_true", help="show Ray's own trial tables and worker logs")
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.ablate import load_ablation

    console = Console()
    ab = load_ablation(args.spec, args.overrides)
    if args.dry_run:
        from orchestrator.ablate import render

        console.print(render(ab))
        return 0
    from orchestrator.sweep import run_sweep

    outcome = run_sweep(ab.sweep, resume=args.resume, address=args.address, verbose=args.verbose, console=console)
    if outcome.status == "failed":
        first = next((r.error for r in outcome.rows if r.error), "no trial ran")
        console.print(f"[red]every trial failed[/]; first error: {first}")
        return 1
    from orchestrator.aggregate import default_tracking_uri

    uri = ab.sweep.mlflow.tracking_uri
    store = "" if uri == default_tracking_uri() else f" --tracking-uri {uri}"
    console.print(f"tables (mean ± std over {ab.seeds} seed(s)): python -m orchestrator report {ab.sweep.name}{store}",
                  highlight=False)
    return 0
