"""`python -m orchestrator confirm SWEEP [--top K] [--seeds N] [--baseline METHOD ...] [--no-beta0]
[--pareto] [--tracking-uri U] [--set k=v] [--dry-run] [--resume] [--address A] [--verbose]`."""

from __future__ import annotations

import argparse

from orchestrator.commands.sweep import add_run_args, execute

MAX_SEEDS = 1000


def _count(text: str, most: int | None = None) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or (most is not None and n > most):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to {most or 'any'}")
    return n


def add_parser(sub) -> None:
    p = sub.add_parser(
        "confirm",
        help="rerun a sweep's best configurations and baselines with the same fresh seeds; "
        "report prints means, 95%% CIs and paired tests",
    )
    p.add_argument("sweep", metavar="SWEEP", help="the source sweep's name in the MLflow store")
    p.add_argument(
        "--top", type=_count, default=None, metavar="K", help="the K best finished configurations (default 1)"
    )
    p.add_argument(
        "--seeds",
        type=lambda t: _count(t, MAX_SEEDS),
        default=5,
        metavar="N",
        help="seeds per cell, the same N fresh seeds in every cell (default 5; Wilcoxon from 6)",
    )
    p.add_argument(
        "--baseline",
        dest="baselines",
        nargs="+",
        action="extend",
        default=[],
        metavar="METHOD",
        help="baseline methods (distill.method: none, pi, skd, ...), one cell per configuration: its student, "
        "non-distill settings and the distill settings the method reads (identical cells run once)",
    )
    p.add_argument(
        "--no-beta0",
        dest="beta0",
        action="store_false",
        help="no 'top K, beta=0' cell (an XGD configuration with its saliency term off) for each XGD configuration",
    )
    p.add_argument(
        "--pareto",
        action="store_true",
        help="a multi-objective sweep: take its Pareto front (all of it, or its best K by the first objective)",
    )
    add_run_args(
        p,
        "a confirmation",
        "name=quickstart-confirm-2, resources.max_concurrent=4, optim.epochs=20",
        "the cells, seeds",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.run.confirm import plan_confirmation, render
    from orchestrator.tracking import reader
    from orchestrator.tracking.store import default_tracking_uri, resolve_store

    console = Console()
    store = resolve_store(args.tracking_uri)  # where the sweep is read and the confirmation logged
    console.print(store.line(), highlight=False, soft_wrap=True)
    uri = store.uri
    client = reader.open_store(uri)
    top = args.top if args.top is not None else (None if args.pareto else 1)
    plan = plan_confirmation(
        client,
        args.sweep,
        uri=uri,
        top=top,
        seeds=args.seeds,
        baselines=args.baselines,
        pareto=args.pareto,
        overrides=args.overrides,
        beta0=args.beta0,
    )
    if args.dry_run:
        console.print(render(plan))
        return 0
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(
        f"confirm {plan.source}: {len(plan.picks)} cells x seeds {', '.join(map(str, plan.seeds))} "
        f"as ablation {plan.name}",
        highlight=False,
    )
    if execute(plan.ablation.sweep, args, console):
        return 1
    hint = "" if uri == default_tracking_uri() else f" --tracking-uri {uri}"
    console.print(
        f"confirmation table (mean ± std, 95% CI, paired tests): python -m orchestrator report {plan.name}{hint}",
        highlight=False,
    )
    return 0
