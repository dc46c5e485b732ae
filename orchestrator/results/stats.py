"""The statistics of a confirmation table (orchestrator.results.confirm), as pure functions.

Over seeds: mean, standard deviation (n - 1) and a t-interval (scipy.stats.t); for two cells the
paired difference over the seeds both ran, its t-interval, the paired t-test (scipy.stats.ttest_rel,
the primary test, fixed before the data) and the Wilcoxon signed-rank test (scipy.stats.wilcoxon,
secondary: shown, never used to mark a difference). `holm` adjusts the t-tests of one table's
family for the number of comparisons in it. Over test images: `bootstrap_diff` resamples the test
images to give the interval a finite test set puts around the mean paired mIoU difference, from
per-image confusion counts (trainables.metrics.per_image_confusion).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LEVEL = 0.95  # confidence of the intervals
ALPHA = 0.05  # significance level of the Holm-adjusted t-test
MIN_WILCOXON = 6  # pairs below which the signed-rank test is not run
RESAMPLES = 2000  # bootstrap resamples of the test images
BOOT_SEED = 0  # the bootstrap's RNG seed: the same table every time


@dataclass
class Summary:
    n: int
    mean: float | None = None
    std: float | None = None
    ci: tuple[float, float] | None = None


@dataclass
class Paired:
    n: int  # seeds both cells ran
    mean: float | None = None  # cell minus the cell it is compared with
    std: float | None = None
    ci: tuple[float, float] | None = None  # t-interval over seeds
    p_t: float | None = None  # paired t-test (primary)
    p_w: float | None = None  # Wilcoxon signed-rank (secondary, marks nothing)
    p_holm: float | None = None  # p_t adjusted over the table's family (holm)
    boot_ci: tuple[float, float] | None = None  # percentile interval over resampled test images
    seeds: list = field(default_factory=list)

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """mean +- t_{(1+level)/2, n-1} * s / sqrt(n); None under 2 values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values]
    if not vals:
        return Summary(0)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Summary(len(vals), statistics.fmean(vals), std, t_interval(vals))


def _p(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def paired(a_by_seed: dict, b_by_seed: dict, tests: bool = True) -> Paired:
    """Seed -> value of two cells, compared (a - b) over the seeds both have; `tests=False` (the
    selection split) gives the difference and its interval but no p-value."""
    from scipy import stats

    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    a, b = [float(a_by_seed[s]) for s in seeds], [float(b_by_seed[s]) for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    s = summarize(diffs)
    out = Paired(len(seeds), s.mean, s.std, s.ci, seeds=seeds)
    if len(seeds) < 2 or not tests:
        return out
    with warnings.catch_warnings():  # identical or near-identical pairs: scipy warns, the values say it
        warnings.simplefilter("ignore", RuntimeWarning)
        if s.std:  # a constant difference has no t statistic
            out.p_t = _p(stats.ttest_rel(a, b).pvalue)
        if len(seeds) >= MIN_WILCOXON and any(diffs):
            out.p_w = _p(stats.wilcoxon(a, b).pvalue)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family: the i-th smallest of the m p-values becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). None (no test) stays None and is not counted in m."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m, out, running = len(idx), [None] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


# ------------------------------------------------------------------ over test images


def miou_from_sums(tp: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """mIoU along the last axis (classes) from summed true positives, ground-truth and predicted
    pixel counts, as trainables.metrics: a class absent from both ground truth and prediction has
    no IoU and is left out of the mean (NaN when no class is present)."""
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        present = (union > 0).sum(-1)
        return np.where(present > 0, np.nansum(iou, -1) / np.maximum(present, 1), np.nan)


def _per_image_sums(counts: np.ndarray) -> np.ndarray:
    """(N, K, K) per-image confusion counts (rows ground truth) -> (3, N, K) tp, gt, pred as float64."""
    c = np.asarray(counts, dtype=np.float64)
    return np.stack([np.diagonal(c, axis1=1, axis2=2), c.sum(2), c.sum(1)])


def resample_indices(n_images: int, resamples: int = RESAMPLES, seed: int = BOOT_SEED) -> np.ndarray:
    """(resamples, n_images) image indices drawn with replacement, fixed by `seed`."""
    return np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))


def bootstrap_diff(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    *,
    resamples: int = RESAMPLES,
    seed: int = BOOT_SEED,
    level: float = LEVEL,
    indices: np.ndarray | None = None,
) -> tuple[float, float] | None:
    """Percentile interval of the mean over paired seeds of mIoU(a) - mIoU(b), the test images
    resampled with replacement (the same images for both cells and every seed). a[i], b[i]: the
    (N, K, K) per-image confusion counts of seed i of each cell. None without pairs, with seeds
    scored on different numbers of images or classes, or when no resample has a finite mIoU."""
    if not a or len(a) != len(b):
        return None
    shapes = {np.shape(x) for x in (*a, *b)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        return None
    n = next(iter(shapes))[0]
    idx = resample_indices(n, resamples, seed) if indices is None else np.asarray(indices)
    rows = idx.shape[0]  # how often each image is drawn in each resample:
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    weights = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
    diff = np.zeros(idx.shape[0])
    for x, y in zip(a, b):
        mx, my = (miou_from_sums(*(weights @ s for s in _per_image_sums(c))) for c in (x, y))
        diff += mx - my
    diff /= len(a)
    diff = diff[np.isfinite(diff)]
    if not diff.size:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(diff, [tail, 100 - tail])
    return float(lo), float(hi)
