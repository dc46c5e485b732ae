"""The trials' `teacher.cache` as a sweep resolves it, and what `--dry-run` says about the
teacher-output cache (trainables.teacher_outputs): whether the trials get it, which of the sweep's
methods it serves (a method whose terms read teacher features runs the teacher live), and its size
per seed: items x epochs x bytes per item, the bytes from the teacher's tensor shapes at the crop
(one forward on PyTorch's meta device: no weights, no compute) in the cache's dtype."""

from __future__ import annotations

import math
import os

from orchestrator.spec.paths import is_uri
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.train import TeacherCacheSpec

HEADER_BYTES = 100  # an entry's header (trainables.teacher_outputs.encode), about


def _values(spec: SweepSpec, key: str, default) -> list:
    p = spec.space.get(key)
    return list(p.values) if p is not None and p.values else [default]


def teacher_cache(spec: SweepSpec) -> dict:
    """The trials' `teacher.cache`: on unless the spec turns it off or has no local folder for it,
    in an absolute folder (trials run in folders of their own), <results>/teacher_outputs unless
    the spec names one."""
    cache = spec.teacher.cache if spec.teacher else TeacherCacheSpec()
    path = cache.path or os.path.join(spec.results, "teacher_outputs")
    if is_uri(path):
        return {**cache.model_dump(), "enabled": False, "path": None}
    return {**cache.model_dump(), "enabled": cache.enabled is not False, "path": os.path.abspath(path)}


def method_lines(spec: SweepSpec) -> list[str]:
    """Per distillation method of the sweep: cached (what) or live (which terms read features)."""
    from trainables.losses import active_terms

    out = []
    for method in _values(spec, "distill.method", spec.train.distill.method):
        terms = active_terms({**spec.train.distill.model_dump(), "method": method}, True)
        features = [n for n, t, _ in terms if t.needs_teacher and t.teacher_taps is not None and n != "sa"]
        if features:
            out.append(f"{method}: live teacher ({', '.join(features)} read its features)")
        elif any(t.needs_teacher for _, t, _ in terms):
            out.append(f"{method}: cached logits" + (" and CAMs" if any(n == "sa" for n, _, _ in terms) else ""))
        else:
            out.append(f"{method}: no teacher")
    return out


def teacher_model(spec: SweepSpec) -> dict | None:
    if spec.teacher.recipe is not None:
        return {"arch": "deeplabv3plus", "encoder": "resnet18", **(spec.teacher.recipe.get("model") or {})}
    from trainables import checkpoint

    try:
        return checkpoint.load(spec.teacher.checkpoint)["model_cfg"]
    except Exception:
        return None


def entry_bytes(spec: SweepSpec, model_cfg: dict) -> tuple[int, int]:
    """(bytes of one item's stored logits, bytes of one item's CAMs of one CAM setting)."""
    import torch

    from trainables.data import class_names
    from trainables.models import default_cam_layer, model_from_config
    from trainables.teacher_outputs import DTYPES
    from trainables.teacher_step import head_split

    k = len(class_names(spec.train.data.model_dump()))
    with torch.device("meta"):
        model = model_from_config(model_cfg, k).eval()
    capture, _ = head_split(model)
    shapes: dict = {}
    layer = spec.train.distill.teacher_layer or default_cam_layer(model)
    for name, mod in (("z", capture or model), ("cam", model.get_submodule(layer))):
        mod.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    with torch.no_grad():
        model(torch.zeros(1, 3, spec.train.data.crop, spec.train.data.crop, device="meta"))
    size = DTYPES[spec.teacher.cache.dtype].itemsize
    per_cam = (k if spec.train.distill.cam_reduce == "per_class" else 1) * math.prod(shapes["cam"][-2:])
    return HEADER_BYTES + size * math.prod(shapes["z"][1:]), HEADER_BYTES + size * per_cam


def train_items(spec: SweepSpec) -> int | None:
    from trainables.data import KINDS

    d = spec.train.data
    try:
        n = len(KINDS[d.kind].source(d.model_dump(), d.train_split))
    except Exception:  # a missing dataset: the dry run says so on its dataset line
        return None
    steps = spec.train.run.max_steps_per_epoch
    return min(n, steps * d.batch_size) if steps else n


def describe(spec: SweepSpec, cache: dict) -> str:
    """The dry run's line on the teacher-output cache (`cache`: the trials' teacher.cache)."""
    if spec.teacher is None:
        return "no teacher"
    if not cache["enabled"]:
        return "off (teacher.cache.enabled: false, or its folder is not local): every trial runs the teacher"
    text = f"on, {cache['path']} (max {cache['max_gb']:g} GB, {cache['dtype']}); " + "; ".join(method_lines(spec))
    model, items = teacher_model(spec), train_items(spec)
    if model is None or items is None:
        return text + "; size: unknown until the teacher checkpoint and the dataset exist"
    logits, cam = entry_bytes(spec, model)
    uses_cam = any("CAMs" in line for line in method_lines(spec))
    cams = len(_values(spec, "distill.cam", spec.train.distill.cam)) if uses_cam else 0
    per_item = logits + cams * cam
    total = items * spec.max_epochs * per_item
    return text + (
        f"; size per seed: {items} items x {spec.max_epochs} epochs x {per_item / 1e3:.1f} kB "
        f"(logits {logits / 1e3:.1f} kB + {cams} CAM setting(s) x {cam / 1e3:.1f} kB) = {total / 1e9:.3f} GB"
    )
