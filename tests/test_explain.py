"""Explanation metrics: distance statistics against a direct O(n^2) reference and the dcor package
(slow: its import), rank statistics against scipy, constructed focus/top-k cases, and the runner on tiny
models (a student identical to its teacher aligns perfectly)."""

import copy

import numpy as np
import pytest
import scipy.stats
import torch

from trainables import explain as E
from trainables.models import create_model

# ------------------------------------------------------------------ distance correlation


def _direct_u_dcor_sqr(x: np.ndarray, y: np.ndarray) -> float:
    """Szekely & Rizzo (2014) bias-corrected dCor^2 written out with loops."""
    n = len(x)

    def ucentre(z):
        a = np.array([[np.linalg.norm(z[i] - z[j]) for j in range(n)] for i in range(n)])
        out = np.zeros_like(a)
        for i in range(n):
            for j in range(n):
                if i != j:
                    out[i, j] = a[i, j] - a[i].sum() / (n - 2) - a[:, j].sum() / (n - 2) + a.sum() / ((n - 1) * (n - 2))
        return out

    A, Bm = ucentre(x), ucentre(y)
    prod = lambda p, q: sum(p[i, j] * q[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 3))  # noqa: E731
    return prod(A, Bm) / np.sqrt(prod(A, A) * prod(Bm, Bm))


@pytest.fixture
def xyz():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 6))
    z = rng.normal(size=(9, 3))
    y = np.tanh(x[:, :4]) + 0.5 * rng.normal(size=(9, 4)) + z[:, :1]
    return x, y, z


@pytest.fixture(scope="module")
def dcor():
    """The dcor package, imported only by the tests that compare with it: its import compiles numba
    kernels (about 13 s of CPU here on every run), so those tests are marked slow."""
    import dcor

    return dcor


def test_u_dcor_matches_a_direct_reference(xyz):
    x, y, _ = xyz
    assert E.dcor_u(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(_direct_u_dcor_sqr(x, y), abs=1e-9)
    assert E.dcor_u(torch.tensor(x), torch.tensor(x)).item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.slow
def test_u_dcor_matches_dcor_package(xyz, dcor):
    x, y, _ = xyz
    ours = E.dcor_u(torch.tensor(x), torch.tensor(y)).item()
    assert ours == pytest.approx(dcor.u_distance_correlation_sqr(x, y), abs=1e-9)


@pytest.mark.slow
def test_v_dcor_and_pdcor_match_dcor_package(xyz, dcor):
    x, y, z = xyz
    tx, ty, tz = map(torch.tensor, (x, y, z))
    assert E.dcor_v(tx, ty).item() == pytest.approx(dcor.distance_correlation(x, y), abs=1e-9)
    assert E.pdcor(tx, ty, tz).item() == pytest.approx(dcor.partial_distance_correlation(x, y, z), abs=1e-9)


def test_features_are_flattened_per_sample():
    f = torch.randn(5, 2, 3, 3)
    assert E.dcor_u(f, f.flatten(1) * 2 + 1).item() == pytest.approx(1.0, abs=1e-9)


def test_p_removal_removes_the_shared_part(xyz):
    x, _, z = xyz
    a = E.u_centered(E.distance_matrix(torch.tensor(x)))
    c = E.u_centered(E.distance_matrix(torch.tensor(z)))
    r = E.p_removal(a, c)
    assert E.bracket(r, c).item() == pytest.approx(0.0, abs=1e-12)  # orthogonal to what was removed
    assert E.p_removal(a, a).abs().max().item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(E.p_removal(a, torch.zeros_like(c)), a)  # nothing to remove: unchanged, no NaN


def test_u_centering_needs_four_samples():
    with pytest.raises(ValueError, match="at least 4 samples, got 3"):
        E.dcor_u(torch.randn(3, 2), torch.randn(3, 2))


def test_unicam_map_is_gradcam_of_the_partial_dcor_score():
    torch.manual_seed(0)
    acts = torch.randn(6, 4, 5, 5, requires_grad=True)
    w = torch.randn(4, 3)
    feats = torch.einsum("bchw,cd->bdhw", acts, w).relu()
    base = torch.randn(6, 7)
    target = torch.randn(6, 2)
    m = E.unicam_map(acts, feats, base, target)
    assert m.shape == (6, 5, 5) and (m >= 0).all() and m.sum() > 0
    # independent recomputation with numpy-side U-centring of the fixed matrices
    pb = E.u_centered(E.distance_matrix(base))
    pt = E.u_centered(E.distance_matrix(target))
    score = E.u_correlation(E.p_removal(E.u_centered(E.distance_matrix(feats)), pb), pt)
    g = torch.autograd.grad(score, acts)[0]
    ref = (g.mean((2, 3))[:, :, None, None] * acts).sum(1).clamp_min(0)
    assert torch.allclose(m, ref.detach(), atol=1e-10)


# ------------------------------------------------------------------ rank and map statistics


def test_rankdata_and_spearman_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 4, size=(3, 50)).astype(float)  # many ties
    b = a + rng.integers(0, 3, size=(3, 50))
    assert np.allclose(E.rankdata(torch.tensor(a)).numpy(), scipy.stats.rankdata(a, axis=1))
    ours = E.spearman_rows(torch.tensor(a), torch.tensor(b)).numpy()
    assert np.allclose(ours, [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(3)])
    assert np.allclose(
        E.pearson_rows(torch.tensor(a), torch.tensor(b)).numpy(), [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)]
    )
    assert torch.isnan(E.spearman_rows(torch.ones(1, 5), torch.randn(1, 5))).all()  # constant map: no correlation


