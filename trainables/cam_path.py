"""What the layers between a student's CAM layer and its logits become for training.

XGD's student CAM is the gradient of the target at the CAM layer, taken with create_graph=True
and differentiated again by the training backward. Two drop-in subclasses (same parameters,
buffers and state dict; same forward) change only how that path is differentiated:

- `FastGradConv2d` (trainables.convgrad): a convolution whose double backward runs ordinary
  convolution kernels;
- `CamBatchNorm2d` (trainables.batchnorm): a BatchNorm whose CAM gradient holds the batch
  statistics constant, so each image's CAM is its own (the other terms see plain train-mode BN).

Only modules whose forward runs after the CAM layer are swapped: the rest of the model is not on
the CAM's gradient path.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.batchnorm import CamBatchNorm2d
from trainables.convgrad import FastGradConv2d

SWAPS: dict[type, type] = {nn.Conv2d: FastGradConv2d, nn.BatchNorm2d: CamBatchNorm2d}


def modules_after(model: nn.Module, layer: str, sample: Tensor) -> list[str]:
    """Names of the modules whose forward starts after `layer`'s forward returned (one probe forward)."""
    import torch

    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n)) for n, m in model.named_modules() if n]
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
    return order[order.index("<cam>") + 1 :] if "<cam>" in order else []


def prepare_cam_path(model: nn.Module, layers: list[str], sample: Tensor) -> list[str]:
    """Swap the class of every plain Conv2d / BatchNorm2d that runs after one of `layers`; returns their names."""
    names = sorted({n for layer in layers for n in modules_after(model, layer, sample)})
    swapped = []
    for name in names:
        m = model.get_submodule(name)
        if type(m) in SWAPS:
            m.__class__ = SWAPS[type(m)]
            swapped.append(name)
    return swapped
