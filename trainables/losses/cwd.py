"""CWD [CWD]: channel-wise distillation of the logits (`cwd`), and optionally of the decoder
features through a 1x1 connector (`cwd_feat`, off unless distill.weights.cwd_feat > 0)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.losses.features import connector, fit, pair
from trainables.losses.hyperparams import hp
from trainables.losses.registry import Step, register, weight_from
from trainables.losses.roles import role_taps


def channel_wise_divergence(s: Tensor, t: Tensor, tau: float) -> Tensor:
    """tau^2/(N*C) * sum over (n, c) of KL(softmax_hw(t/tau) || softmax_hw(s/tau)) (mmrazor's CWD)."""
    n, c = t.shape[:2]
    s = fit(s, t.shape[-2:]).float().flatten(2) / tau
    t = t.float().flatten(2) / tau
    log_p_t = F.log_softmax(t, dim=-1)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).sum() * tau * tau / (n * c)


@register("cwd", weight=weight_from("cwd", 3.0))
def _cwd(step: Step, cfg: dict) -> Tensor:
    return channel_wise_divergence(step.s_logits, step.t_logits.detach(), hp(cfg, "cwd_tau"))


def _build_cwd_feat(s_shapes: dict, t_shapes: dict, cfg: dict) -> nn.Module:
    return connector(s_shapes["dec"][1], t_shapes["dec"][1])


@register(
    "cwd_feat",
    weight=weight_from("cwd_feat", 0.0),
    student_taps=role_taps("dec"),
    teacher_taps=role_taps("dec"),
    build=_build_cwd_feat,
)
def _cwd_feat(step: Step, cfg: dict) -> Tensor:
    s, t = pair(step, "dec")
    return channel_wise_divergence(step.extras["cwd_feat"](s), t, hp(cfg, "cwd_tau"))
