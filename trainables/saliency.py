"""XGD's saliency term: differentiable CAMs of teacher and student for segmentation targets.

Target (pytorch-grad-cam's SemanticSegmentationTarget): score_k = sum over pixels of
logits[:, k] * mask_k, with mask_k the one-hot map of class k in the ground truth (ignore pixels
in no mask) or in the teacher's argmax. `cam_classes` picks the classes that enter the target:
`all`, or `foreground`: all but the dataset's declared background class (`trainables.data
.background_index`, any index; a dataset that declares none cannot use `foreground`).

Each image's map is its own. The teacher is in eval mode, so its images never interact. The
student is in train mode, and BatchNorm after its CAM layer normalises with batch statistics,
whose ordinary backward mixes the images; its CAM gradient is therefore taken inside
`trainables.batchnorm.constant_batch_stats()`, where those statistics are constants (the
student's BatchNorms after the CAM layer are `CamBatchNorm2d`, see `trainables.cam_path`). The
map of image i is then exactly the map of an eval-mode copy of the student whose running
statistics are this batch's statistics, while the forward values and every other loss term's
gradient stay those of train-mode BatchNorm. Per-image scores are then independent, so one
autograd.grad of the batch sum gives every image's own gradient.

`reduce='sum'` (default) gives one map per image, from the gradient of sum_k score_k: where the
model looks to produce the labelled segmentation as a whole. It costs one backward for the whole
batch whatever the number of classes K, and it is a gradient the student can follow.

`reduce='per_class'` gives K maps per image (B, K, h, w) with ONE batched vector-Jacobian
product (autograd.grad(..., is_grads_batched=True)); it supports create_graph for smp's
DeepLabV3+/PSPNet in train mode (tests/test_cams.py checks it). Cost and memory grow with K.
Each of the K maps is normalised on its own; a class absent from an image (or from the
teacher's argmax, or left out by `cam_classes`) has zero maps on both sides and adds 0 to the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from trainables.batchnorm import DEFAULT_CAM_BN_GRAD, constant_batch_stats
from trainables.cams import cam, check_method

NORM_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: img / (1e-7 + max)


def _one_hot(index: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) long -> (B, K, H, W) float; values outside [0, K) (ignore = 255) match no class.

    A comparison with arange rather than F.one_hot: no range check, hence no host sync.
    """
    classes = torch.arange(num_classes, device=index.device).view(1, -1, 1, 1)
    return (index.unsqueeze(1) == classes).float()


def _gt_masks(labels: Tensor, t_logits: Tensor | None, num_classes: int) -> Tensor:
    return _one_hot(labels, num_classes)


def _teacher_masks(labels: Tensor, t_logits: Tensor | None, num_classes: int) -> Tensor:
    # the teacher's prediction exists at every pixel (as for PI), so ignore pixels are kept
    if t_logits is None:
        raise ValueError("cam_target 'teacher' needs teacher logits; none were given")
    return _one_hot(t_logits.detach().argmax(dim=1), num_classes)


MASKS: dict[str, Callable[[Tensor, Tensor | None, int], Tensor]] = {
    "gt": _gt_masks,
    "teacher": _teacher_masks,
}


def _foreground(num_classes: int, background: int | None) -> Tensor:
    if background is None:
        raise ValueError(
            "cam_classes 'foreground' needs a background class and this dataset declares none: "
            "set data.background or choose distill.cam_classes: all"
        )
    if not 0 <= background < num_classes:
        raise ValueError(f"background class {background} is not one of the {num_classes} classes")
    keep = torch.ones(num_classes)
    keep[background] = 0
    return keep


# which classes enter the CAM target: a (K,) weight per class, 0 drops a class, from (K, background
# index or None). Default foreground: with all classes the target is mostly background pixels and
# so is the map (docs/guide/specs.md, "cam_classes").
DEFAULT_CAM_CLASSES = "foreground"
CAM_CLASSES: dict[str, Callable[[int, int | None], Tensor]] = {
    "all": lambda k, background: torch.ones(k),
    "foreground": _foreground,
}


def target_classes(classes: str, num_classes: int, background: int | None) -> Tensor:
    """(K,) 0/1 weights of the classes that enter the CAM target under `cam_classes=classes`."""
    if classes not in CAM_CLASSES:
        raise ValueError(f"unknown cam_classes {classes!r}; allowed: {', '.join(CAM_CLASSES)}")
    return CAM_CLASSES[classes](num_classes, background)


def class_masks(
    labels: Tensor,
    t_logits: Tensor | None,
    num_classes: int,
    source: str = "gt",
    classes: str = "all",
    background: int | None = None,
) -> Tensor:
    """(B, K, H, W) float one-hot class masks from labels ('gt') or the teacher's argmax ('teacher');
    `classes='foreground'` zeroes the mask of class `background` (the dataset's declared one)."""
    if source not in MASKS:
        raise ValueError(f"unknown cam_target {source!r}; allowed: {', '.join(MASKS)}")
    keep = target_classes(classes, num_classes, background)
    masks = MASKS[source](labels, t_logits, num_classes)
    if classes == "all":
        return masks
    return masks * keep.to(masks.device).view(1, -1, 1, 1)


def _scores(logits: Tensor, masks: Tensor) -> Tensor:
    """(K,) segmentation-target scores summed over the batch."""
    if logits.shape != masks.shape:
        raise ValueError(f"CAM target masks {tuple(masks.shape)} do not match logits {tuple(logits.shape)}")
    return (logits.float() * masks).sum(dim=(0, 2, 3))


