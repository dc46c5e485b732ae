"""What the feature-based baselines share: sizing student features to the teacher's (the three
students and the DLV3+ teacher differ in stride and channels) and reading a role's (student,
teacher) pair. Teacher features are always detached: with the saliency term on, the loop hands
them over as autograd leaves."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.losses.registry import Step


def fit(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (the teacher's), a no-op when it already fits."""
    size = tuple(size)
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def connector(c_in: int, c_out: int) -> nn.Module:
    """1x1 conv + BN from student to teacher channels (the public AttnFD/OFD connector); identity if equal."""
    if c_in == c_out:
        return nn.Identity()
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def pair(step: Step, role: str) -> tuple[Tensor, Tensor]:
    """(student, detached teacher) features of one role."""
    return step.s_feats[role], step.t_feats[role].detach()
