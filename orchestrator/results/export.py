"""Ship the best students of a sweep: pick trials from MLflow (top K by a metric, or the Pareto
front of metric against cost), rebuild each from its weights-only checkpoint and write
results/exports/<sweep>/<rank>/: model.safetensors, model.torchscript.pt, model.onnx (checked
against onnxruntime), model_card.json / .md with sha256 of each file. Logging them to MLflow as
models, registering them and the `champion` alias: orchestrator.results.registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from orchestrator.errors import UserError
from orchestrator.results.figures import finished
from orchestrator.results.pareto import pareto_front
from orchestrator.spec.paths import fetch, is_uri, join
from orchestrator.tracking import reader
from trainables.constants import IMAGENET_MEAN, IMAGENET_STD

ONNX_ATOL = 1e-3  # max abs logit difference onnxruntime vs torch that export accepts
SCRIPT_ATOL = 1e-4


@dataclass
class Choice:
    rank: int
    row: dict[str, Any]  # one row of the trials table


@dataclass
class Exported:
    rank: int
    dir: Path
    card: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # registered model name -> version
    model: nn.Module | None = field(default=None, repr=False)  # the student the files were written from


# ------------------------------------------------------------------ choosing trials


def choose(
    table: pa.Table, metric: str, maximize: bool = True, top: int = 1, pareto_cost: str | None = None
) -> list[Choice]:
    """Ranked trials: the top `top` by `metric`, or the Pareto front against `pareto_cost`, among the
    trials that ran every epoch (a trial ASHA stopped is a partly trained model; the report keeps it
    out of its fronts and tables too). A val metric ranks by its best-on-val epoch's value
    (`figures.finished`: val_miou -> best_val_miou), the epoch of the exported best.pt."""
    metric = finished(metric, table.column_names)
    counted = reader.completed(table, metric)
    if not len(counted):
        raise UserError(
            f"no trial that ran every epoch holds metric {metric!r} to export "
            f"({len(table)} trial runs; statuses: {', '.join(sorted(set(table.column('status').to_pylist())))})"
        )
    rows = counted.to_pylist()
    sign = -1.0 if maximize else 1.0
    if pareto_cost:
        if pareto_cost not in counted.column_names:
            raise UserError(
                f"--pareto needs cost metric {pareto_cost!r}, which no trial logged; "
                f"logged: {', '.join(reader.metric_columns(counted))}"
            )
        rows = [r for r in rows if r[pareto_cost] is not None and math.isfinite(r[pareto_cost])]
        front = pareto_front([(r[metric], r[pareto_cost]) for r in rows], ("max" if maximize else "min", "min"))
        rows = sorted((rows[i] for i in front), key=lambda r: sign * r[metric])  # best first
    else:
        rows = sorted(rows, key=lambda r: (sign * r[metric], r["start_time_ms"] or 0))[:top]
    return [Choice(i + 1, r) for i, r in enumerate(rows)]


# ------------------------------------------------------------------ checkpoints and models


def checkpoint_file(row: dict, client=None, scratch: Path | None = None) -> Path:
    """The trial's best checkpoint: tag xgd.checkpoint (a file, or a Ray checkpoint dir holding
    best.pt / checkpoint.pt; on an object store it is downloaded into `scratch`), else a best.pt /
    checkpoint.pt among the run's MLflow artifacts."""
    tag = row.get("checkpoint")
    if tag and is_uri(tag):
        try:
            for cand in (tag, join(tag, "best.pt"), join(tag, "checkpoint.pt")):
                got = fetch(cand, scratch or _downloads())
                if got is not None:
                    return got
        except (OSError, ValueError) as e:
            raise UserError(
                f"trial {row['run_name']}: checkpoint {tag!r} cannot be read: {str(e).splitlines()[0]}"
            ) from None
    elif tag:
        p = Path(tag)
        for cand in (p / "best.pt", p / "checkpoint.pt") if p.is_dir() else (p,):
            if cand.is_file():
                return cand
    if client is not None and scratch is not None:
        found = _artifact_checkpoint(client, row["run_id"])
        if found:
            return Path(client.download_artifacts(row["run_id"], found, str(scratch)))
    raise UserError(
        f"trial {row['run_name']} (run {row['run_id']}): checkpoint {tag!r} does not exist and the run "
        "has no best.pt/checkpoint.pt artifact"
    )


