import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_cm

from trainables import metrics as M


def _reference_miou(pred: np.ndarray, gt: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    keep = gt != 255
    cm = sk_cm(gt[keep], pred[keep], labels=list(range(k)))
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - inter
    iou = np.array([i / u if u > 0 else np.nan for i, u in zip(inter, union)])
    return float(np.nanmean(iou)), iou


def test_miou_matches_sklearn_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    k = 6
    gt = rng.integers(0, 4, size=(3, 17, 19))  # classes 4 and 5 never in GT
    pred = rng.integers(0, 4, size=gt.shape)
    pred[0, 0, :3] = 4  # class 4 predicted (false positives): IoU 0, counted
    gt[:, :2] = 255  # ignored pixels, including where class 4 was predicted
    gt[1, 5, 5:9] = 255
    cm = M.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), k)
    out = M.summarize(cm, [f"c{i}" for i in range(k)])
    ref_miou, ref_iou = _reference_miou(pred, gt, k)
    assert out["val_miou"] == pytest.approx(ref_miou, abs=1e-12)
    assert "val_iou_c5" not in out  # absent from both: excluded, not 1
    for i in range(4):
        assert out[f"val_iou_c{i}"] == pytest.approx(ref_iou[i])
    keep = gt != 255
    assert out["val_pixel_acc"] == pytest.approx((pred[keep] == gt[keep]).mean())


def test_predicted_but_absent_class_counts_as_zero():
    gt = torch.tensor([[0, 0], [1, 1]])
    pred = torch.tensor([[0, 2], [1, 1]])
    out = M.summarize(M.confusion_matrix(pred, gt, 3), ["a", "b", "c"])
    assert out["val_iou_c"] == 0.0
    assert out["val_miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_accumulating_batches_equals_whole_split():
    rng = np.random.default_rng(1)
    gt = torch.from_numpy(rng.integers(0, 3, size=(4, 8, 8)))
    pred = torch.from_numpy(rng.integers(0, 3, size=(4, 8, 8)))
    whole = M.confusion_matrix(pred, gt, 3)
    parts = sum(M.confusion_matrix(pred[i : i + 1], gt[i : i + 1], 3) for i in range(4))
    assert torch.equal(whole, parts)
