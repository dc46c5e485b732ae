"""Which figure of a finished trial stands for a val metric.

MLflow keeps each metric's latest value, so a trial's `val_miou` is its last epoch's, while its
checkpoint (best.pt), its test_* metrics and its explanation metrics come from the best-on-val
epoch. Tables, fronts, galleries and export therefore show and rank a finished trial by
`best_val_<metric>` where the trials have it. The sweep objective (what Optuna and ASHA see per
epoch) is untouched: it is the per-epoch `val_<metric>`.
"""

from __future__ import annotations

from collections.abc import Iterable

BEST = "best_"  # the trainer's prefix for the best-on-val epoch's value (best_val_miou)
VAL = "val_"


def finished(metric: str, columns: Iterable[str]) -> str:
    """The column a finished trial shows for `metric`: best_val_X for val_X when the trials hold it."""
    best = BEST + metric
    return best if metric.startswith(VAL) and best in set(columns) else metric


def per_epoch(metric: str) -> str:
    """The per-epoch metric behind a best-epoch one (best_val_X -> val_X), for learning curves."""
    return metric.removeprefix(BEST) if metric.startswith(BEST + VAL) else metric
