"""The confirmation's statistics (orchestrator.results.stats) against independent oracles: Holm
against statsmodels, the tests against scipy, the family-wise error of whole null tables by
simulation (the old rule, either test uncorrected, as the failing control), the bootstrap over
test images against a brute-force loop, per-image confusion counts against the whole-split matrix,
and the per-image counts' way from the trainer's test evaluation into the trial's MLflow run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.multitest import multipletests

from orchestrator.results import confirm as C
from orchestrator.results import stats as S
from trainables import metrics as M
from trainables.constants import IGNORE_INDEX

# ------------------------------------------------------------------ Holm


@pytest.mark.parametrize(
    "pvalues",
    [
        [0.01, 0.04, 0.03, 0.005],
        [0.02, 0.02, 0.02, 0.5],  # ties
        [0.3, None, 0.001, None, 0.04, 0.04],  # no test for some pairs: out of the family
        [0.9, 0.8, 0.95],  # adjusted values cap at 1
        [0.001],
    ],
)
def test_holm_matches_statsmodels(pvalues):
    got = S.holm(pvalues)
    kept = [p for p in pvalues if p is not None]
    want = iter(multipletests(kept, method="holm")[1])
    for p, g in zip(pvalues, got):
        assert (g is None) if p is None else g == pytest.approx(next(want))
    assert S.holm([]) == [] and S.holm([None, None]) == [None, None]


def test_holm_on_random_families_matches_statsmodels():
    rng = np.random.default_rng(7)
    for m in (2, 5, 9, 30):
        p = list(rng.uniform(0, 0.2, m).round(3))  # rounded: ties happen
        assert S.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


# ------------------------------------------------------------------ the tests


def test_t_test_and_wilcoxon_match_scipy_and_only_holm_marks():
    a = {s: v for s, v in enumerate([0.41, 0.47, 0.44, 0.50, 0.43, 0.46, 0.45])}
    b = {s: v for s, v in enumerate([0.40, 0.44, 0.45, 0.46, 0.41, 0.44, 0.42])}
    p = S.paired(a, b)
    assert p.p_t == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    assert p.p_w == pytest.approx(stats.wilcoxon(list(a.values()), list(b.values())).pvalue)
    assert p.p_w < S.ALPHA and not p.significant  # no adjusted p yet: nothing is marked
    p.p_holm = 0.2
    assert not p.significant  # a Wilcoxon below 0.05 never marks a pair
    none = S.paired(a, b, tests=False)  # the selection split
    assert none.mean == pytest.approx(p.mean) and none.ci == pytest.approx(p.ci) and none.p_t is None


def old_rule(p_t, p_w) -> bool:
    """The rule this module replaced: either test, uncorrected, each pair on its own."""
    return any(x is not None and x < S.ALPHA for x in (p_t, p_w))


ROLES = {**{f"c{i}": C.CONFIG for i in range(3)}, **{f"b{i}": C.BASELINE for i in range(3)}}


def null_tables(rng, tables: int, n: int) -> np.ndarray:
    """(tables, cells, seeds): every cell of every table drawn from one distribution."""
    return rng.normal(0.5, 0.02, (tables, len(ROLES), n))


def pair_pvalues(values: np.ndarray):
    """(tables, pairs) t-test and Wilcoxon p-values by scipy, vectorised over tables."""
    cells = list(ROLES)
    ab = [(cells.index(a), cells.index(b)) for a, b in C.default_pairs(ROLES)]
    p_t = np.stack([stats.ttest_rel(values[:, a], values[:, b], axis=-1).pvalue for a, b in ab], 1)
    if values.shape[-1] < S.MIN_WILCOXON:
        return p_t, np.full_like(p_t, np.nan)
    return p_t, np.stack([stats.wilcoxon(values[:, a], values[:, b], axis=-1).pvalue for a, b in ab], 1)


def test_the_table_marks_exactly_the_holm_rule_on_the_t_tests():
    """confirmation_stats's `*` on null tables is the rule the simulation below counts."""
    rng = np.random.default_rng(99)
    for n in (3, 6):
        values = null_tables(rng, 40, n)
        p_t, p_w = pair_pvalues(values)
        for t in range(len(values)):
            rows = [{"cell": c, "seed": s, "test_miou": values[t, i, s]} for i, c in enumerate(ROLES) for s in range(n)]
            conf = C.confirmation_stats(rows, ROLES, C.default_pairs(ROLES), metrics=("test_miou",))
            per = [ps["test_miou"] for ps in conf.pairs.values()]
            assert [p.p_t for p in per] == pytest.approx(list(p_t[t]))
            if n >= S.MIN_WILCOXON:
                assert [p.p_w for p in per] == pytest.approx(list(p_w[t]))
            assert [p.significant for p in per] == [q < S.ALPHA for q in S.holm(list(p_t[t]))]


