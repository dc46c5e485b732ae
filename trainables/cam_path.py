"""What the layers between a student's CAM layer and its logits become for training.

XGD's student CAM is the gradient of the target at the CAM layer, taken with create_graph=True
and differentiated again by the training backward. Drop-in subclasses (same parameters, buffers
and state dict; same forward) change only how that path is differentiated:

- `FastGradConv2d` (trainables.convgrad): a convolution whose double backward runs ordinary
  convolution kernels;
- `CamBatchNorm1d/2d/3d`, `CamSyncBatchNorm` (trainables.batchnorm) and timm's
  `CamBatchNormAct2d` (trainables.cam_timm): BatchNorms whose CAM gradient holds the batch
  statistics constant, so each image's CAM is its own (the other terms see plain train-mode BN).

Only modules whose forward runs after the CAM layer are swapped: the rest of the model is not on
the CAM's gradient path. Swaps go by exact type, since a subclass may compute something else.
Any other module there that may normalise with batch statistics (a `_NormBase`, or a module with
running-statistics buffers) is then probed on its own: a copy in train mode, fed two images, must
give image 0 the same output whatever image 1 is. One that does not (an unknown BatchNorm
subclass, a multi-process SyncBatchNorm, an EvoNorm-B-like layer) would silently bring back the
batch-mixed CAM, so `prepare_cam_path` refuses it with a `CamPathError` naming it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from trainables.batchnorm import (
    CamBatchNorm1d,
    CamBatchNorm2d,
    CamBatchNorm3d,
    CamSyncBatchNorm,
    sync_world,
)
from trainables.convgrad import FastGradConv2d

SWAPS: dict[type, type] = {
    nn.Conv2d: FastGradConv2d,
    nn.BatchNorm1d: CamBatchNorm1d,
    nn.BatchNorm2d: CamBatchNorm2d,
    nn.BatchNorm3d: CamBatchNorm3d,
    nn.SyncBatchNorm: CamSyncBatchNorm,
}
try:  # timm comes with segmentation_models_pytorch; its encoders use BatchNormAct2d
    from timm.layers import BatchNormAct2d

    from trainables.cam_timm import CamBatchNormAct2d

    SWAPS[BatchNormAct2d] = CamBatchNormAct2d
except ImportError:  # pragma: no cover - timm missing: its BN then falls to the probe and is refused
    pass
PER_IMAGE_CAM = tuple(SWAPS.values())  # classes whose CAM gradient is per image by construction
STAT_BUFFERS = ("running_mean", "running_var")


class CamPathError(ValueError):
    """A module after the student's CAM layer would mix the images' CAMs: one line naming it."""


def _probe(model: nn.Module, layer: str, sample: Tensor) -> tuple[list[str], dict[str, Tensor]]:
    """Names of the modules whose forward starts after `layer`'s returned, and each one's first
    input when it is a single tensor (one eval-mode probe forward)."""
    order: list[str] = []
    inputs: dict[str, Tensor] = {}

    def pre(_m, args, kwargs, n):
        order.append(n)
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) and n not in inputs:
            inputs[n] = args[0].detach()

    handles = [
        m.register_forward_pre_hook(lambda m, a, k, n=n: pre(m, a, k, n), with_kwargs=True)
        for n, m in model.named_modules()
        if n
    ]
    handles.append(model.get_submodule(layer).register_forward_hook(lambda *_: order.append("<cam>")))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    after = order[order.index("<cam>") + 1 :] if "<cam>" in order else []
    return after, {n: inputs[n] for n in after if n in inputs}


def modules_after(model: nn.Module, layer: str, sample: Tensor) -> list[str]:
    """Names of the modules whose forward starts after `layer`'s forward returned (one probe forward)."""
    return _probe(model, layer, sample)[0]


def may_use_batch_stats(m: nn.Module) -> bool:
    """A normalisation layer or a module holding running statistics: worth probing for mixing."""
    own = {n for n, _ in m.named_buffers(recurse=False)}
    return isinstance(m, nn.modules.batchnorm._NormBase) or any(b in own for b in STAT_BUFFERS)


@torch.no_grad()
def mixes_images(m: nn.Module, like: Tensor) -> bool:
    """Does a train-mode copy of `m` give image 0 a different output when image 1 changes?
    Two random images shaped like `like` (same random draws in both runs, for dropout)."""
    probe = copy.deepcopy(m).train()
    g = torch.Generator().manual_seed(0)
    a = torch.randn((2, *like.shape[1:]), generator=g).to(like.device, like.dtype)
    b = a.clone()
    b[1] = 3 * torch.randn(like.shape[1:], generator=g).to(like.device, like.dtype) + 1
    outs = []
    for x in (a, b):
        with torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else []):
            torch.manual_seed(0)
            outs.append(probe(x))
    oa, ob = outs
    if not (isinstance(oa, Tensor) and isinstance(ob, Tensor)):
        return True  # cannot tell: treated as mixing
    return not torch.allclose(oa[0].float(), ob[0].float(), rtol=1e-4, atol=1e-6)


def _type_name(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def check_per_image(model: nn.Module, names: list[str], inputs: dict[str, Tensor], layers: list[str]) -> None:
    """Raise CamPathError for the first module in `names` that would mix the images' CAMs."""
    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, CamSyncBatchNorm) and (world := sync_world(m)) > 1:
            reason = f"synchronises batch statistics across {world} processes"
        elif isinstance(m, PER_IMAGE_CAM) or not may_use_batch_stats(m):
            continue
        elif name not in inputs:
            reason = "holds batch statistics and could not be probed (not called with one tensor)"
        elif mixes_images(m, inputs[name]):
            reason = "normalises with batch statistics (its output for one image depends on the others)"
        else:
            continue  # per image (InstanceNorm, a frozen BatchNorm, ...)
        raise CamPathError(
            f"{name!r} ({_type_name(m)}) after the student's CAM layer {', '.join(layers)} {reason}, which "
            "would mix the images' CAMs; allowed there: torch.nn.BatchNorm1d/2d/3d, torch.nn.SyncBatchNorm "
            "in one process, timm BatchNormAct2d, or per-image layers (GroupNorm, LayerNorm, InstanceNorm)"
        )


def prepare_cam_path(model: nn.Module, layers: list[str], sample: Tensor) -> list[str]:
    """Swap the class of every module of a SWAPS type that runs after one of `layers`, then refuse
    (CamPathError) any other module there that mixes images; returns the swapped names."""
    names: set[str] = set()
    inputs: dict[str, Tensor] = {}
    for layer in layers:
        after, ins = _probe(model, layer, sample)
        names.update(after)
        inputs.update(ins)
    swapped = []
    for name in sorted(names):
        m = model.get_submodule(name)
        if type(m) in SWAPS:
            m.__class__ = SWAPS[type(m)]
            swapped.append(name)
    check_per_image(model, sorted(names), inputs, layers)
    return swapped