def test_identical_maps_and_logits_align_perfectly():
    m = torch.rand(2, 100)
    assert torch.allclose(E.spearman_rows(m, m.clone()), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(E.pearson_rows(m, m.clone()), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(E.topk_iou(m, m.clone(), 0.2), torch.ones(2, dtype=torch.float64))
    z = torch.randn(2, 5, 4, 4)
    assert torch.allclose(E.logit_alignment(z, z.clone()), torch.ones(32, dtype=torch.float64))
    assert torch.allclose(E.logit_alignment(z, -z), -torch.ones(32, dtype=torch.float64))


def test_focus_on_a_constructed_example():
    t = torch.zeros(1, 100)
    t[0, :20] = torch.linspace(1, 2, 20)  # the teacher's top-20% = the first 20 pixels
    inside = torch.zeros(1, 100)
    inside[0, 5:15] = 1.0
    outside = torch.zeros(1, 100)
    outside[0, 50:] = 1.0
    half = inside + outside / 5  # mass 10 inside, 10 outside
    assert E.focus(inside, t, 0.2).item() == pytest.approx(1.0)
    assert E.focus(outside, t, 0.2).item() == pytest.approx(0.0)
    assert E.focus(half, t, 0.2).item() == pytest.approx(0.5)
    assert E.focus(torch.ones(1, 100), t, 0.2).item() == pytest.approx(0.2)  # uniform: k/100
    assert torch.isnan(E.focus(torch.zeros(1, 100), t, 0.2)).all()  # no mass: undefined
    assert E.topk_iou(inside, t, 0.1).item() == pytest.approx(5 / 15)  # top 10 of each: 5..14 vs 10..19
    assert E.topk_iou(t, t, 0.1).item() == pytest.approx(1.0)


def _sparse_maps(rng, n: int, length: int, support: np.ndarray) -> np.ndarray:
    """ReLU'd-CAM-like rows: positive values on `support` (bool (n, L)), exactly 0 elsewhere."""
    return np.where(support, rng.uniform(0.1, 1.0, size=(n, length)), 0.0)


def test_topk_iou_of_disjoint_identical_and_all_zero_sparse_maps():
    rng = np.random.default_rng(3)
    n, length = 6, 400
    perm = np.argsort(rng.random((n, length)), axis=1)  # disjoint 5% supports per row
    sup_a, sup_b = np.zeros((n, length), bool), np.zeros((n, length), bool)
    np.put_along_axis(sup_a, perm[:, :20], True, axis=1)
    np.put_along_axis(sup_b, perm[:, 20:40], True, axis=1)
    a, b = (torch.tensor(_sparse_maps(rng, n, length, s)) for s in (sup_a, sup_b))
    assert (E.topk_iou(a, b, 0.2) <= 0.05).all()  # tie-breaking among the zeros used to give 0.27-0.64
    assert torch.equal(E.topk_iou(a, a.clone(), 0.2), torch.ones(n, dtype=torch.float64))
    assert torch.equal(E.topk_mask(a, 0.2), a > 0)  # fewer positive pixels than k: the region is them
    zeros = torch.zeros(2, length)
    assert torch.isnan(E.topk_iou(zeros, zeros.clone(), 0.2)).all()  # no positive pixel on either side: undefined
    assert torch.equal(E.topk_iou(a[:2], zeros, 0.2), torch.zeros(2, dtype=torch.float64))  # one empty: no overlap
    assert torch.equal(E.topk_iou(zeros, a[:2], 0.2), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(E.topk_iou(-a[:2], a[:2], 0.2), torch.zeros(2, dtype=torch.float64))  # negatives: no region


def test_focus_is_undefined_for_an_all_zero_teacher_map():
    s = torch.rand(2, 100)
    assert torch.isnan(E.focus(s, torch.zeros(2, 100), 0.2)).all()
    t = torch.zeros(2, 100)
    t[:, :5] = 1.0  # 5 positive pixels < k = 20: the region is those 5
    assert torch.allclose(E.focus(s, t, 0.2), s[:, :5].double().sum(-1) / s.double().sum(-1))


def test_topk_ties_include_every_pixel_at_the_kth_value():
    m = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert E.topk_mask(m, 0.2).tolist() == [[True, True, True, True] + [False] * 6]  # k = 2, three tie at 2


def _brute_region(row: np.ndarray, frac: float) -> np.ndarray:
    """Pixel i is in the region iff it is positive and fewer than k pixels are strictly larger."""
    k = max(1, round(frac * len(row)))
    return np.array([v > 0 and (row > v).sum() < k for v in row])


@pytest.mark.parametrize("frac", [0.05, 0.2, 0.5])
def test_topk_iou_and_focus_match_a_brute_force_reference(frac):
    rng = np.random.default_rng(int(frac * 100))
    n, length = 40, 60
    support = rng.random((n, length)) < rng.uniform(0.0, 0.6, size=(n, 1))  # 0-60% positive
    a = np.round(_sparse_maps(rng, n, length, support), 1)  # rounded: ties among positive values too
    b = np.round(_sparse_maps(rng, n, length, rng.random((n, length)) < 0.3), 1)
    b[:8] = np.where(support[:8], a[:8], 0.0) + b[:8] * 0.5  # some overlap, so IoUs are not all ~0
    a[:3] -= 0.3  # negative values as well (not ReLU'd)
    a[10], b[11] = 0.0, 0.0  # all-zero maps on either side (IoU 0: the other region is not empty)
    a[12], b[12] = 0.0, 0.0  # and on both (no IoU)
    iou, foc = [], []
    for ra, rb in zip(a, b):
        ma, mb = _brute_region(ra, frac), _brute_region(rb, frac)
        iou.append((ma & mb).sum() / (ma | mb).sum() if ma.any() or mb.any() else np.nan)
        mass = np.clip(ra, 0, None)
        foc.append(mass[mb].sum() / mass.sum() if mass.sum() > 0 and mb.any() else np.nan)
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert np.array_equal(E.topk_mask(ta, frac).numpy(), np.stack([_brute_region(r, frac) for r in a]))
    ours_iou, ours_foc = E.topk_iou(ta, tb, frac).numpy(), E.focus(ta, tb, frac).numpy()
    assert np.isnan(iou).any() and not np.isnan(iou).all() and 0 < np.nanmax(iou)
    assert np.allclose(ours_iou, iou, equal_nan=True) and np.allclose(ours_foc, foc, equal_nan=True)


def test_means_leave_undefined_values_out():
    acc = E._Means()
    acc.add("k", torch.tensor([1.0, float("nan"), 0.0]))
    acc.add("k", torch.tensor([float("nan")]))
    acc.add("none", torch.tensor([float("nan")]))
    assert acc.mean("k") == pytest.approx(0.5) and np.isnan(acc.mean("none"))
    assert (acc.dropped("k"), acc.dropped("none"), acc.dropped("absent")) == (2, 1, 0)


def test_label_embedding_holds_class_shares_and_rs_sees_labels_in_features():
    y = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255], [2, 2, 2, 2], [2, 2, 255, 255]]])
    e = E.label_embedding(y, 3, (2, 2)).view(3, 2, 2)
    assert e[:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # top-left cell: all class 0
    assert e[:, 0, 1].tolist() == [0.0, 0.75, 0.0]  # top-right: 3 of 4 pixels class 1, one ignored
    assert e[:, 1, 1].tolist() == [0.0, 0.0, 0.5]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (16, 8, 8), generator=g)
    emb = E.label_embedding(labels, 3, (4, 4))
    carries = torch.cat([emb * 2 + 1, torch.randn(16, 8, generator=g) * 0.01], 1)  # labels, rescaled, + noise
    assert E.dcor_u(carries, emb).item() > 0.95
    assert abs(E.dcor_u(torch.randn(16, 48, generator=g), emb).item()) < 0.2  # features that ignore labels


