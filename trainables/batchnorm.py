"""BatchNorm whose CAM gradient sees each image on its own: batch statistics as constants.

XGD's student CAM at image i is built from d(score_i)/d(acts_i). In train mode a BatchNorm
after the CAM layer normalises with the batch's mean and variance, and its ordinary backward
differentiates through them: the gradient reaching image i then holds terms of every other
image (the backward subtracts batch means of the incoming gradient). One backward of the
batch-summed target therefore gives a batch artefact, not each image's own map.

`CamBatchNorm1d/2d/3d` and `CamSyncBatchNorm` (drop-in subclasses: same parameters, buffers and
state dict) compute the very same forward (ATen's `native_batch_norm`, running statistics updated
as usual) and, by default, the very same backward (`native_batch_norm_backward`), so every loss
term but the CAM sees ordinary train-mode BatchNorm. Inside `constant_batch_stats()`, their
backward is that of the affine map y = gamma * (x - mean) * invstd + beta with mean and invstd
held fixed: dx = gamma * invstd * dy. That is the gradient of a copy of the model in eval mode
whose running statistics are this batch's statistics (docs/method.md, "The student's CAM under
BatchNorm"), so each image's CAM is its own.

How that CAM gradient is differentiated again (it is taken with create_graph=True) is the
`grad` argument, `distill.cam_bn_grad`:
- 'constant': the graph of dx (dy times a per-channel scale) reaches gamma but not the
  statistics: a stop-gradient through invstd, as in that eval-mode copy.
- 'exact': the same value, with invstd recomputed from the saved input x inside the graph
  (invstd + (r(x) - r(x).detach()), r = 1 / sqrt(var(x) + eps)), so the derivative of the map
  also follows how the batch statistics depend on the parameters and on every image. The mean
  does not enter dx; where it enters the map (the values after this layer), the training backward
  already runs through the ordinary train-mode node.

The switch is a process-wide stack rather than a thread-local: on CUDA the autograd engine
runs backward functions in its own device thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

CAM_BN_GRADS = ("constant", "exact")  # distill.cam_bn_grad: how the CAM gradient's BN scale is differentiated
DEFAULT_CAM_BN_GRAD = "constant"
_modes: list[str] = []  # innermost last; non-empty inside constant_batch_stats()


@contextmanager
def constant_batch_stats(grad: str = DEFAULT_CAM_BN_GRAD) -> Iterator[None]:
    """Backward passes run inside treat the Cam BatchNorms' batch statistics as constants of the
    map's value; `grad` says whether the map's own derivative follows them ('exact') or not."""
    if grad not in CAM_BN_GRADS:
        raise ValueError(f"unknown cam_bn_grad {grad!r}; allowed: {', '.join(CAM_BN_GRADS)}")
    _modes.append(grad)
    try:
        yield
    finally:
        _modes.pop()


def _exact_invstd(x: Tensor, invstd: Tensor, eps: float) -> Tensor:
    """invstd's value, with the derivative of 1 / sqrt(var(x) + eps) (biased variance per channel)."""
    if not torch.is_grad_enabled():
        return invstd
    dims = [0, *range(2, x.dim())]
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # bf16/fp16: reduce in float32
    r = torch.rsqrt(xf.var(dim=dims, unbiased=False) + eps).to(invstd.dtype)
    return invstd + (r - r.detach())


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        out, mean, invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        none = (None,) * 4
        if _modes:  # the CAM's gradient: a per-channel scale, differentiable in gy and gamma (and x: 'exact')
            if _modes[-1] == "exact":
                invstd = _exact_invstd(x, invstd, ctx.eps)
            scale = invstd if weight is None else weight * invstd
            shape = (1, -1) + (1,) * (gy.dim() - 2)
            return (gy * scale.view(shape)).to(gy.dtype), None, None, *none
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        if torch.is_grad_enabled():  # differentiated again: exact, by re-running the op under autograd
            return (*_grad_of_batch_norm(gy, x, weight, bias, ctx.eps, need), *none)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, ctx.eps, need
        )
        return gx, gw, gb, *none


def _grad_of_batch_norm(
    gy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, need: list[bool]
) -> tuple:
    ins = [t if n else None for t, n in zip((x, weight, bias), need)]
    wanted = [t for t in ins if t is not None]
    with torch.enable_grad():
        y = F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
        grads = iter(torch.autograd.grad(y, wanted, gy, create_graph=True, allow_unused=True))
    return tuple(None if t is None else next(grads) for t in ins)


def cam_batch_norm(bn: nn.modules.batchnorm._BatchNorm, input: Tensor) -> Tensor:
    """Train-mode batch norm of `bn` (nn.BatchNorm2d.forward's momentum and counter logic) through `_BatchNorm`."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            factor = 1.0 / float(bn.num_batches_tracked)
    stats = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return _BatchNorm.apply(input, bn.weight, bn.bias, *stats, factor, bn.eps)


class _CamForward:
    """The Cam classes' forward: `cam_batch_norm` in train mode with grad on, the parent's otherwise."""

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(input)
        self._check_input_dim(input)
        return cam_batch_norm(self, input)


class CamBatchNorm1d(_CamForward, nn.BatchNorm1d):
    """nn.BatchNorm1d with a per-image CAM gradient (see the module docstring)."""


class CamBatchNorm2d(_CamForward, nn.BatchNorm2d):
    """nn.BatchNorm2d with a per-image CAM gradient (see the module docstring)."""


class CamBatchNorm3d(_CamForward, nn.BatchNorm3d):
    """nn.BatchNorm3d with a per-image CAM gradient (see the module docstring)."""


def sync_world(bn: nn.SyncBatchNorm) -> int:
    """How many processes a SyncBatchNorm's statistics span (1 without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(bn.process_group or dist.group.WORLD)


class CamSyncBatchNorm(_CamForward, nn.SyncBatchNorm):
    """nn.SyncBatchNorm in one process (where its forward is plain batch norm) with a per-image CAM
    gradient; across processes its statistics are the global batch's, which `_BatchNorm` does not
    compute, so it refuses to train there rather than mix silently."""

    def forward(self, input: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled() and (world := sync_world(self)) > 1:
            raise RuntimeError(
                f"SyncBatchNorm after the student's CAM layer spans {world} processes; its per-image CAM "
                "gradient is defined for one process only: use nn.BatchNorm2d after the CAM layer"
            )
        return super().forward(input)