_DOWNLOADS: list[tempfile.TemporaryDirectory] = []  # object-store checkpoints read without a scratch folder


def _downloads() -> Path:
    if not _DOWNLOADS:
        _DOWNLOADS.append(tempfile.TemporaryDirectory(prefix="xgd-checkpoints-"))  # removed at exit
    return Path(_DOWNLOADS[0].name)


def _artifact_checkpoint(client, run_id: str, path: str = "", depth: int = 2) -> str | None:
    try:
        items = client.list_artifacts(run_id, path or None)
    except Exception:  # an unreachable artifact store reads as "no artifact"
        return None
    files = {Path(i.path).name: i.path for i in items if not i.is_dir}
    for name in ("best.pt", "checkpoint.pt"):
        if name in files:
            return files[name]
    for i in items:
        if i.is_dir and depth > 0:
            found = _artifact_checkpoint(client, run_id, i.path, depth - 1)
            if found:
                return found
    return None


def load_student(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the student from a weights-only checkpoint (no pickled code runs)."""
    from trainables.checkpoint import CheckpointError, load
    from trainables.models import model_from_config

    try:
        state = load(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except Exception as e:  # torch's weights-only unpickler fails on some non-checkpoints with IndexError etc.
        raise UserError(
            f"checkpoint {str(path)!r} is not a readable weights-only checkpoint: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    missing = [k for k in ("model", "model_cfg", "classes") if k not in state]
    if missing:
        raise UserError(
            f"checkpoint {str(path)!r} lacks {', '.join(missing)} (expected a student checkpoint written by this tool)"
        )
    cfg = {**state["model_cfg"], "encoder_weights": None}  # weights come from the checkpoint, never a hub
    try:
        model = model_from_config(cfg, len(state["classes"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"checkpoint {str(path)!r} does not fit model {cfg['arch']}/{cfg['encoder']}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), state


# ------------------------------------------------------------------ formats


def _example(size: tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g)


def write_safetensors(model: nn.Module, state: dict, d: Path, size) -> tuple[Path, dict]:
    from safetensors.torch import save_file

    path = d / "model.safetensors"
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"model_cfg": json.dumps(state["model_cfg"]), "classes": json.dumps(list(state["classes"]))}
    save_file(tensors, str(path), metadata=meta)
    return path, {}


def write_torchscript(model: nn.Module, state: dict, d: Path, size) -> tuple[Path, dict]:
    path = d / "model.torchscript.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(size), check_trace=False)
        traced.save(str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        x = _example(size, batch=2, seed=1)
        diff = float((loaded(x) - model(x)).abs().max())
    if not diff <= SCRIPT_ATOL:
        raise UserError(f"TorchScript check failed: max abs diff {diff:.3g} > {SCRIPT_ATOL} (traced vs eager)")
    return path, {"torchscript_max_abs_diff": diff}


@contextlib.contextmanager
def _silenced():
    """Mute stdout/stderr down to the file descriptors: a failed TorchScript-based export prints
    its whole graph from C++, and the dynamo exporter prints its progress."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def write_onnx(model: nn.Module, state: dict, d: Path, size) -> tuple[Path, dict]:
    """ONNX with dynamic batch/height/width, then the same random input through onnxruntime."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise UserError(
            f"format onnx needs the export extra ({e.name} is missing): pip install 'xgd-orchestrator[export]'"
        ) from None
    path = d / "model.onnx"
    # Dynamic height/width where the graph allows it; models with adaptive pooling to a fixed grid
    # (PSPNet's pyramid) cannot export that, so they get a fixed input size and a dynamic batch.
    # When the pooled size does not divide the feature size either, only the (slower) dynamo
    # exporter can decompose it: that is the last resort, at the fixed size.
    for axes in ({0: "batch", 2: "height", 3: "width"}, {0: "batch"}, None):
        # The TorchScript-based exporter takes seconds here, where dynamo=True took minutes on CPU.
        # Dynamo exports at its lowest native opset (18): asking it for 17 runs a version converter
        # that fails on PSPNet's graph and prints a traceback.
        kw = (
            dict(dynamo=False, opset_version=17, dynamic_axes={"image": axes, "logits": axes})
            if axes
            else dict(dynamo=True, opset_version=18)
        )
        try:
            with torch.no_grad(), warnings.catch_warnings(), _silenced():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model, (_example(size),), str(path), input_names=["image"], output_names=["logits"], **kw
                )
            break
        except torch.onnx.errors.SymbolicValueError:
            continue
    onnx.checker.check_model(str(path))
    x = _example(size, batch=2 if axes else 1, seed=1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        diff = float(np.abs(out - model(x).numpy()).max())
    if not diff <= ONNX_ATOL:
        path.unlink(missing_ok=True)
        raise UserError(
            f"ONNX check failed for {d}: onnxruntime vs torch max abs diff {diff:.3g} > {ONNX_ATOL}; model.onnx removed"
        )
    return path, {
        "onnx_max_abs_diff": diff,
        "onnx_opset": kw["opset_version"],
        "onnx_dynamic_size": bool(axes) and len(axes) == 3,
    }


Writer = Callable[[nn.Module, dict, Path, tuple[int, int]], tuple[Path, dict]]
FORMATS: dict[str, Writer] = {"safetensors": write_safetensors, "torchscript": write_torchscript, "onnx": write_onnx}
ALIASES = {"pt": "safetensors", "ts": "torchscript"}


def parse_formats(text: str) -> list[str]:
    out = []
    for name in (s.strip().lower() for s in text.split(",") if s.strip()):
        name = ALIASES.get(name, name)
        if name not in FORMATS:
            raise UserError(f"unknown export format {name!r}; allowed: {', '.join([*FORMATS, *ALIASES])}")
        out.append(name)
    if not out:
        raise UserError(f"--format names no format; allowed: {', '.join([*FORMATS, *ALIASES])}")
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------ the card


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        "files": {name: {"sha256": sha256(p), "bytes": p.stat().st_size} for name, p in files.items()},
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
    lines += ["", "## Files", "", "| file | sha256 | bytes |", "|:--|:--|--:|"]
    lines += [f"| {n} | `{f['sha256']}` | {f['bytes']} |" for n, f in card["files"].items()]
    lines += ["", "Ratios (mIoU, IoU, pixel accuracy) are shown in percent.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ export and register


def selection(metric: str, maximize: bool, top: int, pareto_cost: str | None) -> dict[str, Any]:
    mode = "max" if maximize else "min"
    text = (
        f"Pareto front of {metric} ({mode}) against {pareto_cost} (min)"
        if pareto_cost
        else f"top {top} by {metric} ({mode})"
    )
    return {
        "metric": metric,
        "mode": mode,
        "top": None if pareto_cost else top,
        "pareto_cost": pareto_cost,
        "text": text,
    }


def input_size(state: dict, size: int | None) -> tuple[int, int]:
    inp = state.get("input") or {}
    s = size or inp.get("eval_size") or inp.get("crop") or 512
    if s % 16:
        raise UserError(f"input size {s} is not a multiple of 16 (the students' output stride)")
    return (int(s), int(s))


def export_choice(
    sweep: str,
    choice: Choice,
    out_root: Path,
    formats: list[str],
    selection: dict,
    tracking_uri: str,
    client=None,
    size: int | None = None,
) -> Exported:
    d = reader.safe_join(out_root, sweep, str(choice.rank))
    with tempfile.TemporaryDirectory() as scratch:
        model, state = load_student(checkpoint_file(choice.row, client, Path(scratch)))
    hw = input_size(state, size)
    if d.exists():  # a previous export of this rank: replaced, never mixed
        shutil.rmtree(d)
    d.mkdir(parents=True)
    files, checks = {}, {}
    for name in formats:
        path, check = FORMATS[name](model, state, d, hw)
        files[path.name] = path
        checks.update(check)
    for extra in sorted(d.glob("*.data")):  # ONNX external weights (the dynamo exporter writes them)
        files[extra.name] = extra
    card = model_card(sweep, choice, state, model, hw, files, checks, selection, tracking_uri)
    (d / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    (d / "model_card.md").write_text(card_markdown(card))
    return Exported(choice.rank, d, card, files, model=model)
