"""The frozen teacher's part of a training step: live, or from the output cache
(trainables.teacher_outputs) for the items it holds.

Which methods it serves: the terms that read the teacher's logits only (no teacher taps: PI, CWD
on logits, SKD's holistic term) and XGD's saliency term, whose teacher CAM is cached per CAM
setting. A term that taps teacher features (CWD on features, AT, CAT, AttnFD, SKD's pairwise
term) makes the whole step run the teacher live (`cacheable`).

Logits are stored before the segmentation head's upsampling (16x fewer bytes for DeepLabV3+) and
the rest of the head (`head[1:]`: upsampling, identity activation) is applied on load, to the
whole batch, in the live path too, so hits and misses give the same values
(tests/test_teacher_outputs.py checks replay == live forward). On a batch with some misses, the
teacher runs on the missing items only, and writes their entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables.saliency import cam_masks, teacher_maps
from trainables.taps import tap
from trainables.teacher_outputs import OutputStore, cam_key


def cacheable(terms) -> bool:
    """Whether every active teacher term reads only what the cache holds (logits, XGD's CAMs)."""
    return all(not t.needs_teacher or t.teacher_taps is None or name == "sa" for name, t, _ in terms)


def head_split(teacher: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """(module whose output is stored, the replay that turns it into logits): smp's head is
    Sequential(conv, upsampling, activation): store the conv's output, replay the rest. Any other
    model: store the logits themselves (replay is the identity)."""
    head = getattr(teacher, "segmentation_head", None)
    if isinstance(head, nn.Sequential) and len(head) >= 2 and isinstance(head[0], nn.Conv2d):
        return head[0], nn.Sequential(*list(head)[1:])
    return None, nn.Identity()


@dataclass
class TeacherCache:
    store: OutputStore
    capture: nn.Module | None
    replay: nn.Module
    cam_what: str | None  # "cam-<key>" when the saliency term is on


def make_cache(store: OutputStore | None, teacher, terms, distill: dict, t_leaf: dict) -> TeacherCache | None:
    """The step's cache, or None when there is no store or a term needs the teacher's features."""
    if store is None or teacher is None or not cacheable(terms):
        return None
    capture, replay = head_split(teacher)
    cam_what = f"cam-{cam_key(distill, t_leaf['cam'])}" if "cam" in t_leaf else None
    return TeacherCache(store, capture, replay, cam_what)


def live_teacher(tr, x: Tensor) -> tuple[Tensor, dict]:
    """The teacher's logits and taps on `x` (a graph only from its CAM-layer leaves)."""
    with (
        torch.set_grad_enabled(bool(tr.t_leaf)),
        tap(tr.teacher, tr.t_paths) as t_feats,
        tap(tr.teacher, tr.t_leaf, leaf=True) as t_leaves,
    ):
        t_logits = tr.teacher(x)
    return t_logits, {**t_feats, **t_leaves}


def teacher_outputs(tr, x: Tensor, y: Tensor, items: tuple[int, list[int]] | None):
    """(logits, features, cached CAMs or None) of the teacher for batch (x, y); `items` is
    (epoch, the items' dataset indices), None where they are unknown (the teacher then runs live)."""
    cache = tr.cache
    if cache is None or items is None or not cache.store.enabled:
        tr.counts["teacher_forwards"] += x.shape[0]
        t_logits, t_feats = live_teacher(tr, x)
        return t_logits, t_feats, None
    epoch, index = items
    store = cache.store
    written = store.bytes_written
    stored, cams, miss = [], [], []
    for k, i in enumerate(index):
        z = store.get(epoch, i, "logits")
        c = store.get(epoch, i, cache.cam_what) if cache.cam_what and z is not None else None
        if z is None or (cache.cam_what and c is None):
            miss.append(k)
        stored.append(z)
        cams.append(c)
    if miss:
        z_live, c_live = _run_missing(tr, cache, x, y, miss)
        z_host, c_host = z_live.cpu(), None if c_live is None else c_live.cpu()  # one copy each
        for j, k in enumerate(miss):
            stored[k] = z_live[j]
            store.put(epoch, index[k], "logits", z_host[j])
            if cache.cam_what:
                cams[k] = c_live[j]
                store.put(epoch, index[k], cache.cam_what, c_host[j])
    tr.counts["teacher_cache_misses"] += len(miss)
    tr.counts["teacher_cache_bytes"] += store.bytes_written - written
    tr.counts["teacher_forwards"] += len(miss)
    tr.counts["teacher_cache_hits"] += len(index) - len(miss)
    z = torch.stack([s.to(tr.device, non_blocking=True) for s in stored])
    if tr.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t_logits = cache.replay(z)
    t_cams = torch.stack([c.to(tr.device, non_blocking=True) for c in cams]) if cache.cam_what else None
    return t_logits, {}, t_cams


def _run_missing(tr, cache: TeacherCache, x: Tensor, y: Tensor, miss: list[int]):
    """The stored form of the teacher's logits (and its CAMs) for the missing items, detached."""
    rows = None if len(miss) == x.shape[0] else torch.tensor(miss, device=x.device)
    xm = x if rows is None else x.index_select(0, rows)
    got: list[Tensor] = []
    hook = cache.capture.register_forward_hook(lambda m, i, o: got.append(o)) if cache.capture else None
    try:
        t_logits, t_feats = live_teacher(tr, xm)
    finally:
        if hook is not None:
            hook.remove()
    z = (got[-1] if got else t_logits).detach()
    if not cache.cam_what:
        return z, None
    ym = y if rows is None else y.index_select(0, rows)
    masks = cam_masks(ym, t_logits, t_logits.shape[1], tr.distill)
    return z, teacher_maps(t_logits, t_feats["cam"], masks, tr.distill)
