"""AT [AT]: attention transfer at the encoder's last stage, the context module and the decoder
output (the three roles of trainables.losses.roles)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from trainables.losses.features import fit, pair
from trainables.losses.registry import Step, register, weight_from
from trainables.losses.roles import role_taps

AT_ROLES = ("enc", "aspp", "dec")


def attention_map(feat: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """at(f) = L2-normalise(mean_c f^2, flattened); the squared map is resized before normalising."""
    a = feat.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None:
        a = fit(a, size)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Zagoruyko & Komodakis: mean((at_s - at_t)^2) at the teacher's resolution."""
    return (attention_map(s_feat, tuple(t_feat.shape[-2:])) - attention_map(t_feat)).pow(2).mean()


@register("at", weight=weight_from("at", 1000.0), student_taps=role_taps(*AT_ROLES), teacher_taps=role_taps(*AT_ROLES))
def _at(step: Step, cfg: dict) -> Tensor:
    return sum(at_loss(*pair(step, r)) for r in AT_ROLES)
