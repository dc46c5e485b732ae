"""The step bench's cached-teacher variants (`<variant>@cache`): PI and XGD with each CAM method,
their teacher outputs read from a warm teacher-output cache (trainables.teacher_outputs) instead
of running the teacher; timed in the same round-robin as the live variants, so their ratio to the
live PI step is what a sweep's trials after the first pay.

The cache lies in a temporary folder, warmed once before timing with the batch's outputs (the
teacher's miss path, which writes them); every timed step then reads every item's entries from
files, as a trial does (from the page cache, as on a node that just wrote them).
"""

from __future__ import annotations

import tempfile

import torch

from trainables.cams import CAMS

CACHED = "@cache"
CACHEABLE = ("pi", *(f"xgd_{cam}" for cam in CAMS))  # the live variants with a cached twin


def cached_variants(variants) -> list[str]:
    return [v + CACHED for v in variants if v in CACHEABLE]


def check_cached(variants) -> list[str]:
    """The `@cache` variants whose live twin has no cached form (they read teacher features)."""
    return [v for v in variants if v.endswith(CACHED) and v.removesuffix(CACHED) not in CACHEABLE]


def new_store():
    """An empty store in a fresh temporary folder (the caller removes `store.root`)."""
    from trainables.teacher_outputs import OutputStore

    return OutputStore(tempfile.mkdtemp(prefix="xgd-bench-teacher-"), "bench")


def warm(tr, x: torch.Tensor, y: torch.Tensor) -> tuple[int, list[int]]:
    """Write the batch's teacher outputs into `tr`'s cache; returns the (epoch, indices) a step
    passes to read them back, and checks that the next read is a hit for every item."""
    from trainables.teacher_step import teacher_outputs

    items = (0, list(range(x.shape[0])))
    with tr.autocast():
        teacher_outputs(tr, x.to(tr.device), y.to(tr.device), items)
        hits = tr.counts["teacher_cache_hits"]
        teacher_outputs(tr, x.to(tr.device), y.to(tr.device), items)
    if tr.counts["teacher_cache_hits"] - hits != x.shape[0]:
        raise RuntimeError(f"the bench's teacher cache in {tr.cache.store.root} did not serve the warmed batch")
    return items
