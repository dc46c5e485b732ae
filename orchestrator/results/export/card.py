"""The export's model cards: model_card.json (provenance, input contract, metrics, cost, checks and
the sha256 of every file beside it), model_card.md (the same for people) and, in smp's layout,
the README.md card smp's save_pretrained writes, carrying the same provenance."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

from orchestrator.results.export.select import Choice
from orchestrator.tracking import reader
from trainables.constants import IMAGENET_MEAN, IMAGENET_STD

CARD_FILES = ("model_card.json", "model_card.md")  # not hashed: they hold the hashes


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(files: dict[str, Path]) -> dict[str, dict]:
    return {name: {"sha256": sha256(p), "bytes": p.stat().st_size} for name, p in files.items()}


def dataset_name(config: dict) -> str | None:
    """The trial's data as its params name it (kind and the root's last part, never a machine path)."""
    kind, root = config.get("data.kind"), config.get("data.root")
    parts = [str(kind)] if kind else []
    parts += [Path(str(root)).name] if root else []
    return " ".join(parts) or None


def model_card(
    sweep: str,
    choice: Choice,
    state: dict,
    model: nn.Module,
    size: tuple[int, int],
    files: dict[str, Path],
    checks: dict,
    selection: dict,
    tracking_uri: str,
) -> dict[str, Any]:
    from trainables.models import count_params

    row = choice.row
    params = {k.removeprefix(reader.PARAM): v for k, v in row.items() if k.startswith(reader.PARAM) and v is not None}
    # MLflow's val_* are the last epoch's; the exported weights' own val_* are in their checkpoint
    own = {k: v for k, v in (state.get("metrics") or {}).items() if k.startswith("val_")}
    metrics = {k: v for k, v in row.items() if k.startswith(("best_val_", "test_")) and v is not None} | own
    cost = {k: row.get(k) for k in ("gflops", "latency_ms") if row.get(k) is not None}
    cost["params"] = int(row["params"]) if row.get("params") is not None else count_params(model)
    inp = state.get("input") or {}
    classes = list(state["classes"])
    return {
        "name": f"{sweep}-rank{choice.rank}",
        "sweep": sweep,
        "rank": choice.rank,
        "selection": selection,
        "source": {
            "run_id": row["run_id"],
            "run_name": row["run_name"],
            "trial_id": row.get("trial_id"),
            "experiment_id": row.get("experiment_id"),
            "tracking_uri": tracking_uri,
            "checkpoint": row.get("checkpoint"),
            "epoch": state.get("epoch"),
        },
        "model": {
            "framework": "segmentation_models_pytorch",
            "arch": state["model_cfg"]["arch"],
            "encoder": state["model_cfg"]["encoder"],
            "num_classes": len(classes),
            "classes": classes,
        },
        "input": {
            "name": "image",
            "shape": [1, 3, *size],
            "dynamic_axes": ["batch", "height", "width"],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "preprocess": "x = (rgb / 255 - mean) / std; height and width multiples of 16",
            "mean": inp.get("mean", list(IMAGENET_MEAN)),
            "std": inp.get("std", list(IMAGENET_STD)),
        },
        "output": {
            "name": "logits",
            "shape": [1, len(classes), *size],
            "postprocess": "class index = argmax over dim 1",
        },
        "metrics": metrics,
        "cost": cost,
        "checks": checks,
        "config": params,
        "files": file_hashes(files),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def card_markdown(card: dict) -> str:
    m, i, s = card["model"], card["input"], card["source"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"# {card['name']}",
        "",
        f"{m['arch']} / {m['encoder']} student from sweep `{card['sweep']}`, rank {card['rank']} "
        f"({card['selection']['text']}).",
        "",
        "## Model",
        "",
        f"- classes ({m['num_classes']}): {', '.join(m['classes'])}",
        f"- input `{i['name']}`: {i['dtype']} {i['layout']} {i['color']} {i['shape']} "
        f"(dynamic {', '.join(i['dynamic_axes'])}); {i['preprocess']}",
        f"- normalisation: mean {i['mean']}, std {i['std']} (ImageNet)",
        f"- output `{card['output']['name']}`: {card['output']['shape']}; {card['output']['postprocess']}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|:--|--:|",
    ]
    fractions = tuple(f"{split}_{m}" for split in ("val", "best_val", "test") for m in ("miou", "iou", "pixel"))
    lines += [
        f"| {k} | {pct(v) if k.startswith(fractions) else v} |"
        for k, v in sorted(card["metrics"].items())
        if isinstance(v, (int, float))
    ]
    c = card["cost"]
    lines += ["", "## Cost", "", f"- parameters: {c['params'] / 1e6:.2f} M"]
    lines += [f"- GFLOPs: {c['gflops']:.2f}"] if "gflops" in c else []
    lines += [f"- latency: {c['latency_ms']:.2f} ms (as measured by the trial)"] if "latency_ms" in c else []
    lines += [
        "",
        "## Source",
        "",
        f"- MLflow run `{s['run_id']}` ({s['run_name']}, trial {s['trial_id']}), epoch {s['epoch']}",
        f"- checkpoint: `{s['checkpoint']}`",
        "",
        "## Checks",
        "",
    ] + [f"- {k}: {v}" for k, v in card["checks"].items()]
    if "config.json" in card["files"]:
        lines += ["", "## Load with smp", "", "```python", "import segmentation_models_pytorch as smp", ""]
        lines += ['model = smp.from_pretrained("path/to/this/folder").eval()', "```"]
    lines += ["", "## Files", "", "| file | sha256 | bytes |", "|:--|:--|--:|"]
    lines += [f"| {n} | `{f['sha256']}` | {f['bytes']} |" for n, f in card["files"].items()]
    lines += ["", "Ratios (mIoU, IoU, pixel accuracy) are shown in percent.", ""]
    return "\n".join(lines)


def smp_readme(model: nn.Module, card: dict, d: Path) -> Path:
    """README.md as smp's save_pretrained writes it (smp's template, given the metrics and the
    dataset), plus where the weights came from: a folder shared on its own still says which sweep,
    trial and epoch it is. The MLflow store's URI stays in model_card.json only (it may hold a host)."""
    readme = model.generate_model_card(metrics=card["metrics"], dataset=dataset_name(card["config"]))
    s, i = card["source"], card["input"]
    provenance = [
        "## Provenance",
        "",
        f"Exported by xgd-orchestrator from sweep `{card['sweep']}`, rank {card['rank']} "
        f"({card['selection']['text']}).",
        "",
        f"- MLflow run `{s['run_id']}` ({s['run_name']}"
        + (f", trial {s['trial_id']}" if s["trial_id"] else "")
        + f"), epoch {s['epoch']}",
        f"- classes ({card['model']['num_classes']}): {', '.join(card['model']['classes'])}",
        f"- input: {i['preprocess']}; mean {i['mean']}, std {i['std']}",
        "- model_card.json beside this file: the full card, with the sha256 of every file",
        "",
    ]
    readme.content = readme.content.rstrip() + "\n\n" + "\n".join(provenance)
    path = d / "README.md"
    readme.save(str(path))
    return path
