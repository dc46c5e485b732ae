"""timm's `BatchNormAct2d` (BatchNorm2d + drop + activation in one module, used by timm encoders)
with the per-image CAM gradient of `trainables.batchnorm`: its batch norm is the very forward of
timm's (nn.BatchNorm2d.forward's momentum and counter logic, `F.batch_norm` semantics), run
through `cam_batch_norm`; drop and activation follow unchanged. Imported only where timm is."""

from __future__ import annotations

import torch
from timm.layers import BatchNormAct2d
from torch import Tensor

from trainables.batchnorm import cam_batch_norm


class CamBatchNormAct2d(BatchNormAct2d):
    """timm BatchNormAct2d with a per-image CAM gradient (trainables.batchnorm)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        if x.ndim != 4:
            raise ValueError(f"expected 4D input (got {x.ndim}D input)")
        return self.act(self.drop(cam_batch_norm(self, x)))
