"""Saliency galleries like the paper's Figures 2 and 5: per validation image, the image, ground
truth, teacher and student predictions, and teacher and student CAMs (the trial's CAM method and
layers, normalised to [0, 1]). Rebuilt from a trial's MLflow params and its weights-only
checkpoint; the dataset must be readable on this machine (the synthetic set always is).

With a base trial (the student's architecture trained without KD, from the same sweep) a last
column shows UniCAM's distilled features [UniCAM]: where the student's CAM layer carries what
its decoder features share with the labels beyond what the base model's features already do
(`trainables.explain.unicam_map`; it needs at least 4 images)."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.errors import UserError
from orchestrator.tracking.reader import PARAM
from trainables.constants import IMAGENET_MEAN, IMAGENET_STD

COLUMNS = ("image", "ground truth", "teacher", "student", "teacher CAM", "student CAM")
UNICAM = "UniCAM (distilled)"


def config_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The trainer config from a trials-table row: `params.a.b` -> {"a": {"b": value}}, values
    read back as Python literals where they are ones ('None', '(0.75, 1.5)', '{}')."""
    from orchestrator.spec.train import TrainSpec

    nested: dict[str, Any] = {}
    for key, value in row.items():
        if not key.startswith(PARAM):
            continue
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        *path, leaf = key.removeprefix(PARAM).split(".")
        node = nested
        for p in path:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
    try:
        return TrainSpec.model_validate(nested).model_dump()
    except Exception:  # an older or newer spec: use the params as logged
        return nested


def samples(data_cfg: dict, classes: list[str], n: int) -> tuple[Tensor, Tensor]:
    """The first `n` validation images (normalised) and masks, padded to a common size."""
    from trainables.data import build_dataset, class_names, pad_collate

    if list(class_names(data_cfg)) != list(classes):
        raise UserError(f"the checkpoint's classes {classes} are not the dataset's {class_names(data_cfg)}")
    ds = build_dataset(data_cfg, data_cfg.get("val_split", "val"), train=False)
    return pad_collate([ds[i] for i in range(min(n, len(ds)))])


def cam_config(cfg: dict) -> dict:
    """The trial's distill section with its dataset's background class (trainables.saliency
    .with_background). A dataset without one never ran cam_classes 'foreground' (the spec refuses
    it wherever a target is built), so such a run's CAMs are drawn over all classes."""
    from trainables.saliency import with_background

    distill = with_background(cfg)
    if distill["background"] is None and distill.get("cam_classes") == "foreground":
        distill["cam_classes"] = "all"
    return distill


def predict_with_cam(
    model: nn.Module, layer: str, x: Tensor, y: Tensor, t_logits: Tensor | None, distill: dict
) -> tuple[Tensor, Tensor]:
    """(logits, CAMs normalised to [0, 1] at input size) in eval mode; no parameter gradients.
    `distill`: as `cam_config` gives it."""
    from trainables.saliency import cam_maps, cam_masks, normalize_maps
    from trainables.taps import tap

    target = distill.get("cam_target") or "gt"
    if target == "teacher" and t_logits is None:
        target = "gt"
    with torch.enable_grad(), tap(model, {"cam": layer}, leaf=True) as feats:
        logits = model(x)
        masks = cam_masks(y, t_logits, logits.shape[1], {**distill, "cam_target": target})
        maps = cam_maps(logits, feats["cam"], masks, distill.get("cam") or "gradcam", "sum")
    maps = F.interpolate(maps.detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.detach(), normalize_maps(maps)[:, 0]


def unicam_distilled(student: nn.Module, base: nn.Module, layer: str, x: Tensor, y: Tensor, k: int) -> Tensor:
    """(B, H, W) UniCAM maps in [0, 1] at input size: Grad-CAM at the student's `layer` of the
    distance correlation between its decoder features, with the base model's removed, and the
    labels (class shares per 8 x 8 cell). Eval mode, no parameter gradients."""
    from trainables.explain import _inference, label_embedding, unicam_map
    from trainables.losses import decoder_output
    from trainables.saliency import normalize_maps
    from trainables.taps import tap

    if x.shape[0] < 4:
        raise UserError(f"UniCAM needs at least 4 images (U-centred distance matrices); got {x.shape[0]}")
    with _inference(student), _inference(base):
        with torch.no_grad(), tap(base, {"feat": decoder_output(base)}) as b:
            base(x)
        with (
            torch.enable_grad(),
            tap(student, {"cam": layer}, leaf=True) as a,
            tap(student, {"feat": decoder_output(student)}) as f,
        ):
            student(x)
            maps = unicam_map(a["cam"], f["feat"].flatten(1), b["feat"].flatten(1), label_embedding(y, k, (8, 8)))
    maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    # the gradients of a correlation are tiny (1e-9 here): rescale before normalize_maps' epsilon
    scale = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny).view(-1, 1, 1, 1)
    return normalize_maps(maps / scale)[:, 0]


