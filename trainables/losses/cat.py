"""CAT [CAT]: class attention transfer on the decoder output, in our reconstruction for
segmentation (there is no public segmentation code; see `cat_loss`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from trainables.losses.features import fit, pair
from trainables.losses.hyperparams import hp
from trainables.losses.registry import Step, register, weight_from
from trainables.losses.roles import role_taps
from trainables.saliency import class_masks


def class_attention(feat: Tensor, masks: Tensor, pool: int, size: tuple[int, int] | None = None) -> Tensor:
    """(B, K, pool*pool) unit-norm class attention: masks_k * mean_c f^2, average-pooled, L2-normalised."""
    a = feat.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None:
        a = fit(a, size)
    m = F.adaptive_avg_pool2d(masks.float(), a.shape[-2:])  # area fraction of class k per feature cell
    return F.normalize(F.adaptive_avg_pool2d(a * m, pool).flatten(2), dim=-1)


def cat_loss(s_feat: Tensor, t_feat: Tensor, masks: Tensor, pool: int = 8) -> Tensor:
    """Class attention transfer (our reconstruction, no public segmentation code).

    For every class k present in image b (masks: (B, K, H, W) one-hot from ground truth or the
    teacher's argmax), the class attention map is the AT energy mean_c f^2 restricted to the
    class's area, average-pooled to pool x pool cells and L2-normalised per (b, k); the loss is
    the squared L2 distance between student and teacher maps, averaged over present (b, k).
    Unlike AT, every class region gets the same weight whatever its size (thin cables count as
    much as the background). CAT-KD's classification form (pooled class activation maps) would
    reduce here to pooled logits, a weaker PI, hence the mask-based form.
    """
    size = tuple(t_feat.shape[-2:])
    a_s = class_attention(s_feat, masks, pool, size)
    a_t = class_attention(t_feat, masks, pool)
    present = masks.flatten(2).sum(dim=-1) > 0  # (B, K)
    d = (a_s - a_t).pow(2).sum(dim=-1)
    # mean over present (b, k) without a host sync; 0 (with a graph) when nothing is present
    return (d * present).sum() / present.sum().clamp_min(1)


@register("cat", weight=weight_from("cat", 1.0), student_taps=role_taps("dec"), teacher_taps=role_taps("dec"))
def _cat(step: Step, cfg: dict) -> Tensor:
    masks = class_masks(step.labels, step.t_logits, step.s_logits.shape[1], cfg.get("cam_target") or "gt")
    s, t = pair(step, "dec")
    return cat_loss(s, t, masks, int(hp(cfg, "cat_pool")))
