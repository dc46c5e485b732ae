"""Loss terms registered by name, and methods as lists of terms.

A term is a pure function of one training step's outputs (`Step`) and the distill config. It
declares the features it taps (dotted module paths, forward hooks), whether it needs the
teacher, and optionally builds trainable modules (connectors) from the tapped shapes; the
worker loop reads these declarations and never changes when a method is added.

The total loss is sum(weight(term) * term) over a method's terms; a term whose weight is 0 is
not computed at all (beta = 0 computes no CAM).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = 255


@dataclass
class Step:
    """Everything a term may look at for one batch."""

    images: torch.Tensor
    labels: torch.Tensor  # (B, H, W) long, IGNORE where unlabelled
    s_logits: torch.Tensor  # (B, K, H, W)
    t_logits: Optional[torch.Tensor] = None
    s_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    t_feats: dict[str, torch.Tensor] = field(default_factory=dict)  # leaves when teacher_grad
    extras: dict[str, nn.Module] = field(default_factory=dict)  # trainable modules by term name


Taps = Callable[[dict, nn.Module], dict[str, str]]  # (distill cfg, model) -> {name: dotted path}


@dataclass(frozen=True)
class Term:
    fn: Callable[[Step, dict], torch.Tensor]
    weight: Callable[[dict], float]
    needs_teacher: bool = True
    student_taps: Optional[Taps] = None
    teacher_taps: Optional[Taps] = None
    teacher_grad: bool = False  # teacher taps must be autograd leaves (CAM gradients)
    saliency: bool = False  # its time is the step's saliency time (`saliency_time_s`, the bench's CAM s)
    # (student feature shapes, teacher feature shapes, cfg) -> trainable module, or None
    build: Optional[Callable[[dict, dict, dict], nn.Module]] = None


TERMS: dict[str, Term] = {}
METHODS: dict[str, tuple[str, ...]] = {
    "none": ("seg",),
    "pi": ("seg", "pi"),
    "xgd": ("seg", "pi", "sa"),
}


def register(name: str, **kw) -> Callable:
    def deco(fn):
        TERMS[name] = Term(fn=fn, **kw)
        return fn

    return deco


def weight_from(key: str, default: float = 1.0) -> Callable[[dict], float]:
    """A term weight read from distill[key] (alpha, beta) or distill['weights'][key]."""
    return lambda cfg: float(cfg[key]) if key in cfg else float(cfg.get("weights", {}).get(key, default))


def active_terms(distill: dict, has_teacher: bool) -> list[tuple[str, Term, float]]:
    """(name, term, weight) of the configured method with weight > 0; teacher terms need a teacher."""
    out = []
    for name in METHODS[distill.get("method", "none")]:
        term = TERMS[name]
        w = term.weight(distill)
        if w > 0 and (has_teacher or not term.needs_teacher):
            out.append((name, term, w))
    return out


# ------------------------------------------------------------------ pure loss functions


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over labelled pixels (IGNORE skipped)."""
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)


def pixel_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float,
             valid: Optional[torch.Tensor] = None) -> torch.Tensor:
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


# ------------------------------------------------------------------ registered terms


@register("seg", weight=lambda cfg: 1.0, needs_teacher=False)
def _seg(step: Step, cfg: dict) -> torch.Tensor:
    return cross_entropy(step.s_logits, step.labels)


@register("pi", weight=weight_from("alpha"))
def _pi(step: Step, cfg: dict) -> torch.Tensor:
    # PI distils every pixel, labelled or not (the teacher's output exists everywhere)
    return pixel_kl(step.s_logits, step.t_logits.detach(), float(cfg["tau"]))


def _cam_layer(role: str) -> Taps:
    def taps(cfg: dict, model: nn.Module) -> dict[str, str]:
        from trainables.models import default_cam_layer

        return {"cam": cfg.get(f"{role}_layer") or default_cam_layer(model)}

    return taps


@register("sa", weight=weight_from("beta"), student_taps=_cam_layer("student"),
          teacher_taps=_cam_layer("teacher"), teacher_grad=True, saliency=True)
def _sa(step: Step, cfg: dict) -> torch.Tensor:
    from trainables.saliency import xgd_saliency_loss

    return xgd_saliency_loss(step, cfg)


import trainables.baselines  # noqa: E402,F401  (registers the baseline terms and methods)