def target_grads(
    logits: Tensor, acts: Tensor, masks: Tensor, reduce: str = "sum", create_graph: bool = False
) -> Tensor:
    """Gradients of the segmentation targets at `acts`: (B, C, h, w) for 'sum', (K, B, C, h, w) for 'per_class'.

    The graph behind `logits` is kept either way (other loss terms still need it).
    """
    scores = _scores(logits, masks)
    if reduce == "sum":
        return torch.autograd.grad(scores.sum(), acts, retain_graph=True, create_graph=create_graph)[0]
    if reduce == "per_class":
        eye = torch.eye(scores.shape[0], device=scores.device, dtype=scores.dtype)
        return torch.autograd.grad(
            scores, acts, grad_outputs=eye, is_grads_batched=True, retain_graph=True, create_graph=create_graph
        )[0]
    raise ValueError(f"unknown cam_reduce {reduce!r}; allowed: sum, per_class")


def cam_maps(
    logits: Tensor,
    acts: Tensor,
    masks: Tensor,
    method: str = "gradcam",
    reduce: str = "sum",
    create_graph: bool = False,
) -> Tensor:
    """(B, M, h, w) CAMs at `acts` (M = 1 for 'sum', K for 'per_class'); see the module docstring.

    `create_graph=True` keeps the gradients in the graph so a loss on the maps trains the model.
    """
    check_method(method)
    grads = target_grads(logits, acts, masks, reduce, create_graph)
    if reduce == "sum":
        return cam(method, acts, grads).unsqueeze(1)
    k, b, c, h, w = grads.shape
    grads = grads.transpose(0, 1).reshape(b * k, c, h, w)
    acts_k = acts.unsqueeze(1).expand(b, k, c, h, w).reshape(b * k, c, h, w)
    return cam(method, acts_k, grads).view(b, k, h, w)


def normalize_maps(maps: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Per-map min-max to [0, 1] over the last two dims; a constant map becomes 0 (no NaN)."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


def saliency_mse(s_maps: Tensor, t_maps: Tensor) -> Tensor:
    """Mean squared difference of normalised maps, both resized (bilinear) to the larger size."""
    size = (max(s_maps.shape[-2], t_maps.shape[-2]), max(s_maps.shape[-1], t_maps.shape[-1]))

    def fit(m: Tensor) -> Tensor:
        return m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    return F.mse_loss(normalize_maps(fit(s_maps)), normalize_maps(fit(t_maps)))


def cam_classes_of(cfg: dict) -> str:
    """The distill config's `cam_classes` (the spec always sets it; partial configs get the default)."""
    return cfg.get("cam_classes") or DEFAULT_CAM_CLASSES


def with_background(config: dict) -> dict:
    """The trial config's distill section as the CAM code reads it: plus `background`, the index of
    the dataset's declared background class (None: it has none). The spec holds the dataset's
    facts in `data`; the CAM target needs this one, and nothing else of `data`."""
    from trainables.data import background_index

    return {**config["distill"], "background": background_index(config["data"])}


def background_of(cfg: dict) -> int | None:
    """The background index `with_background` put in a distill config; a config without one is
    refused rather than assumed to have class 0 as background."""
    if "background" not in cfg:
        raise ValueError(
            "the CAM config has no 'background' (the dataset's background class index or None); "
            "build it with trainables.saliency.with_background(trial config)"
        )
    return cfg["background"]


def cam_masks(labels: Tensor, t_logits: Tensor | None, num_classes: int, cfg: dict) -> Tensor:
    """The CAM target's class masks for a distill config (cam_target, cam_classes, background)."""
    classes = cam_classes_of(cfg)
    background = None if classes == "all" else background_of(cfg)
    return class_masks(labels, t_logits, num_classes, cfg.get("cam_target") or "gt", classes, background)


def saliency_maps(step, cfg: dict) -> tuple[Tensor, Tensor]:
    """(student maps with a graph, detached teacher maps) of L_sa for one step; see the module docstring.

    cfg keys (distill): cam (method), cam_target ('gt' | 'teacher'), cam_classes ('all' | 'foreground'),
    cam_reduce ('sum' | 'per_class'), background (index or None; `with_background`, needed by 'foreground').
    cam_bn_grad ('constant' | 'exact': how the CAM gradient's batch statistics are differentiated).
    Cached teacher maps (`step.t_cams`, trainables.teacher_step) are used as they are: they are
    constants either way.
    """
    method = cfg.get("cam") or "gradcam"
    reduce = cfg.get("cam_reduce") or "sum"
    masks = cam_masks(step.labels, step.t_logits, step.s_logits.shape[1], cfg)
    t_maps = getattr(step, "t_cams", None)
    if t_maps is None:
        t_maps = teacher_maps(step.t_logits, step.t_feats["cam"], masks, cfg)
    with torch.enable_grad():
        with record_function("cam.student"), constant_batch_stats(cfg.get("cam_bn_grad") or DEFAULT_CAM_BN_GRAD):
            s_maps = cam_maps(step.s_logits, step.s_feats["cam"], masks, method, reduce, create_graph=True)
    return s_maps, t_maps


def teacher_maps(t_logits: Tensor, acts: Tensor, masks: Tensor, cfg: dict) -> Tensor:
    """The teacher's detached CAMs at its CAM-layer leaf `acts` (per image: the teacher is in eval mode)."""
    with torch.enable_grad(), record_function("cam.teacher"):
        method, reduce = cfg.get("cam") or "gradcam", cfg.get("cam_reduce") or "sum"
        return cam_maps(t_logits, acts, masks, method, reduce, create_graph=False).detach()


def xgd_saliency_loss(step, cfg: dict) -> Tensor:
    """L_sa of XGD for one step (trainables.losses.Step): teacher maps fixed, student maps trainable."""
    s_maps, t_maps = saliency_maps(step, cfg)
    with torch.enable_grad():
        loss = saliency_mse(s_maps, t_maps)
    return loss
