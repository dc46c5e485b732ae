"""SKD's holistic (adversarial) term, as one registered loss term trained in the same backward.

SKD (Liu et al., structure_knowledge_distillation) adds a Wasserstein GAN: a discriminator D
scores (image, segmentation map) pairs, the teacher's maps as real and the student's as fake;
D is trained to tell them apart and the student to be scored like the teacher (weight 0.001).
The public code trains D with its own optimizer and a gradient penalty. Here (a reconstruction):

- one backward for both sides: the student's map reaches D through a gradient reversal layer,
  so the term `D(image, student) - D(image, teacher)` is minimised by D (the critic's loss) while
  the student receives `-lambda * dD(student)/d(student)`, i.e. it minimises `-lambda * D(student)`
  (the generator's loss) with lambda = distill.weights.skd_ho (SKD: 0.001; 0 = off, the default);
- the Lipschitz constraint of the Wasserstein critic comes from spectral normalisation of D's
  convolutions instead of the gradient penalty (no extra double backward);
- D is trained by the run's optimizer with the connectors (the term's weight is 1, so D learns at
  the run's learning rate whatever lambda is); the logged `train_skd_ho` is the critic's loss,
  minus its Wasserstein estimate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from trainables.losses.registry import Step, register


class GradReverse(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -scale."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def discriminator(num_classes: int, width: int = 64) -> nn.Module:
    """A 4-stage strided conv critic on (image, class probabilities), spectral-normalised, one
    score per image (the mean of its patch scores)."""
    chans = [3 + num_classes, width, 2 * width, 4 * width]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(chans, chans[1:]):
        layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
    layers.append(spectral_norm(nn.Conv2d(chans[-1], 1, 3, padding=1)))
    return nn.Sequential(*layers)


def holistic_loss(disc: nn.Module, images: Tensor, s_logits: Tensor, t_logits: Tensor, lam: float) -> Tensor:
    """mean D(image, student) - mean D(image, teacher), the student's side behind a gradient
    reversal of scale `lam`; teacher logits are detached."""
    size = images.shape[-2:]
    s = F.interpolate(F.softmax(s_logits.float(), 1), size=size, mode="bilinear", align_corners=False)
    t = F.interpolate(F.softmax(t_logits.detach().float(), 1), size=size, mode="bilinear", align_corners=False)
    x = images.float()
    d_s = disc(torch.cat([x, GradReverse.apply(s, lam)], 1)).mean()
    d_t = disc(torch.cat([x, t], 1)).mean()
    return d_s - d_t


def _lam(cfg: dict) -> float:
    return float(cfg.get("weights", {}).get("skd_ho", 0.0))


def _build(s_shapes: dict, t_shapes: dict, cfg: dict) -> nn.Module:
    return discriminator(int(s_shapes["head"][1]))


@register(
    "skd_ho",
    weight=lambda cfg: 1.0 if _lam(cfg) > 0 else 0.0,
    student_taps=lambda cfg, model: {"head": "segmentation_head"},
    build=_build,
)
def _skd_ho(step: Step, cfg: dict) -> Tensor:
    return holistic_loss(step.extras["skd_ho"], step.images, step.s_logits, step.t_logits, _lam(cfg))
