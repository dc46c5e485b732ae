"""The term registry: what one training step hands a loss term (`Step`), what a term declares
(`Term`), `TERMS` by name, and the configured method's active terms.

A term is a pure function of one step's outputs and the distill config. It declares the
features it taps (dotted module paths, forward hooks), whether it needs the teacher, and
optionally builds trainable modules (connectors) from the tapped shapes; the worker loop reads
these declarations and never changes when a method is added. Term modules import this one and
register themselves; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.losses.methods import METHODS


@dataclass
class Step:
    """Everything a term may look at for one batch."""

    images: torch.Tensor
    labels: torch.Tensor  # (B, H, W) long, IGNORE_INDEX where unlabelled
    s_logits: torch.Tensor  # (B, K, H, W)
    t_logits: torch.Tensor | None = None
    s_feats: dict[str, torch.Tensor] = field(default_factory=dict)
    t_feats: dict[str, torch.Tensor] = field(default_factory=dict)  # leaves when teacher_grad
    extras: dict[str, nn.Module] = field(default_factory=dict)  # trainable modules by term name
    t_cams: torch.Tensor | None = None  # the teacher's CAMs from the output cache (trainables.teacher_step)


Taps = Callable[[dict, nn.Module], dict[str, str]]  # (distill cfg, model) -> {name: dotted path}


@dataclass(frozen=True)
class Term:
    fn: Callable[[Step, dict], torch.Tensor]
    weight: Callable[[dict], float]
    needs_teacher: bool = True
    student_taps: Taps | None = None
    teacher_taps: Taps | None = None
    teacher_grad: bool = False  # teacher taps must be autograd leaves (CAM gradients)
    saliency: bool = False  # its time is the step's saliency time (`saliency_time_s`, the bench's CAM s)
    # (student feature shapes, teacher feature shapes, cfg) -> trainable module, or None
    build: Callable[[dict, dict, dict], nn.Module] | None = None


TERMS: dict[str, Term] = {}


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
