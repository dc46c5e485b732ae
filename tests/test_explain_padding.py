"""Explanation metrics on padded val batches: each image scores what it scores alone (its padding
left out of the maps, the CAM targets and the logit alignment), and the images a mean leaves out
are counted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables import explain as E
from trainables.constants import IGNORE_INDEX
from trainables.data import pad_collate

K = 3
ALL = {"cam_classes": "all"}  # every class enters the CAM target (no background class needed)


class Pointwise(nn.Module):
    """1x1 convolutions only: an unpadded pixel's activations and logits do not depend on the
    padding, so any difference padding makes to a metric comes from the metric itself."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Conv2d(3, 6, 1)
        self.decoder = nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU())
        self.head = nn.Conv2d(6, K, 1)

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


def _sample(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (h, w), generator=g)
    y[-2:] = IGNORE_INDEX  # the image's own ignore pixels: not padding
    return torch.randn(3, h, w, generator=g), y


def test_valid_region_is_each_images_extent_in_pad_collate():
    samples = [_sample(40, 24, 0), _sample(20, 50, 1), _sample(64, 64, 2)]
    x, y = pad_collate(samples)
    assert tuple(x.shape[-2:]) == (64, 64)
    valid = E.valid_region(x, y)
    for v, (img, _) in zip(valid, samples):
        want = torch.zeros(64, 64, dtype=torch.bool)
        want[: img.shape[-2], : img.shape[-1]] = True
        assert torch.equal(v, want)


@pytest.mark.parametrize("target", ["gt", "teacher"])
def test_a_padded_batch_scores_each_image_as_it_scores_alone(target):
    student, teacher = Pointwise(0), Pointwise(1)
    samples = [_sample(40, 24, 3), _sample(64, 56, 4)]
    padded = [pad_collate(samples)]  # one batch padded to 64 x 64
    alone = [(x[None], y[None]) for x, y in samples]  # each image its own unpadded batch
    cfg = {"cam": "gradcam", "cam_target": target, "cam_classes": "all"}
    got, want = (
        E.explanation_metrics(student, teacher, padded, cfg),
        E.explanation_metrics(student, teacher, alone, cfg),
    )
    for k in ("sal_spearman", "sal_pearson", "topk_iou", "focus", "logit_spearman"):
        assert got[f"expl_{k}"] == pytest.approx(want[f"expl_{k}"], abs=1e-5), k
        assert got[f"expl_{k}_n_dropped"] == want[f"expl_{k}_n_dropped"] == 0, k


def test_map_metrics_over_valid_rectangles_match_the_cropped_maps():
    g = torch.Generator().manual_seed(5)
    ms, mt = torch.rand(3, 16, 12, generator=g), torch.rand(3, 16, 12, generator=g)
    ms[ms < 0.5], mt[mt < 0.6] = 0, 0  # sparse, ReLU'd-CAM-like
    valid = torch.zeros(3, 16, 12, dtype=torch.bool)
    for i, (h, w) in enumerate([(16, 12), (7, 12), (16, 5)]):
        valid[i, :h, :w] = True
    got = E.map_metrics(ms, mt, valid, 0.2)
    for i, (h, w) in enumerate([(16, 12), (7, 12), (16, 5)]):
        a, b = ms[i, :h, :w].reshape(1, -1), mt[i, :h, :w].reshape(1, -1)
        assert got["sal_spearman"][i].item() == pytest.approx(E.spearman_rows(a, b).item())
        assert got["sal_pearson"][i].item() == pytest.approx(E.pearson_rows(a, b).item())
        assert got["topk_iou"][i].item() == pytest.approx(E.topk_iou(a, b, 0.2).item())
        assert got["focus"][i].item() == pytest.approx(E.focus(a, b, 0.2).item())


def test_the_images_a_mean_leaves_out_are_counted():
    student, teacher = Pointwise(2), Pointwise(3)
    (x0, y0), (x1, y1) = _sample(32, 32, 6), _sample(32, 32, 7)
    y1 = torch.full_like(y1, IGNORE_INDEX)  # no labelled pixel: no gt CAM target, all-zero maps
    out = E.explanation_metrics(student, teacher, [(torch.stack([x0, x1]), torch.stack([y0, y1]))], ALL)
    for k in ("sal_spearman", "sal_pearson", "topk_iou", "focus"):
        assert out[f"expl_{k}_n_dropped"] == 1, k
    assert out["expl_logit_spearman_n_dropped"] == 0
    alone = E.explanation_metrics(student, teacher, [(x0[None], y0[None])], ALL)
    assert out["expl_sal_spearman"] == pytest.approx(alone["expl_sal_spearman"], abs=1e-6)
