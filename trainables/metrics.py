"""Segmentation metrics from one confusion matrix accumulated over the whole split.

mIoU averages IoU over classes present in the ground truth or the prediction; a class absent
from both has no IoU (NaN) and is excluded, never counted as 1 (the published XGD code scored it 1
per image: docs/method.md).
"""

from __future__ import annotations

import torch

from trainables.constants import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts, rows = ground truth, cols = prediction; IGNORE_INDEX pixels skipped."""
    valid = target != IGNORE_INDEX
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_image_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K, K) int64 counts of each image of a batch, one bincount for the whole batch; summed
    over images it is confusion_matrix. IGNORE_INDEX pixels (and so padding) are skipped. The
    bootstrap over test images (orchestrator.results.stats) resamples these."""
    b, k = target.shape[0], num_classes
    valid = target != IGNORE_INDEX
    image = torch.arange(b, device=target.device).view(b, *([1] * (target.dim() - 1))).expand_as(target)
    idx = (image[valid] * k + target[valid].long()) * k + pred[valid].long()
    return torch.bincount(idx, minlength=b * k * k).reshape(b, k, k)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU of each class as float64; NaN where the class is absent from both GT and prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def summarize(cm: torch.Tensor, class_names: list[str], prefix: str = "val_") -> dict[str, float]:
    """miou, pixel_acc and iou_<class> (NaN classes are left out of the dict and of the mean)."""
    iou = iou_per_class(cm)
    present = ~torch.isnan(iou)
    out = {
        f"{prefix}miou": float(iou[present].mean()) if present.any() else float("nan"),
        f"{prefix}pixel_acc": float(cm.diag().sum() / cm.sum().clamp(min=1)),
    }
    out.update({f"{prefix}iou_{name}": float(v) for name, v, p in zip(class_names, iou, present) if p})
    return out
