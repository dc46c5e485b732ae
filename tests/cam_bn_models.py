"""A tiny student for the BatchNorm-after-the-CAM-layer tests: stem (conv, BN, ReLU: the CAM layer),
then conv, a norm layer of the test's choice, an activation, and a 1x1 head. Small enough for float64
references built with plain autograd."""

from __future__ import annotations

import torch
from torch import nn

K = 3  # classes
CAM_LAYER = "stem"


class Tiny(nn.Module):
    def __init__(self, norm: nn.Module | None = None, act: nn.Module | None = None, c: int = 6, stem_norm: bool = True):
        super().__init__()
        stem_bn = nn.BatchNorm2d(c) if stem_norm else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), stem_bn, nn.ReLU())
        self.mid = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.BatchNorm2d(c) if norm is None else norm
        self.act = nn.ReLU() if act is None else act
        self.head = nn.Conv2d(c, K, 1)

    def forward(self, x):
        return self.head(self.act(self.norm(self.mid(self.stem(x)))))


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial affine parameters (gamma, beta), so the BN terms matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(m, nn.modules.batchnorm._NormBase) and w is not None:
                w.copy_(torch.rand(w.shape, generator=g) + 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model


def batch(b: int, seed: int, size: int = 8, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, size, size, generator=g).to(dtype)
    y = torch.randint(0, K, (b, size, size), generator=g)
    return x, y
