"""One model factory over smp's registries, plus the costs a user compares students by.

Params and FLOPs come from counting tools (`torch.utils.flop_counter`), latency from timing.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

# The "first decoder layer" where XGD takes its CAMs, as in the published XGD code (docs/method.md).
CAM_LAYERS = {
    "DeepLabV3Plus": "decoder.block1",
    "PSPNet": "decoder.conv",
    "DeepLabV3": "decoder",
    "Unet": "decoder.blocks.0",
    "UnetPlusPlus": "decoder",
    "FPN": "decoder",
}


def _pick(kind: str, name: str, allowed: list[str]) -> None:
    if name not in allowed:
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed[:20])}, ..."
        raise ValueError(f"unknown {kind} {name!r}; {hint}")


def check_model_names(arch: str, encoder: str) -> None:
    _pick("arch", arch, sorted(smp.MODEL_ARCHITECTURES_MAPPING))
    _pick("encoder", encoder, sorted(smp.encoders.get_encoder_names()))


def create_model(arch: str, encoder: str, classes: int, encoder_weights: str | None = None) -> nn.Module:
    """Build an smp model; `encoder_weights` is None, 'imagenet' (hub download) or a local file."""
    check_model_names(arch, encoder)
    hub = encoder_weights if encoder_weights in (None, "imagenet") else None
    kw = {"encoder_depth": 5} if arch == "pspnet" and encoder.startswith("mobilenet") else {}
    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=hub, classes=classes, **kw)
    if encoder_weights not in (None, "imagenet"):
        load_encoder_weights(model, encoder_weights)
    return model


def load_encoder_weights(model: nn.Module, path: str) -> None:
    """Load a local state_dict into `model.encoder` without running pickled code."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"encoder_weights file {path!r} does not exist (expected None, 'imagenet' or a state_dict file)"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle.UnpicklingError and friends: refuse, never run code
            raise ValueError(
                f"encoder_weights file {path!r} is not a weights-only state_dict: {str(e).splitlines()[0]}"
            ) from None
    state = {k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith("fc.")}
    # nn.Module's own method: smp encoders override load_state_dict and return nothing
    missing, unexpected = nn.Module.load_state_dict(model.encoder, state, strict=False)
    if unexpected or len(missing) == len(model.encoder.state_dict()):
        raise ValueError(
            f"encoder_weights file {path!r} does not match encoder "
            f"{type(model.encoder).__name__}: {len(unexpected)} unexpected, {len(missing)} missing keys"
        )


def model_from_config(model_cfg: dict, classes: int) -> nn.Module:
    return create_model(model_cfg["arch"], model_cfg["encoder"], classes, model_cfg.get("encoder_weights"))


def default_cam_layer(model: nn.Module) -> str:
    return CAM_LAYERS.get(type(model).__name__, "decoder")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: int | tuple[int, int] = 512) -> int:
    """FLOPs of one forward pass on a 1x3xHxW input (FlopCounterMode counts a multiply-add as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, h, w, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, size: int = 512, batch: int = 1, warmup: int = 2, iters: int = 5) -> float:
    """Median seconds per forward pass (eval mode, batch `batch`) on the model's device."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + iters):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return sorted(times)[len(times) // 2]
