"""Explaining a distillation: does the student look where the teacher looks? ([UniCAM], [KD-XAI])

Pure functions on tensors, then one `explanation_metrics` that runs a student and its teacher
over the validation split. Metric keys:

- expl_sal_spearman / expl_sal_pearson: per-image rank / linear correlation between the
  student's and the teacher's CAM maps (XGD's CAM method, layers and targets; both resized to
  the label size), averaged over images (the explanation alignment of [KD-XAI]).
- expl_topk_iou: IoU of the two maps' top-k% regions (k = 20 by default). Only positive pixels
  enter a region (`topk_mask`): a map with fewer positive pixels than k% has them all as its
  region, and a map with none has an empty region. One empty region against a non-empty one
  overlaps nothing (IoU 0); two empty regions have no IoU.
- expl_focus: share of the student's attribution mass inside the teacher's top-k% region
  ([KD-XAI]'s focus; a uniform student map scores k/100 when the teacher's region holds k% of the
  pixels, a student looking only there scores 1); undefined for an all-zero teacher map.
- expl_logit_spearman: mean over pixels of the Spearman correlation between student and teacher
  class-probability vectors ([KD-XAI]'s logit alignment; softmax keeps ranks, so logits are ranked).
- expl_fss: FSS of [UniCAM] = mean over batches of the bias-corrected (U-centred) squared
  distance correlation R^2 between flattened student and teacher decoder features (batches of
  at least 4 images; smaller batches are pooled until they are).
- expl_rs / expl_rs_teacher: relevance score of [UniCAM] = the same U-centred dCor R^2 between
  the student's (teacher's) decoder features and the label embedding (`label_embedding`: each
  class's share of every feature-map cell), pooled the same way: how much of the labels the
  features carry.
- with a `base` model (the student's architecture trained without KD): expl_fss_base (student
  vs base) and expl_pdcor (partial dCor of student and teacher features given the base's: the
  teacher similarity the base model does not already explain).

UniCAM ([UniCAM], github gadhane/UniCAM): `unicam_map` is the Grad-CAM of the score
R^2(P_removal(P(student), P(base)), P(target)); saving UniCAM images is not done here.
Spearman ties get average ranks (as scipy.stats.spearmanr).

Padding: val batches of different-size images are padded bottom/right (`pad_collate`: image 0,
label 255). The per-image metrics (the CAM ones and expl_logit_spearman) compare maps only over
each image's own extent (`valid_region`), and padded pixels are no CAM target, so an image
scores what it scores alone. The feature metrics (fss, rs, pdcor) see the padded feature maps.

Undefined values (NaN: a constant map has no correlation, two empty top-k regions no IoU, a
student map without positive mass or a teacher map without a region no focus) are left out of
the means (NaN if nothing is left); `expl_<metric>_n_dropped` beside each per-image mean counts
what it left out (images; pixels for expl_logit_spearman).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.constants import IGNORE_INDEX

# --------------------------------------------------------------------------- rank statistics


def rankdata(x: Tensor) -> Tensor:
    """Average ranks (1-based, float64) along the last dim, ties averaged (scipy's 'average')."""
    n = x.shape[-1]
    flat = x.reshape(-1, n)
    vals, order = flat.sort(dim=-1)
    new = torch.ones_like(vals, dtype=torch.bool)
    new[:, 1:] = vals[:, 1:] != vals[:, :-1]
    group = new.long().cumsum(dim=-1) - 1  # tie-group id of each sorted position
    pos = torch.arange(n, device=x.device).expand_as(group)
    first = torch.zeros_like(group).scatter_reduce(-1, group, pos, "amin", include_self=False)
    last = torch.zeros_like(group).scatter_reduce(-1, group, pos, "amax", include_self=False)
    avg = (first + last).double() / 2 + 1
    return torch.empty_like(avg).scatter_(-1, order, avg.gather(-1, group)).view(x.shape)


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """(N,) Pearson correlation of matching rows of (N, L); NaN where a row is constant."""
    a = a.double() - a.double().mean(dim=-1, keepdim=True)
    b = b.double() - b.double().mean(dim=-1, keepdim=True)
    den = (a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt()
    return torch.where(den > 0, (a * b).sum(-1) / den, torch.full_like(den, float("nan")))


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    return pearson_rows(rankdata(a), rankdata(b))


def topk_mask(maps: Tensor, frac: float) -> Tensor:
    """(N, L) bool: each row's top-k region, k = max(1, round(frac * L)).

    Only positive pixels can enter: CAMs are ReLU'd, so most pixels are often exactly 0 and a
    plain top-k would fill the region by tie-breaking among them. The region is every positive
    pixel >= the row's k-th largest value: with fewer than k positive pixels, all of them; with
    ties at the k-th value, all the tied pixels (so it may hold more than k). A row with no
    positive pixel gets an empty region.
    """
    k = max(1, round(frac * maps.shape[-1]))
    kth = maps.topk(k, dim=-1).values[..., -1:]
    return (maps >= kth) & (maps > 0)


def topk_iou(a: Tensor, b: Tensor, frac: float = 0.2) -> Tensor:
    """(N,) IoU of the rows' top-k regions (`topk_mask`): 0 where exactly one region is empty (no
    overlap), NaN only where both are (no map has a positive pixel)."""
    ma, mb = topk_mask(a, frac), topk_mask(b, frac)
    inter, union = (ma & mb).sum(-1).double(), (ma | mb).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def focus(s_maps: Tensor, t_maps: Tensor, frac: float = 0.2) -> Tensor:
    """(N,) share of the student's non-negative attribution mass inside the teacher's top-k region
    (`topk_mask`); NaN where the student has no positive mass or the teacher map no positive pixel."""
    s = s_maps.double().clamp_min(0)
    mass = s.sum(-1)
    region = topk_mask(t_maps, frac)
    inside = (s * region).sum(-1)
    defined = (mass > 0) & region.any(-1)
    return torch.where(defined, inside / mass.clamp_min(1e-300), torch.full_like(mass, float("nan")))


def logit_alignment(s_logits: Tensor, t_logits: Tensor) -> Tensor:
    """(B*H*W,) Spearman correlation of the per-pixel class vectors of (B, K, H, W) logits."""
    k = s_logits.shape[1]
    rows = lambda z: z.detach().movedim(1, -1).reshape(-1, k)  # noqa: E731
    return spearman_rows(rows(s_logits), rows(t_logits))


# --------------------------------------------------------------------------- distance correlation


def distance_matrix(x: Tensor, eps: float = 1e-18) -> Tensor:
    """(n, n) Euclidean distances between the rows of x flattened to (n, D), in float64.

    From the Gram matrix (no (n, n, D) tensor); eps inside the root keeps gradients finite at 0.
    """
    x = x.reshape(x.shape[0], -1).double()
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    return (d2 + eps).sqrt()


def double_centered(d: Tensor) -> Tensor:
    return d - d.mean(dim=0, keepdim=True) - d.mean(dim=1, keepdim=True) + d.mean()


def u_centered(d: Tensor) -> Tensor:
    """U-centring (UniCAM eq. 2, Szekely & Rizzo 2014): the bias-corrected P matrix, zero diagonal."""
    n = d.shape[0]
    if n < 4:
        raise ValueError(f"U-centred distance statistics need at least 4 samples, got {n}")
    p = d - d.sum(dim=0, keepdim=True) / (n - 2) - d.sum(dim=1, keepdim=True) / (n - 2) + d.sum() / ((n - 1) * (n - 2))
    return p - torch.diag_embed(torch.diagonal(p))


def bracket(a: Tensor, b: Tensor) -> Tensor:
    """<A, B> = sum_{i != j} A_ij B_ij / (n (n - 3)) for U-centred A, B (UniCAM eq. 4)."""
    n = a.shape[0]
    return (a * b).sum() / (n * (n - 3))


def p_removal(a: Tensor, c: Tensor) -> Tensor:
    """A minus its projection on C (UniCAM eq. 3): what A holds that C does not."""
    den = bracket(c, c)
    coef = torch.where(den > 0, bracket(a, c) / den.clamp_min(1e-300), torch.zeros_like(den))
    return a - coef * c


def u_correlation(a: Tensor, b: Tensor) -> Tensor:
    """<A, B> / sqrt(<A, A> <B, B>); 0 when either is degenerate (as the dcor package)."""
    den = bracket(a, a) * bracket(b, b)
    return torch.where(den > 0, bracket(a, b) / den.clamp_min(1e-300).sqrt(), torch.zeros_like(den))


def dcor_u(x: Tensor, y: Tensor) -> Tensor:
    """Bias-corrected squared distance correlation R^2 (dcor.u_distance_correlation_sqr)."""
    return u_correlation(u_centered(distance_matrix(x)), u_centered(distance_matrix(y)))


def dcor_v(x: Tensor, y: Tensor) -> Tensor:
    """Distance correlation with double centring, the V-statistic (dcor.distance_correlation)."""
    a, b = double_centered(distance_matrix(x)), double_centered(distance_matrix(y))
    den = ((a * a).mean() * (b * b).mean()).sqrt()
    return torch.where(den > 0, ((a * b).mean() / den.clamp_min(1e-300)).clamp_min(0).sqrt(), torch.zeros_like(den))


def pdcor(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """Partial distance correlation of x and y given z (dcor.partial_distance_correlation)."""
    c = u_centered(distance_matrix(z))
    return u_correlation(p_removal(u_centered(distance_matrix(x)), c), p_removal(u_centered(distance_matrix(y)), c))


def unicam_map(acts: Tensor, feats: Tensor, other_feats: Tensor, target: Tensor) -> Tensor:
    """(B, h, w) UniCAM: Grad-CAM at `acts` of R^2(P_removal(P(feats), P(other_feats)), P(target)).

    `feats` must be computed from `acts` (one forward); `other_feats` is the other model's
    features (base model for distilled features, or swap the roles for residual ones);
    `target` (B, ...) encodes the labels, e.g. class-area fractions per image.
    """
    removed = p_removal(u_centered(distance_matrix(feats)), u_centered(distance_matrix(other_feats.detach())))
    score = u_correlation(removed, u_centered(distance_matrix(target.detach().float())))
    grads = torch.autograd.grad(score, acts, retain_graph=True)[0]
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).clamp_min(0).detach()


# --------------------------------------------------------------------------- the runner


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients (CAMs differentiate w.r.t. tapped leaves only); restored after."""
    was, flags = model.training, [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train(was)
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _forward(model: nn.Module, x: Tensor, cam_layer: str, feat_layer: str) -> tuple[Tensor, Tensor, Tensor]:
    from trainables.taps import tap

    with tap(model, {"cam": cam_layer}, leaf=True) as cam, tap(model, {"feat": feat_layer}) as feat:
        logits = model(x)
    return logits, cam["cam"], feat["feat"]


def label_embedding(y: Tensor, num_classes: int, size: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, H, W) labels -> (B, K*h*w): each class's share of the pixels in each cell of an h x w
    grid (ignored pixels count for no class). RS's label side, at the features' resolution."""
    valid = y != ignore_index
    onehot = F.one_hot(torch.where(valid, y, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot * valid[:, None], size).flatten(1)


def _maps(logits: Tensor, acts: Tensor, masks: Tensor, method: str, size: tuple[int, int]) -> Tensor:
    from trainables.saliency import cam_maps

    m = cam_maps(logits, acts, masks, method, reduce="sum", create_graph=False).detach()
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False).flatten(1)


def valid_region(x: Tensor, y: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(B, H, W) bool: each image's own extent inside a padded batch.

    `pad_collate` pads bottom and right with image 0 in every channel and label `ignore_index`;
    an image ends at its last row (column) holding a pixel that is not both. (A real pixel is 0 in
    every channel only if each 8-bit value equals the normalisation mean, which no ImageNet mean
    is; an image without any such pixel is treated as empty.)
    """
    content = (x != 0).any(dim=1) | (y != ignore_index)
    h, w = content.shape[-2:]
    rows, cols = content.any(dim=-1), content.any(dim=-2)  # (B, H), (B, W)
    last = lambda m, n: torch.where(m.any(-1), n - m.flip(-1).int().argmax(-1), 0)  # noqa: E731
    hi, wi = last(rows, h), last(cols, w)
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    return (r.view(1, -1, 1) < hi.view(-1, 1, 1)) & (c.view(1, 1, -1) < wi.view(-1, 1, 1))


def _extents(valid: Tensor) -> dict[tuple[int, int], list[int]]:
    """(h, w) of each image's valid rectangle -> the images of that size (one host sync)."""
    sizes = torch.stack([valid.any(-1).sum(-1), valid.any(-2).sum(-1)], 1).tolist()
    out: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        out.setdefault((h, w), []).append(i)
    return out


PER_IMAGE = ("sal_spearman", "sal_pearson", "topk_iou", "focus")  # one value per image
PER_PIXEL = ("logit_spearman",)  # one value per valid pixel


def map_metrics(ms: Tensor, mt: Tensor, valid: Tensor, topk: float) -> dict[str, Tensor]:
    """Per-image CAM metrics of (B, H, W) student / teacher maps, each image over its `valid`
    rectangle only (images in input order)."""
    out: dict[str, list[Tensor]] = {k: [] for k in PER_IMAGE}
    order: list[int] = []
    for (h, w), idx in _extents(valid).items():
        a, b = ms[idx, :h, :w].flatten(1), mt[idx, :h, :w].flatten(1)
        order += idx
        if h * w == 0:  # an empty image: nothing to compare
            nan = torch.full((len(idx),), float("nan"), dtype=torch.float64, device=ms.device)
            for k in PER_IMAGE:
                out[k].append(nan)
            continue
        out["sal_spearman"].append(spearman_rows(a, b))
        out["sal_pearson"].append(pearson_rows(a, b))
        out["topk_iou"].append(topk_iou(a, b, topk))
        out["focus"].append(focus(a, b, topk))
    back = torch.argsort(torch.tensor(order, device=ms.device))
    return {k: torch.cat(v)[back] for k, v in out.items()}


class _Means:
    """Running means of the finite entries per key and counts of the others, kept on the device
    (one sync at the end)."""

    def __init__(self) -> None:
        self.sums: dict[str, list[Tensor]] = {}

    def add(self, key: str, values: Tensor) -> None:
        v = values.detach().flatten().double()
        ok = torch.isfinite(v)
        row = torch.stack([torch.where(ok, v, 0).sum(), ok.sum().double(), (~ok).sum().double()])
        self.sums.setdefault(key, []).append(row)

    def _totals(self, key: str) -> list[float]:
        return torch.stack(self.sums[key]).sum(dim=0).tolist() if key in self.sums else [0.0, 0.0, 0.0]

    def mean(self, key: str) -> float:
        total, count, _ = self._totals(key)
        return total / count if count else float("nan")

    def dropped(self, key: str) -> int:
        """How many entries of `key` were not finite (left out of its mean)."""
        return int(self._totals(key)[2])


def explanation_metrics(
    student: nn.Module,
    teacher: nn.Module,
    loader: Iterable,
    cfg: dict,
    max_batches: int | None = None,
    topk: float = 0.2,
    base: nn.Module | None = None,
) -> dict[str, float]:
    """Explanation metrics of `student` against `teacher` over (images, labels) batches.

    cfg: the trial config or its `distill` section (cam, cam_target, cam_classes, student_layer,
    teacher_layer, and the dataset's `background` index that trainables.saliency.with_background
    adds, which cam_classes 'foreground' needs). Models are put in eval mode and restored; nothing is trained.
    """
    from trainables.losses.roles import decoder_output
    from trainables.models import default_cam_layer
    from trainables.saliency import cam_masks

    distill = cfg.get("distill", cfg)
    method = distill.get("cam") or "gradcam"
    if not 0 < topk <= 1:
        raise ValueError(f"topk = {topk} is not allowed; use a fraction in (0, 1]")
    models = {"s": student, "t": teacher, **({"b": base} if base is not None else {})}
    layers = {
        "s": distill.get("student_layer") or default_cam_layer(student),
        "t": distill.get("teacher_layer") or default_cam_layer(teacher),
        "b": default_cam_layer(base) if base is not None else "",
    }
    device = next(student.parameters()).device
    acc = _Means()
    pool: dict[str, list[Tensor]] = {k: [] for k in [*models, "y"]}

    def flush() -> None:
        f = {k: torch.cat(v) for k, v in pool.items()}
        acc.add("fss", dcor_u(f["s"], f["t"]))
        acc.add("rs", dcor_u(f["s"], f["y"]))
        acc.add("rs_teacher", dcor_u(f["t"], f["y"]))
        if base is not None:
            acc.add("fss_base", dcor_u(f["s"], f["b"]))
            acc.add("pdcor", pdcor(f["s"], f["t"], f["b"]))
        for v in pool.values():
            v.clear()

    with ExitStack() as stack, torch.enable_grad():
        for m in models.values():
            stack.enter_context(_inference(m))
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            out = {k: _forward(m, x, layers[k], decoder_output(m)) for k, m in models.items()}
            (s_logits, s_acts, s_feat), (t_logits, t_acts, _) = out["s"], out["t"]
            valid = valid_region(x, y)
            masks = cam_masks(y, t_logits.detach(), s_logits.shape[1], distill)
            masks = masks * valid[:, None]  # padding is no CAM target (masks match the logits' size)
            size = tuple(y.shape[-2:])
            ms, mt = _maps(s_logits, s_acts, masks, method, size), _maps(t_logits, t_acts, masks, method, size)
            for k, v in map_metrics(ms.view(-1, *size), mt.view(-1, *size), valid, topk).items():
                acc.add(k, v)
            acc.add("logit_spearman", logit_alignment(s_logits, t_logits)[valid.flatten()])
            for k, (_, _, feat) in out.items():
                pool[k].append(feat.detach().flatten(1))
            pool["y"].append(label_embedding(y, s_logits.shape[1], tuple(s_feat.shape[-2:])))
            if sum(len(p) for p in pool["s"]) >= 4:
                flush()
    keys = ["sal_spearman", "sal_pearson", "topk_iou", "logit_spearman", "focus", "fss", "rs", "rs_teacher"]
    keys += ["fss_base", "pdcor"] if base is not None else []
    out = {f"expl_{k}": acc.mean(k) for k in keys}
    return out | {f"expl_{k}_n_dropped": acc.dropped(k) for k in (*PER_IMAGE, *PER_PIXEL)}