def test_null_tables_keep_the_table_wise_error_at_alpha_and_the_old_rule_does_not():
    """3 configurations x 3 baselines, 3 to 6 seeds, 4000 null tables: a table with any `*` is a
    false positive. Holm over the table's pairs keeps that rate at or under 5% (plus 3 binomial
    standard errors); either test uncorrected exceeds it."""
    rng = np.random.default_rng(2024)
    tables, new, old = 0, 0, 0
    for n in (3, 4, 5, 6):
        p_t, p_w = pair_pvalues(null_tables(rng, 1000, n))
        for pt, pw in zip(p_t, p_w):
            tables += 1
            new += any(q < S.ALPHA for q in S.holm(list(pt)))
            old += any(old_rule(a, None if np.isnan(b) else b) for a, b in zip(pt, pw))
    tol = 3 * np.sqrt(S.ALPHA * (1 - S.ALPHA) / tables)
    assert new / tables <= S.ALPHA + tol, new / tables
    assert old / tables > S.ALPHA + tol, old / tables


# ------------------------------------------------------------------ bootstrap over test images


def counts(rng, n_images: int, k: int, quality: float) -> np.ndarray:
    """(n, k, k) per-image confusion counts: each image holds 2 of the k classes; a pixel is right
    with probability `quality`, else a random class."""
    out = np.zeros((n_images, k, k), np.int64)
    for i in range(n_images):
        present = rng.choice(k, 2, replace=False)
        gt = rng.choice(present, 200)
        pred = np.where(rng.random(200) < quality, gt, rng.integers(0, k, 200))
        np.add.at(out[i], (gt, pred), 1)
    return out


def brute_force(a, b, indices) -> tuple[float, float]:
    """One resample at a time: sum the drawn images' matrices, mIoU by trainables.metrics."""
    diffs = []
    for idx in indices:
        per_seed = []
        for x, y in zip(a, b):
            mx, my = (M.summarize(torch.from_numpy(c[idx].sum(0)), ["x"] * c.shape[1], "")["miou"] for c in (x, y))
            per_seed.append(mx - my)
        diffs.append(np.mean(per_seed))
    return tuple(np.percentile(diffs, [2.5, 97.5]))


def test_bootstrap_matches_a_brute_force_loop_with_the_same_resamples():
    rng = np.random.default_rng(3)
    k = 4  # class 3 is absent from most resampled sets: its IoU is undefined, not 1
    a = [counts(rng, 6, 3, q) for q in (0.8, 0.85)]
    b = [counts(rng, 6, 3, q) for q in (0.7, 0.75)]
    a = [np.pad(x, ((0, 0), (0, 1), (0, 1))) for x in a]
    b = [np.pad(x, ((0, 0), (0, 1), (0, 1))) for x in b]
    a[0][2, 3, 3] = 5  # one image of one seed has the rare class
    indices = S.resample_indices(6, 300, seed=11)
    got = S.bootstrap_diff(a, b, indices=indices)
    assert got == pytest.approx(brute_force(a, b, indices), abs=1e-12)
    assert S.bootstrap_diff(a, b, resamples=300, seed=11) == got  # the same seed, the same indices
    assert S.bootstrap_diff(a, b, resamples=300, seed=12) != got
    assert S.bootstrap_diff(a, b[:1]) is None and S.bootstrap_diff(a, [x[:5] for x in b]) is None
    assert k == a[0].shape[1]


def test_miou_from_sums_is_the_trainers_definition():
    rng = np.random.default_rng(5)
    cm = counts(rng, 10, 5, 0.6).sum(0)
    cm[4, :] = 0  # class 4 absent from labels and predictions
    cm[:, 4] = 0
    cm[3, 3] = 0  # class 3 predicted and labelled, never right: IoU 0, counted
    got = S.miou_from_sums(np.diag(cm) * 1.0, cm.sum(1) * 1.0, cm.sum(0) * 1.0)
    assert got == pytest.approx(M.summarize(torch.from_numpy(cm), list("abcde"), "")["miou"], abs=1e-12)


def test_the_interval_narrows_with_more_test_images():
    rng = np.random.default_rng(9)
    width = {}
    for n in (20, 400):
        a = [counts(rng, n, 5, 0.80) for _ in range(3)]
        b = [counts(rng, n, 5, 0.75) for _ in range(3)]
        lo, hi = S.bootstrap_diff(a, b)
        width[n] = hi - lo
        assert lo < 0.05 * 1.5 and hi > 0  # the true gap is positive
    assert width[400] < width[20] / 2


