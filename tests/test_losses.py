import pytest
import torch
import torch.nn.functional as F

from trainables.losses import METHODS, TERMS, active_terms, cross_entropy, pixel_kl


def test_pixel_kl_equals_reference_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7)
    tau = 2.0
    # reference: logits reshaped to (N*H*W, C), KL(p_t || p_s) per pixel, mean, times tau^2
    s2 = s.permute(0, 2, 3, 1).reshape(-1, 5) / tau
    t2 = t.permute(0, 2, 3, 1).reshape(-1, 5) / tau
    ref = F.kl_div(F.log_softmax(s2, 1), F.softmax(t2, 1), reduction="batchmean") * tau**2
    assert pixel_kl(s, t, tau).item() == pytest.approx(ref.item(), rel=1e-5)


def test_pixel_kl_is_zero_for_identical_logits_and_scale_free_in_size():
    x = torch.randn(1, 4, 8, 8)
    assert pixel_kl(x, x.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    s, t = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    big_s, big_t = s.repeat(1, 1, 8, 8), t.repeat(1, 1, 8, 8)  # same per-pixel content, 64x the pixels
    assert pixel_kl(big_s, big_t, 1.0).item() == pytest.approx(pixel_kl(s, t, 1.0).item(), rel=1e-5)


def test_pixel_kl_gradient_reaches_student_only():
    s = torch.randn(1, 3, 4, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, requires_grad=True)
    pixel_kl(s, t.detach(), 1.0).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_cross_entropy_ignores_255():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 255], [2, 255]]])
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1).reshape(-1, 3)[[0, 2]], torch.tensor([0, 2]))
    assert cross_entropy(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)


def test_zero_weight_terms_are_skipped_and_teacher_terms_need_a_teacher():
    cfg = {"method": "xgd", "alpha": 1.0, "beta": 0.0, "tau": 1.0, "weights": {}}
    assert [n for n, _, _ in active_terms(cfg, has_teacher=True)] == ["seg", "pi"]  # beta=0: no CAM at all
    assert [n for n, _, _ in active_terms(cfg, has_teacher=False)] == ["seg"]
    assert set(METHODS["xgd"]) <= set(TERMS)


def test_every_method_names_only_registered_terms():
    # methods are names (trainables.losses.methods), terms register in their own modules: a method
    # naming a term no module registers would fail only when a run picks it
    for name, terms in METHODS.items():
        assert terms[0] == "seg" and set(terms) <= set(TERMS), name
