"""SKD's pair-wise term `skd_pa` [SKD] on the decoder output (formula of
irfanICMLL/structure_knowledge_distillation). SKD's pixel-wise term is the `pi` term (weight
distill.alpha), its holistic term `skd_ho` (trainables.losses.holistic)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from trainables.losses.features import fit, pair
from trainables.losses.hyperparams import hp
from trainables.losses.registry import Step, register, weight_from
from trainables.losses.roles import role_taps


def similarity(feat: Tensor) -> Tensor:
    """(B, N, N) cosine similarity of the N spatial nodes; channel norms detached as in the SKD code."""
    f = feat.float()
    f = f / (f.norm(dim=1, keepdim=True).detach() + 1e-8)
    f = f.flatten(2)
    return f.transpose(1, 2) @ f


def skd_pool(feat: Tensor, pool: float) -> Tensor:
    """Max-pool to nodes: kernel `pool` px, or (pool < 1) a fraction of the size (SKD's pool-scale)."""
    h, w = feat.shape[-2:]
    k = (int(pool), int(pool)) if pool >= 1 else (max(1, int(h * pool)), max(1, int(w * pool)))
    return F.max_pool2d(feat, kernel_size=k, stride=k, ceil_mode=True)


def pairwise_loss(s_feat: Tensor, t_feat: Tensor, pool: float = 2.0) -> Tensor:
    """SKD pair-wise term: mean over (B, N, N) of (S_s - S_t)^2 on max-pooled nodes (channels may differ)."""
    s_feat = fit(s_feat, t_feat.shape[-2:])
    return (similarity(skd_pool(s_feat, pool)) - similarity(skd_pool(t_feat, pool))).pow(2).mean()


@register("skd_pa", weight=weight_from("skd_pa", 10.0), student_taps=role_taps("dec"), teacher_taps=role_taps("dec"))
def _skd_pa(step: Step, cfg: dict) -> Tensor:
    s, t = pair(step, "dec")
    return pairwise_loss(s, t, hp(cfg, "skd_pool"))
