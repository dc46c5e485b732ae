"""BatchNorm whose CAM gradient sees each image on its own: batch statistics as constants.

XGD's student CAM at image i is built from d(score_i)/d(acts_i). In train mode a BatchNorm
after the CAM layer normalises with the batch's mean and variance, and its ordinary backward
differentiates through them: the gradient reaching image i then holds terms of every other
image (the backward subtracts batch means of the incoming gradient). One backward of the
batch-summed target therefore gives a batch artefact, not each image's own map.

`CamBatchNorm2d` (a drop-in `nn.BatchNorm2d` subclass: same parameters, buffers and state dict)
computes the very same forward (ATen's `native_batch_norm`, running statistics updated as usual)
and, by default, the very same backward (`native_batch_norm_backward`), so every loss term but
the CAM sees ordinary train-mode BatchNorm. Inside `constant_batch_stats()`, its backward is
that of the affine map y = gamma * (x - mean) * invstd + beta with mean and invstd held fixed:
dx = gamma * invstd * dy. That is the gradient of a copy of the model in eval mode whose running
statistics are this batch's statistics (docs/method.md, "The student's CAM under BatchNorm"),
so each image's CAM is its own. The CAM gradient is taken with create_graph=True; its graph
(dy times a per-channel scale) reaches gamma but not the statistics, which stay constants of
the map, as in that eval-mode copy.

The switch is a process-wide counter rather than a thread-local: on CUDA the autograd engine
runs backward functions in its own device thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_constant_stats = 0  # > 0 inside constant_batch_stats()


@contextmanager
def constant_batch_stats() -> Iterator[None]:
    """Backward passes run inside treat CamBatchNorm2d's batch statistics as constants."""
    global _constant_stats
    _constant_stats += 1
    try:
        yield
    finally:
        _constant_stats -= 1


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
        if _constant_stats:  # the CAM's gradient: a per-channel scale, differentiable in gy and gamma
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


class CamBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with a per-image CAM gradient (see the module docstring)."""

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        stats = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _BatchNorm.apply(input, self.weight, self.bias, *stats, factor, self.eps)
