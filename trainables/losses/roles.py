"""The feature layers the baselines tap, found per model by role: `enc` (the encoder's last
stage), `aspp` (the multi-scale context module: ASPP or pyramid pooling) and `dec` (the decoder's
output, the feature the segmentation head classifies). A role always maps to the same layer, so
terms that tap one role share the hook."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from trainables.losses.registry import Taps

ENCODER_LAST: dict[str, Callable[[nn.Module], str]] = {
    # smp encoders stop at `_depth` stages; the last stage's module, relative to `encoder`
    "ResNetEncoder": lambda e: f"layer{e._depth - 1}" if e._depth >= 2 else "relu",
    "MobileNetV2Encoder": lambda e: f"features.{e._out_indexes[e._depth - 1]}",
}
CONTEXT_LAYERS: dict[str, str] = {  # the multi-scale context module (ASPP / pyramid pooling) by model class
    "DeepLabV3Plus": "decoder.aspp",
    "DeepLabV3": "decoder.aspp",
    "PSPNet": "decoder.psp",
}


@torch.no_grad()
def probe_last_stage(encoder: nn.Module, size: int = 64) -> str:
    """The outermost submodule whose output is the encoder's last feature (one dummy forward, eval mode)."""
    seen: list[tuple[str, Tensor]] = []

    def record(name: str):
        return lambda _m, _i, out: seen.append((name, out)) if isinstance(out, Tensor) else None

    hooks = [m.register_forward_hook(record(n)) for n, m in encoder.named_modules() if n]
    was = encoder.training
    encoder.eval()
    try:
        p = next(encoder.parameters())
        feats = encoder(torch.zeros(1, getattr(encoder, "_in_channels", 3), size, size, device=p.device, dtype=p.dtype))
    finally:
        encoder.train(was)
        for h in hooks:
            h.remove()
    names = [n for n, out in seen if out is feats[-1]]  # inner modules fire first: the last match is outermost
    if not names:
        raise ValueError(
            f"cannot find the last stage of encoder {type(encoder).__name__}; "
            f"set it in trainables.losses.roles.ENCODER_LAST"
        )
    return names[-1]


def encoder_last_stage(model: nn.Module) -> str:
    enc = model.encoder
    fn = ENCODER_LAST.get(type(enc).__name__)
    return "encoder." + (fn(enc) if fn else probe_last_stage(enc))


def context_layer(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in CONTEXT_LAYERS:
        raise ValueError(
            f"model {name} has no ASPP/pyramid-pooling layer for this method; supported: {', '.join(CONTEXT_LAYERS)}"
        )
    return CONTEXT_LAYERS[name]


def decoder_output(model: nn.Module) -> str:
    return "decoder"  # smp: the decoder's output is the feature the segmentation head classifies


ROLES: dict[str, Callable[[nn.Module], str]] = {"enc": encoder_last_stage, "aspp": context_layer, "dec": decoder_output}


def role_taps(*roles: str) -> Taps:
    """Taps {role: dotted path}; a role name always maps to the same layer, so terms can share taps."""
    return lambda cfg, model: {r: ROLES[r](model) for r in roles}