def gallery(row: dict[str, Any], path: Path, n: int = 4, base_row: dict[str, Any] | None = None) -> Path:
    """Write the PNG grid for one trial (rows = images, columns = COLUMNS, plus UNICAM with a base trial)."""
    from orchestrator.results.export import checkpoint_file, load_student
    from trainables.checkpoint import CheckpointError
    from trainables.models import default_cam_layer
    from trainables.setup import load_teacher

    cfg = config_from_row(row)
    student, state = load_student(checkpoint_file(row))
    classes = list(state["classes"])
    distill = cam_config(cfg)
    teacher = None
    t_ckpt = (cfg.get("teacher") or {}).get("checkpoint")
    if t_ckpt:
        try:
            teacher = load_teacher({"checkpoint": t_ckpt}, classes, torch.device("cpu"))
        except (CheckpointError, ValueError) as e:
            raise UserError(f"teacher of {row['run_name']}: {str(e).splitlines()[0]}") from None
    x, y = samples(cfg["data"], classes, n)
    t_logits = t_maps = None
    if teacher is not None:
        t_logits, t_maps = predict_with_cam(
            teacher, distill.get("teacher_layer") or default_cam_layer(teacher), x, y, None, distill
        )
    s_logits, s_maps = predict_with_cam(
        student, distill.get("student_layer") or default_cam_layer(student), x, y, t_logits, distill
    )
    inp = state.get("input") or {}
    images = denormalize(x, inp.get("mean", IMAGENET_MEAN), inp.get("std", IMAGENET_STD))
    panels = [images, y, None if t_logits is None else t_logits.argmax(1), s_logits.argmax(1), t_maps, s_maps]
    columns = list(COLUMNS)
    if base_row is not None:
        base, _ = load_student(checkpoint_file(base_row))
        panels.append(
            unicam_distilled(
                student, base, distill.get("student_layer") or default_cam_layer(student), x, y, len(classes)
            )
        )
        columns.append(UNICAM)
    title = f"{row['run_name']} ({distill.get('cam') or 'gradcam'})"
    return draw(panels, classes, images, path, title + (f"; base {base_row['run_name']}" if base_row else ""), columns)


def denormalize(x: Tensor, mean, std) -> Tensor:
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1).permute(0, 2, 3, 1)


def colorize(mask: Tensor, k: int):
    """Class ids -> RGB (matplotlib's tab10, tab20 beyond 10 classes); ignore pixels black."""
    import matplotlib
    import numpy as np

    cmap, n = (matplotlib.colormaps["tab10"], 10) if k <= 10 else (matplotlib.colormaps["tab20"], 20)
    palette = np.array([cmap(i % n)[:3] for i in range(k)] + [(0.0, 0.0, 0.0)])
    m = mask.numpy().copy()
    m[(m < 0) | (m >= k)] = k
    return palette[m]


def draw(
    panels: list, classes: list[str], images: Tensor, path: Path, title: str, columns: Sequence[str] = COLUMNS
) -> Path:
    from orchestrator.results.plots import _plt, _save

    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.1 * len(columns), 2.1 * n + 0.5), squeeze=False)
    for j, name in enumerate(columns):
        axes[0][j].set_title(name, fontsize=9)
        for i in range(n):
            ax, panel = axes[i][j], panels[j]
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is None:
                ax.text(0.5, 0.5, "no teacher", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            elif j == 0:
                ax.imshow(panel[i].numpy())
            elif j in (1, 2, 3):
                ax.imshow(colorize(panel[i], len(classes)), interpolation="nearest")
            else:
                ax.imshow(images[i].numpy())
                ax.imshow(panel[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    from matplotlib.patches import Patch

    colors = colorize(torch.arange(len(classes)).view(1, -1), len(classes))[0]
    fig.legend(
        handles=[Patch(color=c, label=name) for c, name in zip(colors, classes)],
        loc="lower center",
        ncol=min(len(classes), 6),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path, plt)
