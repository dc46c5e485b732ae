"""The files an exported student is shipped as, each checked against the eager model before it
counts: model.safetensors (weights + model_cfg/classes metadata), model.torchscript.pt, model.onnx
(onnxruntime) and smp's Hugging Face layout (config.json beside model.safetensors), which
`smp.from_pretrained(folder)` rebuilds without this project."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from orchestrator.errors import UserError

ONNX_ATOL = 1e-3  # max abs logit difference onnxruntime vs torch that export accepts
SCRIPT_ATOL = 1e-4
SMP_ATOL = 1e-5  # smp.from_pretrained's model vs the exported student (same weights, same ops)


class Skipped(Exception):
    """A format that cannot express this student: the export goes on without it and says why."""


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


def not_smp(model: nn.Module) -> str | None:
    """Why smp.from_pretrained could not rebuild `model` from its config, or None when it can: a
    model of one of smp's own classes (not a subclass or a wrapper, with connectors say), with the
    init config smp records. Modules added to such a model later fail write_smp's strict load."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import SegmentationModel

    cls = type(model)
    if not isinstance(model, SegmentationModel):
        return f"{cls.__module__}.{cls.__name__} is not an smp SegmentationModel"
    if getattr(smp, cls.__name__, None) is not cls:
        return f"{cls.__name__} is not a class smp exports (a subclass or wrapper of smp's model)"
    if not isinstance(getattr(model, "config", None), dict):
        return f"{cls.__name__} has no init config for smp to save"
    return None


def write_smp(model: nn.Module, state: dict, d: Path, size) -> tuple[Path, dict]:
    """smp's save_pretrained layout in the export folder: its config.json (the arch, encoder and
    classes the student was built with) beside model.safetensors, whose keys are smp's own. The card
    smp writes (README.md) is written with the export's provenance by card.smp_readme."""
    import segmentation_models_pytorch as smp

    reason = not_smp(model)
    if reason:
        raise Skipped(reason)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "config.json").read_text())
    config["encoder_weights"] = None  # the weights are in the folder: loading never downloads any
    path = d / "config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(model, state, d, size)  # the same file the safetensors format writes
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # huggingface_hub prints
            warnings.simplefilter("ignore")
            loaded = smp.from_pretrained(str(d)).eval()  # strict: a key smp's model lacks fails here
    except (RuntimeError, ValueError, TypeError) as e:
        path.unlink()
        raise UserError(
            f"smp check failed for {d}: smp.from_pretrained cannot load the student: {' '.join(str(e).split())[:300]}; "
            "config.json removed"
        ) from None
    x = _example(size, batch=2, seed=1)
    with torch.no_grad():
        diff = float((loaded(x) - model(x)).abs().max())
    if not diff <= SMP_ATOL:
        path.unlink()
        raise UserError(
            f"smp check failed for {d}: smp.from_pretrained vs the student max abs diff {diff:.3g} > {SMP_ATOL}; "
            "config.json removed"
        )
    return path, {"smp_max_abs_diff": diff, "smp_class": type(model).__name__}


Writer = Callable[[nn.Module, dict, Path, tuple[int, int]], tuple[Path, dict]]
FORMATS: dict[str, Writer] = {
    "safetensors": write_safetensors,
    "torchscript": write_torchscript,
    "onnx": write_onnx,
    "smp": write_smp,
}
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