def test_confirmation_bootstraps_pairs_with_counts_and_says_when_some_lack_them():
    rng = np.random.default_rng(1)
    roles = {"x": C.CONFIG, "y": C.BASELINE, "z": C.BASELINE}
    cnt = {(c, s): counts(rng, 8, 3, q) for c, q in (("x", 0.8), ("y", 0.7), ("z", 0.7)) for s in (1, 2)}
    del cnt[("z", 2)]  # an older trial without the artifact
    rows = [{"cell": c, "seed": s, "test_miou": 0.5 + 0.01 * s} for c in roles for s in (1, 2)]
    conf = C.confirmation_stats(rows, roles, C.default_pairs(roles), counts=cnt, resamples=200)
    xy, xz = conf.pairs[("x", "y")]["test_miou"], conf.pairs[("x", "z")]["test_miou"]
    assert xy.boot_ci == S.bootstrap_diff([cnt["x", 1], cnt["x", 2]], [cnt["y", 1], cnt["y", 2]], resamples=200)
    assert xz.boot_ci is None and any("has no test-image interval (-)" in n for n in conf.notes)


# ------------------------------------------------------------------ per-image counts, trainer to store


def test_per_image_counts_sum_to_the_whole_split_matrix():
    g = torch.Generator().manual_seed(0)
    for b, k, h, w in ((1, 2, 5, 7), (4, 6, 16, 9), (3, 21, 8, 8)):
        target = torch.randint(0, k, (b, h, w), generator=g)
        target[torch.rand(b, h, w, generator=g) < 0.2] = IGNORE_INDEX  # ignored and padded pixels
        target[-1, :, -2:] = IGNORE_INDEX
        pred = torch.randint(0, k, (b, h, w), generator=g)
        per = M.per_image_confusion(pred, target, k)
        assert per.shape == (b, k, k) and per.dtype == torch.int64
        assert torch.equal(per.sum(0), M.confusion_matrix(pred, target, k))
        for i in range(b):  # and each image is its own matrix
            assert torch.equal(per[i], M.confusion_matrix(pred[i : i + 1], target[i : i + 1], k))


def test_evaluate_keeps_per_image_counts_that_give_its_miou():
    from trainables.loop import evaluate
    from trainables.reporting import TEST_CONFUSION

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    batches = []
    for _ in range(3):
        y = torch.randint(0, 4, (2, 8, 8))
        y[:, :, -3:] = IGNORE_INDEX  # padding
        batches.append((torch.randn(2, 3, 8, 8), y))
    out = evaluate(model, batches, list("abcd"), torch.device("cpu"), prefix="test_", per_image=True)
    per = out[TEST_CONFUSION]
    assert per.shape == (6, 4, 4) and per.dtype == np.int64 and per.sum() == 6 * 8 * 5
    tp, gt, pred = np.diagonal(per, axis1=1, axis2=2).sum(0), per.sum((0, 2)), per.sum((0, 1))
    assert S.miou_from_sums(tp * 1.0, gt * 1.0, pred * 1.0) == pytest.approx(out["test_miou"], abs=1e-12)
    plain = evaluate(model, batches, list("abcd"), torch.device("cpu"), prefix="test_")
    assert TEST_CONFUSION not in plain and plain["test_miou"] == out["test_miou"]


def test_the_counts_go_from_the_checkpoint_folder_into_the_trial_run(tmp_path):
    """The reporter saves the array beside the checkpoint and keeps it out of the metrics; the
    driver logs the file to the trial's run when the trial completes (not when it is stopped);
    the confirmation reads it back by run id."""
    from orchestrator.tracking.writer import Tracker
    from trainables.reporting import FILES, TEST_CONFUSION, FolderReporter

    array = np.arange(2 * 3 * 3, dtype=np.int64).reshape(2, 3, 3)
    rep = FolderReporter({"name": "t", "run": {"out_dir": str(tmp_path / "runs")}})
    metrics = {"epoch": 0, "train_loss": 1.0, "step_time_s": 0.1, "test_miou": 0.5, TEST_CONFUSION: array}
    rep.report(metrics, None, None)
    folder = tmp_path / "runs" / "t"
    assert TEST_CONFUSION not in metrics and (folder / FILES[TEST_CONFUSION]).is_file()
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "xgd", "s")
    tracker.start_sweep("name: s\n", {}, {})
    for tid, status in (("done", "completed"), ("cut", "stopped")):
        tracker.trial_started(tid, {}, {})
        tracker.trial_checkpoint(tid, str(folder))
        tracker.trial_ended(tid, status, {})
    tracker.outbox.drain()
    done, cut = tracker.runs["done"], tracker.runs["cut"]
    assert [a.path for a in tracker.client.list_artifacts(done)] == [C.COUNTS_FILE]
    assert tracker.client.list_artifacts(cut) == []
    rows = [{"run_id": done, "cell": "a", "seed": 1}, {"run_id": cut, "cell": "b", "seed": 1}]
    got = C.counts_of(tracker.client, rows)
    assert list(got) == [("a", 1)] and np.array_equal(got[("a", 1)], array)
