"""The baselines' hyperparameters: one flat dict of floats in `distill.weights`, next to the term
weights, each with a default and a rule; `hp` reads one and refuses a value its rule forbids."""

from __future__ import annotations

import math
from collections.abc import Callable

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
