"""Baseline distillation methods as registered loss terms: SKD (pi+pa), CWD, AT, CAT (AttnFD in
trainables.attnfd), plus the feature layers they tap, found per model by role.

Every loss is a pure function of tensors; the registered term only picks the tapped features out
of a `Step`, reads its hyperparameters and sizes student features to the teacher's (the three
students and the DLV3+ teacher differ in stride and channels). Teacher features are always
detached: with the saliency term on, the loop hands them over as autograd leaves.

Hyperparameters live in `distill.weights` next to the term weights (one flat dict of floats);
`HYPERPARAMS` lists every key with its default. Term weights (default in brackets):
skd_pa [10], skd_ho [0 = off; SKD's 0.001, trainables.holistic], cwd [3], cwd_feat [0 = off],
at [1000], cat [1], attnfd [2].
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.losses import METHODS, Step, Taps, register, weight_from

# --------------------------------------------------------------------------- hyperparameters

HYPERPARAMS: dict[str, float] = {
    "skd_pool": 2.0,  # SKD node size: max-pool kernel in pixels (>= 1), or a fraction of the feature size (< 1)
    "cwd_tau": 4.0,  # CWD temperature (logits and features)
    "cat_pool": 8.0,  # CAT: class attention maps are average-pooled to cat_pool x cat_pool
    "attnfd_reduction": 16.0,  # CBAM channel-MLP reduction
    "attnfd_teacher_cbam": 0.0,  # 0: parameter-free teacher gate (public code); 1: a learned CBAM on the teacher too
}


_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "attnfd_teacher_cbam": (lambda v: v in (0.0, 1.0), "0 or 1"),
    "cat_pool": (lambda v: v >= 1 and v == int(v), "an integer >= 1"),
    "attnfd_reduction": (lambda v: v >= 1 and v == int(v), "an integer >= 1"),
}
_POSITIVE = (lambda v: v > 0 and math.isfinite(v), "a positive number")


def hp(cfg: dict, key: str) -> float:
    """Hyperparameter `key` from distill.weights, else its default; checked against its rule."""
    value = float(cfg.get("weights", {}).get(key, HYPERPARAMS[key]))
    ok, allowed = _RULES.get(key, _POSITIVE)
    if not ok(value):
        raise ValueError(f"distill.weights.{key} = {value} is not allowed; use {allowed}")
    return value


# --------------------------------------------------------------------------- layers by role

ENCODER_LAST: dict[str, Callable[[nn.Module], str]] = {
    # smp encoders stop at `_depth` stages; the last stage's module, relative to `encoder`
    "ResNetEncoder": lambda e: f"layer{e._depth - 1}" if e._depth >= 2 else "relu",
    "MobileNetV2Encoder": lambda e: f"features.{e._out_indexes[e._depth - 1]}",
}
CONTEXT_LAYERS: dict[str, str] = {  # the multi-scale context module (ASPP / pyramid pooling) by model class
    "DeepLabV3Plus": "decoder.aspp",
    "DeepLabV3": "decoder.aspp",
    "PSPNet": "decoder.psp",
}


@torch.no_grad()
def probe_last_stage(encoder: nn.Module, size: int = 64) -> str:
    """The outermost submodule whose output is the encoder's last feature (one dummy forward, eval mode)."""
    seen: list[tuple[str, Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.append((n, out)) if isinstance(out, Tensor) else None)
             for n, m in encoder.named_modules() if n]
    was = encoder.training
    encoder.eval()
    try:
        p = next(encoder.parameters())
        feats = encoder(torch.zeros(1, getattr(encoder, "_in_channels", 3), size, size, device=p.device, dtype=p.dtype))
    finally:
        encoder.train(was)
        for h in hooks:
            h.remove()
    names = [n for n, out in seen if out is feats[-1]]  # inner modules fire first: the last match is outermost
    if not names:
        raise ValueError(f"cannot find the last stage of encoder {type(encoder).__name__}; set it in baselines.ENCODER_LAST")
    return names[-1]


def encoder_last_stage(model: nn.Module) -> str:
    enc = model.encoder
    fn = ENCODER_LAST.get(type(enc).__name__)
    return "encoder." + (fn(enc) if fn else probe_last_stage(enc))