# ------------------------------------------------------------------ the runner


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    student = create_model("deeplabv3plus", "resnet18", 3)
    teacher = create_model("pspnet", "resnet18", 3)
    batches = [(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))) for _ in range(2)]
    return student, teacher, batches


KEYS = {
    "expl_sal_spearman",
    "expl_sal_pearson",
    "expl_topk_iou",
    "expl_logit_spearman",
    "expl_focus",
    "expl_fss",
    "expl_rs",
    "expl_rs_teacher",
    *(f"expl_{k}_n_dropped" for k in ("sal_spearman", "sal_pearson", "topk_iou", "focus", "logit_spearman")),
}


def test_student_identical_to_teacher_aligns_perfectly(tiny):
    student, _, batches = tiny
    twin = copy.deepcopy(student)
    out = E.explanation_metrics(student, twin, batches, {"cam": "gradcam", "cam_target": "gt", "background": 0})
    assert set(out) == KEYS
    for k in ("expl_sal_spearman", "expl_sal_pearson", "expl_topk_iou", "expl_logit_spearman", "expl_fss"):
        assert out[k] == pytest.approx(1.0, abs=1e-6), k
    assert 0.2 <= out["expl_focus"] <= 1.0  # own mass inside own top-20% is at least 20%
    assert out["expl_rs"] == pytest.approx(out["expl_rs_teacher"], abs=1e-9)  # same features, same RS


def test_runner_on_different_models_restores_modes_and_adds_base_metrics(tiny):
    student, teacher, batches = tiny
    student.train()
    flags = [p.requires_grad for p in student.parameters()]
    out = E.explanation_metrics(
        student,
        teacher,
        batches,
        {"distill": {"cam": "layercam", "cam_target": "teacher", "background": 0}},
        max_batches=2,
        base=copy.deepcopy(teacher),
    )
    assert set(out) == KEYS | {"expl_fss_base", "expl_pdcor"}
    assert all(-1.0 <= v <= 1.0 for v in out.values() if v == v), out
    assert out["expl_logit_spearman"] < 0.999 and out["expl_fss"] < 0.999
    assert student.training and [p.requires_grad for p in student.parameters()] == flags
    with pytest.raises(ValueError, match="topk = 0 is not allowed"):
        E.explanation_metrics(student, teacher, batches, {}, topk=0)
