"""XGD's saliency term `sa` (weight distill.beta): the MSE between the student's and the
teacher's normalised CAMs at their CAM layers. The maps themselves (segmentation target,
classes, reduction, the student's CAM under BatchNorm) are `trainables.saliency`'s, shared with
the explanation metrics and the report's galleries."""

from __future__ import annotations

import torch
from torch import nn

from trainables.losses.registry import Step, Taps, register, weight_from
from trainables.saliency import xgd_saliency_loss


def cam_layer(role: str) -> Taps:
    """Taps {'cam': distill.<role>_layer, else the model's default CAM layer}."""

    def taps(cfg: dict, model: nn.Module) -> dict[str, str]:
        from trainables.models import default_cam_layer  # smp loads only when a model is tapped

        return {"cam": cfg.get(f"{role}_layer") or default_cam_layer(model)}

    return taps


@register(
    "sa",
    weight=weight_from("beta"),
    student_taps=cam_layer("student"),
    teacher_taps=cam_layer("teacher"),
    teacher_grad=True,
    saliency=True,
)
def _sa(step: Step, cfg: dict) -> torch.Tensor:
    return xgd_saliency_loss(step, cfg)
