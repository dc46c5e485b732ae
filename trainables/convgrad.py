"""Convolutions whose input gradient is cheap to differentiate again: XGD's student CAM.

The student's CAM is built from d(score)/d(CAM activations) taken with create_graph=True, so
the training backward differentiates the backward of every convolution between the CAM layer
and the logits. PyTorch does that with `_convolution_double_backward`, which on the CPU computes
a depthwise convolution's weight term with one convolution per group (304 calls for the
DeepLabV3+ decoder's separable conv) and a 1x1 convolution's with a convolution whose kernel is
the whole feature map; that double backward cost more than the rest of the saliency term.

`FastGradConv2d` (a drop-in `nn.Conv2d` subclass, same parameters and state dict) computes the
same function with a custom autograd Function: the first-order backward is the very ATen call
the built-in convolution makes (`convolution_backward`, same outputs, bit for bit); under
create_graph the input gradient is written as a forward convolution (1x1 or stride 1: the
flipped, group-transposed kernel) or a transposed one, whose own backward is first order. So the
double backward runs ordinary convolution kernels. Values agree with the built-in path up to
float rounding (tests/test_bench.py). A weight or bias gradient the current backward does not
need (e.g. the CAM's autograd.grad with respect to the activations only) is not computed, as
the built-in node does.

`trainables.cam_path.prepare_cam_path` swaps it in for the Conv2d modules that run after a CAM layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _will_run(t: Tensor | None) -> bool:
    """Does the current backward need a gradient for `t`? (True when unknown.)"""
    if t is None or not t.requires_grad:
        return False
    check = getattr(torch._C, "_will_engine_execute_node", None)
    if check is None:
        return True
    try:
        return bool(check(torch.autograd.graph.get_gradient_edge(t).node))
    except RuntimeError:  # not inside a backward, or an engine without the query
        return True


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def input_grad(gy: Tensor, w: Tensor, x_shape, stride, padding, dilation, groups: int) -> Tensor:
    """d(conv2d(x, w))/dx applied to gy, as differentiable forward/transposed convolutions."""
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    k = w.shape[-2:]
    full = [d[i] * (k[i] - 1) - p[i] for i in range(2)]
    if s == (1, 1) and min(full) >= 0:
        c_out, c_in_g = w.shape[:2]
        g_out = c_out // groups  # weight (groups * g_out, c_in_g, k) -> (groups * c_in_g, g_out, k)
        wt = w.reshape(groups, g_out, c_in_g, *k).transpose(1, 2).reshape(groups * c_in_g, g_out, *k)
        return F.conv2d(gy, wt.flip(-2, -1), None, 1, full, d, groups)
    out_pad = [x_shape[2 + i] - ((gy.shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(gy, w, None, s, p, out_pad, groups, d)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        ctx.save_for_backward(x, w, b)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, gy):
        x, w, b = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] and _will_run(w)
        need_b = ctx.needs_input_grad[2] and _will_run(b)
        bias_sizes = None if b is None else list(b.shape)
        if not torch.is_grad_enabled():  # first order: the built-in node's own call
            gx, gw, gb = torch.ops.aten.convolution_backward(
                gy,
                x,
                w,
                bias_sizes,
                _pair(stride),
                _pair(padding),
                _pair(dilation),
                False,
                [0, 0],
                groups,
                [need_x, need_w, need_b],
            )
            return gx, gw, gb, None, None, None, None
        gx = input_grad(gy, w, x.shape, stride, padding, dilation, groups) if need_x else None
        gw = gb = None
        if need_w:  # differentiable (ATen's double backward), rarely differentiated again
            gw = torch.ops.aten.convolution_backward(
                gy,
                x,
                w,
                None,
                _pair(stride),
                _pair(padding),
                _pair(dilation),
                False,
                [0, 0],
                groups,
                [False, True, False],
            )[1]
        if need_b:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None


class FastGradConv2d(nn.Conv2d):
    """nn.Conv2d with a cheap double backward (see the module docstring); 'zeros' padding only."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        device = input.device.type
        if torch.is_autocast_enabled(device):  # autocast's cast for conv, done here so backward sees it
            dtype = torch.get_autocast_dtype(device)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _Conv2d.apply(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
