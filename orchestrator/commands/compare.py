"""`python -m orchestrator compare SPEC.yaml --methods M M [M ...] [--budget iterations|time] [--seeds N]
[--set k=v] [--dry-run] [--resume] [--address A] [--tracking-uri URI] [--verbose]`."""

from __future__ import annotations

import json

from orchestrator.commands.confirm import MAX_SEEDS, _count
from orchestrator.commands.sweep import add_run_args, check_resume_store, with_store
from orchestrator.errors import UserError
from orchestrator.spec.budget import BUDGETS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="search each distillation method with the same budget, confirm each one's best on the same "
        "fresh seeds, and judge them on test (Holm-adjusted paired tests)",
    )
    p.add_argument(
        "spec", help="YAML sweep spec, e.g. search_spaces/quickstart.yaml (its compare: block sets defaults)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="distill.method values to compare, baselines first (each is compared with those before it), "
        "e.g. none pi xgd",
    )
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default=None,
        help="iterations: the same trials and epochs per method (default); time: the same trainer seconds "
        "per trial (epochs scaled by each method's measured step cost)",
    )
    p.add_argument(
        "--seeds",
        type=lambda t: _count(t, MAX_SEEDS),
        default=None,
        metavar="N",
        help="fresh seeds of the confirmation, the same in every cell (default 3)",
    )
    add_run_args(p, "a comparison", "search.num_samples=8, optim.epochs=12", "each method's search and the budget")
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.run import compare as R
    from orchestrator.run.sweep import run_sweep, sweep_exists
    from orchestrator.spec.load import read_yaml
    from orchestrator.spec.sweep import apply_sweep_overrides, parse_sweep_spec
    from orchestrator.tracking import tags as T

    console = Console()
    raw = apply_sweep_overrides(read_yaml(args.spec), args.overrides)
    cmp = R.plan_compare(raw, args.methods, args.budget, args.seeds)
    base = with_store(parse_sweep_spec(cmp.raw), args, console)
    uri = base.mlflow.tracking_uri
    cmp.raw["mlflow"] = {**(cmp.raw.get("mlflow") or {}), "tracking_uri": uri}
    if cmp.budget == "time" and "optim.epochs" in base.space:
        raise UserError("compare --budget time sets each method's optim.epochs: take optim.epochs out of the space")
    cmp.epochs = {m: base.max_epochs for m in cmp.methods}
    if args.dry_run:
        console.print(R.render(cmp, uri))
        return 0
    stages = {m: cmp.method_spec(m, uri) for m in cmp.methods}
    begun = [s.name for s in stages.values() if sweep_exists(s)]
    if args.resume == "auto":  # unattended: continue what has begun, start the rest
        console.print(
            f"--resume auto: {'continuing' if begun else 'starting'} comparison {cmp.name!r}", highlight=False
        )
    elif begun and not args.resume:
        raise UserError(
            f"comparison {cmp.name!r} has begun (sweeps {', '.join(begun)}): continue it with --resume, "
            f"or start another with --set name={base.name}-2"
        )
    if args.resume is True and not begun:
        raise UserError(f"no comparison {cmp.name!r} to resume (none of its sweeps exists); start it without --resume")
    client = R.open_client(uri)
    cid = R.compare_run(client, cmp, base.mlflow.experiment)
    if cmp.budget == "time":
        cmp.costs = R.saved_costs(client, cid)
        if set(cmp.costs) != set(cmp.methods):
            console.print(f"timing one training step of each method ({cmp.cost_iters} steps each, round-robin)")
            from orchestrator.bench.costs import measure_costs

            cmp.costs = measure_costs(base, cmp.methods, cmp.cost_iters)
            client.set_tag(cid, T.COMPARE_COSTS, json.dumps(cmp.costs))
        from orchestrator.spec.compare import time_epochs

        cmp.epochs = time_epochs(base.max_epochs, cmp.costs)
        console.print(R.budget_line(cmp), highlight=False)
    client.set_tag(cid, T.COMPARE_EPOCHS, json.dumps(cmp.epochs))
    for m in cmp.methods:
        spec = cmp.method_spec(m, uri)
        console.rule(f"compare {cmp.name}: {m} ({spec.name})")
        if _run_stage(spec, args, console, run_sweep, sweep_exists(spec)):
            return 1
        R.adopt(client, cid, spec.name)
    built = R.confirmation(cmp, R.best_picks(client, cmp, {m: cmp.method_spec(m, uri) for m in cmp.methods}), uri, [])
    for note in built.notes:
        console.print(f"[yellow]note:[/] {note}")
    ab = built.ablation.sweep
    console.rule(f"compare {cmp.name}: confirmation ({ab.name}, seeds {', '.join(map(str, built.seeds))})")
    if _run_stage(ab, args, console, run_sweep, sweep_exists(ab)):
        return 1
    R.adopt(client, cid, ab.name)
    client.set_terminated(cid, "FINISHED")
    console.print(
        f"comparison table (test: Holm-adjusted paired t-tests, image-bootstrap intervals; budget per method): "
        f"python -m orchestrator report {ab.name}",
        highlight=False,
    )
    return 0


def _run_stage(spec, args, console, run_sweep, exists: bool) -> int:
    check_resume_store(spec, exists)
    outcome = run_sweep(spec, resume=exists, address=args.address, verbose=args.verbose, console=console)
    if outcome.status == "failed":
        first = next((r.error for r in outcome.rows if r.error), "no trial ran")
        console.print(f"[red]every trial of {spec.name} failed[/]; first error: {first}")
        return 1
    return 0
