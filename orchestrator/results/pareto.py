"""The Pareto front, for every caller: the sweep's multi-objective summary, the report's
metric-against-cost plots and `export --pareto`."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices (in input order) of the points no other point dominates: at least as good in every
    coordinate and better in one. `modes[k]` is "max" or "min" for coordinate k; equal points all stay."""
    keyed = [[-v if mode == "max" else v for v, mode in zip(p, modes)] for p in points]
    return [
        i
        for i, p in enumerate(keyed)
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for j, q in enumerate(keyed) if j != i)
    ]