def context_layer(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in CONTEXT_LAYERS:
        raise ValueError(f"model {name} has no ASPP/pyramid-pooling layer for this method; "
                         f"supported: {', '.join(CONTEXT_LAYERS)}")
    return CONTEXT_LAYERS[name]


def decoder_output(model: nn.Module) -> str:
    return "decoder"  # smp: the decoder's output is the feature the segmentation head classifies


ROLES: dict[str, Callable[[nn.Module], str]] = {"enc": encoder_last_stage, "aspp": context_layer, "dec": decoder_output}


def role_taps(*roles: str) -> Taps:
    """Taps {role: dotted path}; a role name always maps to the same layer, so terms can share taps."""
    return lambda cfg, model: {r: ROLES[r](model) for r in roles}


# --------------------------------------------------------------------------- shared pieces


def fit(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (the teacher's), a no-op when it already fits."""
    size = tuple(size)
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def connector(c_in: int, c_out: int) -> nn.Module:
    """1x1 conv + BN from student to teacher channels (the public AttnFD/OFD connector); identity if equal."""
    if c_in == c_out:
        return nn.Identity()
    conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_out))
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def pair(step: Step, role: str) -> tuple[Tensor, Tensor]:
    """(student, detached teacher) features of one role."""
    return step.s_feats[role], step.t_feats[role].detach()


# --------------------------------------------------------------------------- SKD (pair-wise)


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


# --------------------------------------------------------------------------- CWD


def channel_wise_divergence(s: Tensor, t: Tensor, tau: float) -> Tensor:
    """tau^2/(N*C) * sum over (n, c) of KL(softmax_hw(t/tau) || softmax_hw(s/tau)) (mmrazor's CWD)."""
    n, c = t.shape[:2]
    s = fit(s, t.shape[-2:]).float().flatten(2) / tau
    t = t.float().flatten(2) / tau
    log_p_t = F.log_softmax(t, dim=-1)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(s, dim=-1))).sum() * tau * tau / (n * c)


# --------------------------------------------------------------------------- AT


def attention_map(feat: Tensor, size: Optional[tuple[int, int]] = None) -> Tensor:
    """at(f) = L2-normalise(mean_c f^2, flattened); the squared map is resized before normalising."""
    a = feat.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None:
        a = fit(a, size)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """Zagoruyko & Komodakis: mean((at_s - at_t)^2) at the teacher's resolution."""
    return (attention_map(s_feat, tuple(t_feat.shape[-2:])) - attention_map(t_feat)).pow(2).mean()


# --------------------------------------------------------------------------- CAT (reconstruction)


def class_attention(feat: Tensor, masks: Tensor, pool: int, size: Optional[tuple[int, int]] = None) -> Tensor:
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


# --------------------------------------------------------------------------- registered terms


@register("skd_pa", weight=weight_from("skd_pa", 10.0), student_taps=role_taps("dec"), teacher_taps=role_taps("dec"))
def _skd_pa(step: Step, cfg: dict) -> Tensor:
    """SKD's pair-wise term; PI is the 'pi' term, the holistic term 'skd_ho' (trainables.holistic)."""
    s, t = pair(step, "dec")
    return pairwise_loss(s, t, hp(cfg, "skd_pool"))


@register("cwd", weight=weight_from("cwd", 3.0))
def _cwd(step: Step, cfg: dict) -> Tensor:
    return channel_wise_divergence(step.s_logits, step.t_logits.detach(), hp(cfg, "cwd_tau"))


def _build_cwd_feat(s_shapes: dict, t_shapes: dict, cfg: dict) -> nn.Module:
    return connector(s_shapes["dec"][1], t_shapes["dec"][1])


@register("cwd_feat", weight=weight_from("cwd_feat", 0.0), student_taps=role_taps("dec"),
          teacher_taps=role_taps("dec"), build=_build_cwd_feat)
def _cwd_feat(step: Step, cfg: dict) -> Tensor:
    s, t = pair(step, "dec")
    return channel_wise_divergence(step.extras["cwd_feat"](s), t, hp(cfg, "cwd_tau"))


AT_ROLES = ("enc", "aspp", "dec")


@register("at", weight=weight_from("at", 1000.0), student_taps=role_taps(*AT_ROLES), teacher_taps=role_taps(*AT_ROLES))
def _at(step: Step, cfg: dict) -> Tensor:
    return sum(at_loss(*pair(step, r)) for r in AT_ROLES)


@register("cat", weight=weight_from("cat", 1.0), student_taps=role_taps("dec"), teacher_taps=role_taps("dec"))
def _cat(step: Step, cfg: dict) -> Tensor:
    from trainables.saliency import class_masks

    masks = class_masks(step.labels, step.t_logits, step.s_logits.shape[1], cfg.get("cam_target") or "gt")
    s, t = pair(step, "dec")
    return cat_loss(s, t, masks, int(hp(cfg, "cat_pool")))


from trainables import attnfd, holistic  # noqa: E402,F401  (register the 'attnfd' and 'skd_ho' terms)

# --------------------------------------------------------------------------- methods

BASELINES: dict[str, tuple[str, ...]] = {
    "skd": ("seg", "pi", "skd_pa", "skd_ho"),  # PI weight = distill.alpha; skd_ho off unless weights.skd_ho > 0
    "cwd": ("seg", "cwd", "cwd_feat"),  # cwd_feat is off unless weights.cwd_feat > 0
    "at": ("seg", "at"),
    "cat": ("seg", "cat"),
    "attnfd": ("seg", "attnfd"),
}


def _union(*methods: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for m in methods for t in m))


METHODS.update(BASELINES)
METHODS.update({f"xgd+{name}": _union(METHODS["xgd"], terms) for name, terms in BASELINES.items()})
