"""The supervised term `seg` (cross-entropy on labelled pixels) and XGD's pixel-wise distillation
term `pi` (temperature-scaled KL to the teacher at every pixel), with their pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.constants import IGNORE_INDEX
from trainables.losses.registry import Step, register, weight_from


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over labelled pixels (IGNORE_INDEX skipped)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def pixel_kl(
    s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """tau^2 * mean over pixels of KL(softmax(t/tau) || softmax(s/tau)).

    Averaged per pixel (not the 'batchmean' sum over pixels of the published code); `valid`
    (B, H, W) bool restricts the mean to those pixels.
    """
    log_p_s = F.log_softmax(s_logits.float() / tau, dim=1)
    log_p_t = F.log_softmax(t_logits.float() / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B, H, W)
    if valid is not None:
        kl = kl[valid]
    return kl.mean() * tau * tau if kl.numel() else kl.sum()


@register("seg", weight=lambda cfg: 1.0, needs_teacher=False)
def _seg(step: Step, cfg: dict) -> torch.Tensor:
    return cross_entropy(step.s_logits, step.labels)


@register("pi", weight=weight_from("alpha"))
def _pi(step: Step, cfg: dict) -> torch.Tensor:
    # PI distils every pixel, labelled or not (the teacher's output exists everywhere)
    return pixel_kl(step.s_logits, step.t_logits.detach(), float(cfg["tau"]))
