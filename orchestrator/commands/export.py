"""`export [SWEEP]`: write a sweep's best students (top K by a metric, or the Pareto front of the
metric against a cost) to results/exports/<sweep>/<rank>/ as safetensors, TorchScript, ONNX
(checked with onnxruntime) and smp's save_pretrained layout (config.json + README.md beside
model.safetensors: smp.from_pretrained(folder) loads it without this tool), each with a model card
(docs/export.md); log them to the trial's MLflow run and as
MLflow models (PyTorch flavour as xgd-<sweep>, ONNX flavour as xgd-<sweep>-onnx), registered, with
the alias `champion` on the best (rank 1): mlflow.pytorch.load_model("models:/xgd-<sweep>@champion").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.tracking.store import add_tracking_uri

DEFAULT_OUT = "results/exports"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the best students (safetensors, TorchScript, ONNX, smp layout + model card)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", nargs="?", metavar="SWEEP", help="sweep name (default: the newest sweep in the store)")
    add_tracking_uri(p)
    p.add_argument(
        "--metric",
        default="val_miou",
        help="metric that ranks trials (default val_miou; a val metric ranks by its best-on-val epoch, best_val_*)",
    )
    p.add_argument("--mode", choices=("max", "min"), default="max")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--top", type=int, default=1, metavar="K", help="export the K best trials (default 1)")
    pick.add_argument("--pareto", action="store_true", help="export the Pareto front of METRIC against --cost")
    p.add_argument(
        "--cost",
        default="latency_ms",
        help="cost minimised by --pareto (default latency_ms; gflops or params also work)",
    )
    p.add_argument(
        "--format",
        default="pt,torchscript,onnx,smp",
        help="comma list of pt (=safetensors), torchscript, onnx, smp (smp.from_pretrained's layout; default all)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="input size for tracing and checks (default: the checkpoint's eval size or crop)",
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output root (default {DEFAULT_OUT})")
    p.add_argument("--model-name", default=None, help="registered model name (default xgd-<sweep>; ONNX: NAME-onnx)")
    p.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from rich.console import Console

    from orchestrator.results import export as ex
    from orchestrator.results import registry
    from orchestrator.spec.sweep import HELD_OUT_PREFIX
    from orchestrator.tracking import reader
    from orchestrator.tracking.store import resolve_store

    if args.top < 1:
        raise UserError(f"--top must be >= 1, got {args.top}")

    if args.metric.startswith(HELD_OUT_PREFIX):
        raise UserError(
            f"--metric {args.metric} would pick students by the held-out test split; "
            f"pick by a val metric (e.g. --metric val_{args.metric[5:]}) and report test"
        )
    formats = ex.parse_formats(args.format)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    store = resolve_store(args.tracking_uri)
    console.print(store.line(), highlight=False, soft_wrap=True)
    uri = store.uri
    client = reader.open_store(uri)
    name = args.sweep
    if name is None:
        names = reader.list_sweeps(client)
        if not names:
            raise UserError(f"the MLflow store {uri} holds no sweeps (no run tagged xgd.kind=sweep)")
        name = names[0]
    sweep = reader.find_sweep(client, name)
    table = reader.trials_table(client, sweep)
    maximize = args.mode == "max"
    cost = args.cost if args.pareto else None
    choices = ex.choose(table, args.metric, maximize, args.top, cost)
    metric = ex.finished(args.metric, table.column_names)  # what choose ranked by: val_miou -> best_val_miou
    selection = ex.selection(metric, maximize, args.top, cost)
    model_name = args.model_name or f"xgd-{reader.safe_name(sweep.name)}"
    index, champions = [], {}
    for choice in choices:
        exp = ex.export_choice(sweep.name, choice, Path(args.out), formats, selection, uri, client, args.size)
        if not args.no_register:
            exp.versions = registry.register(client, uri, exp, exp.model, model_name)
            champions = champions or exp.versions  # rank 1: the best by the metric
        value = choice.row[metric]
        reg = "; registered " + ", ".join(f"{n} v{v}" for n, v in exp.versions.items()) if exp.versions else ""
        console.print(
            f"rank {exp.rank}: {choice.row['run_name']} {metric}={value:.4f} -> {exp.dir} ({', '.join(exp.files)}){reg}"
        )
        index.append(
            {
                "rank": exp.rank,
                "dir": str(exp.dir),
                "run_id": choice.row["run_id"],
                "run_name": choice.row["run_name"],
                metric: value,
                "registered_model": model_name if exp.versions else None,
                "version": exp.versions.get(model_name),
                "registered": exp.versions,
            }
        )
    if champions:
        registry.crown(client, champions)
        console.print(
            f"alias {registry.CHAMPION}: " + ", ".join(f"{n} v{v}" for n, v in champions.items()) + "; load it with "
            f"mlflow.pytorch.load_model({registry.model_uri(model_name)!r})",
            highlight=False,
            soft_wrap=True,
        )
    root = reader.safe_join(args.out, sweep.name)
    (root / "index.json").write_text(
        json.dumps({"sweep": sweep.name, "selection": selection, "exports": index}, indent=2)
    )
    console.print(f"[green]{sweep.name}[/]: exported {len(index)} student(s); index at {root / 'index.json'}")
    return 0
