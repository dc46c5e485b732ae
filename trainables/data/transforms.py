"""Joint image/mask transforms on torchvision.transforms.v2 tv_tensors.

All randomness is drawn from torch's global RNG (v2's own ops and `RandomScale` below); the
training loader seeds that RNG per sample from (seed, epoch, index) (`SegDataset`, `SeededSampler`
in trainables.data.base), so a training item does not depend on the loader's workers.
Masks are resized with nearest-exact and padded with 255, so padding never counts as a class.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainables.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD


class RandomScale(v2.Transform):
    """Resize by `base * s`, s ~ U(scale); base maps the shorter side to `short` (1 when None).

    v2 has no relative random rescale (RandomResize/ScaleJitter take absolute sizes), and tying
    the train scale to `eval_size` keeps objects at the same apparent size in training and eval.
    """

    def __init__(self, scale: tuple[float, float] = (1.0, 1.0), short: int | None = None):
        super().__init__()
        self.scale = (float(scale[0]), float(scale[1]))
        self.short = short

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale
        s = lo if lo == hi else lo + float(torch.rand(())) * (hi - lo)
        base = self.short / min(h, w) if self.short else 1.0
        return {"size": [max(1, round(h * base * s)), max(1, round(w * base * s))], "same": base * s == 1.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["same"]:
            return inpt
        mask = isinstance(inpt, tv_tensors.Mask)
        mode = v2.InterpolationMode.NEAREST_EXACT if mask else v2.InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=mode, antialias=True)


def _finish() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(cfg: dict) -> v2.Compose:
    """Random scale -> random crop (pad image 0, mask 255) -> flip -> colour jitter -> normalise."""
    steps: list[v2.Transform] = [
        RandomScale(tuple(cfg["scale"]), cfg.get("eval_size")),
        v2.RandomCrop(cfg["crop"], pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
    ]
    if cfg["flip"]:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if cfg["jitter"] > 0:
        j = float(cfg["jitter"])
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(steps + _finish())


def eval_transform(cfg: dict) -> v2.Compose:
    """Optional shorter-side resize to eval_size (mask nearest), then normalise."""
    steps: list[v2.Transform] = [RandomScale((1.0, 1.0), cfg["eval_size"])] if cfg.get("eval_size") else []
    return v2.Compose(steps + _finish())
