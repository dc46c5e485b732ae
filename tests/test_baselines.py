"""Baselines: each loss against its published formula, zero where the formula says so, gradients
into the student (and its connector/CBAM) only, and shapes for the three students against a
DeepLabV3+ ResNet-101 teacher."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses import METHODS, TERMS, Step, active_terms
from trainables.losses.at import at_loss
from trainables.losses.attnfd import CBAM, attnfd_layer_loss, fixed_cbam
from trainables.losses.cat import cat_loss
from trainables.losses.cwd import channel_wise_divergence
from trainables.losses.features import connector
from trainables.losses.hyperparams import hp
from trainables.losses.roles import context_layer, encoder_last_stage, probe_last_stage, role_taps
from trainables.losses.skd import pairwise_loss
from trainables.models import create_model
from trainables.taps import tap

K = 5
ROLES = ("enc", "aspp", "dec")
STUDENTS = [("deeplabv3plus", "resnet18"), ("deeplabv3plus", "mobilenet_v2"), ("pspnet", "resnet18")]
BASELINE_TERMS = ["skd_pa", "cwd", "cwd_feat", "at", "cat", "attnfd"]
CFG = {
    "method": "none",
    "alpha": 1.0,
    "beta": 1.0,
    "tau": 1.0,
    "cam": "gradcam",
    "cam_target": "gt",
    "weights": {"cwd_feat": 1.0},
}


# ------------------------------------------------------------------ models (one forward each)


@pytest.fixture(scope="module")
def runs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, K, (2, 64, 64))
    y[:, :4] = 255
    teacher = create_model("deeplabv3plus", "resnet101", K).eval().requires_grad_(False)
    with torch.no_grad(), tap(teacher, role_taps(*ROLES)({}, teacher)) as t_feats:
        t_logits = teacher(x)
    out = {}
    for arch, enc in STUDENTS:
        student = create_model(arch, enc, K).train()
        with tap(student, role_taps(*ROLES)({}, student)) as s_feats:
            s_logits = student(x)
        out[(arch, enc)] = (student, s_logits, dict(s_feats))
    return x, y, teacher, t_logits, dict(t_feats), out


def _step(runs, key):
    """A Step whose teacher tensors are leaves that require grad (as with the saliency term on)."""
    x, y, _, t_logits, t_feats, out = runs
    student, s_logits, s_feats = out[key]
    t_feats = {k: v.detach().clone().requires_grad_(True) for k, v in t_feats.items()}
    step = Step(x, y, s_logits, t_logits.detach().clone().requires_grad_(True), s_feats, t_feats)
    return student, step


@pytest.mark.parametrize("key", STUDENTS, ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("name", BASELINE_TERMS)
def test_term_runs_for_each_student_and_trains_student_and_modules_not_teacher(runs, key, name):
    student, step = _step(runs, key)
    term = TERMS[name]
    extras = None
    if term.build:
        extras = term.build(
            {k: v.shape for k, v in step.s_feats.items()}, {k: v.shape for k, v in step.t_feats.items()}, CFG
        )
        step.extras[name] = extras
    loss = term.fn(step, CFG)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and math.isfinite(loss.item()) and loss.item() > 0
    extra_params = list(extras.parameters()) if extras is not None else []
    s_param = (
        student.encoder.conv1.weight if hasattr(student.encoder, "conv1") else student.encoder.features[0][0].weight
    )
    t_leaves = [step.t_logits, *step.t_feats.values()]
    grads = torch.autograd.grad(loss, [s_param, *extra_params, *t_leaves], retain_graph=True, allow_unused=True)
    g_student, g_extra, g_teacher = grads[0], grads[1 : 1 + len(extra_params)], grads[1 + len(extra_params) :]
    assert g_student is not None and g_student.abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in g_teacher)
    if name in ("attnfd",) or (name == "cwd_feat" and key[0] == "pspnet"):  # modules that must train
        assert extra_params and any(g is not None and g.abs().sum() > 0 for g in g_extra)


def test_tap_roles_and_last_stage_registry_agree_with_probe(runs):
    *_, teacher, _, t_feats, out = runs[2:]
    assert encoder_last_stage(teacher) == "encoder.layer4"
    expected = {
        ("deeplabv3plus", "resnet18"): "encoder.layer4",
        ("deeplabv3plus", "mobilenet_v2"): "encoder.features.18",
        ("pspnet", "resnet18"): "encoder.layer2",
    }  # smp PSPNet stops at depth 3 (stride 8)
    for key, (student, _, _feats) in out.items():
        assert encoder_last_stage(student) == expected[key] == "encoder." + probe_last_stage(student.encoder)
        assert context_layer(student) == ("decoder.psp" if key[0] == "pspnet" else "decoder.aspp")
    with pytest.raises(ValueError, match="no ASPP/pyramid-pooling layer.*supported: DeepLabV3Plus"):
        context_layer(create_model("unet", "resnet18", K))


def test_connector_only_on_channel_mismatch():
    assert isinstance(connector(256, 256), nn.Identity)
    c = connector(512, 256)
    assert c(torch.randn(2, 512, 3, 3)).shape == (2, 256, 3, 3)


def test_methods_and_combinations_registered():
    for name in ("skd", "cwd", "at", "cat", "attnfd", "xgd+cwd", "xgd+attnfd"):
        assert set(METHODS[name]) <= set(TERMS)
    cfg = {**CFG, "method": "xgd+cwd", "weights": {}}
    assert [n for n, _, w in active_terms(cfg, True)] == ["seg", "pi", "sa", "cwd"]  # cwd_feat off by default
    assert {n: w for n, _, w in active_terms({**cfg, "method": "skd"}, True)} == {"seg": 1.0, "pi": 1.0, "skd_pa": 10.0}
    assert (
        dict((n, w) for n, _, w in active_terms({**cfg, "method": "attnfd", "weights": {"attnfd": 5}}, True))["attnfd"]
        == 5.0
    )


def test_bad_hyperparameter_is_one_line_error():
    with pytest.raises(ValueError, match=r"distill.weights.cwd_tau = -1.0 is not allowed; use a positive number"):
        hp({"weights": {"cwd_tau": -1}}, "cwd_tau")
    with pytest.raises(ValueError, match="attnfd_teacher_cbam = 0.5 .* 0 or 1"):
        hp({"weights": {"attnfd_teacher_cbam": 0.5}}, "attnfd_teacher_cbam")
    with pytest.raises(ValueError, match="cat_pool = 0.5 .* an integer >= 1"):
        hp({"weights": {"cat_pool": 0.5}}, "cat_pool")
    assert hp({"weights": {}}, "cwd_tau") == 4.0 and hp({"weights": {"skd_pool": 0.5}}, "skd_pool") == 0.5


# ------------------------------------------------------------------ SKD pair-wise


def _skd_reference(f_s, f_t, scale):
    """structure_knowledge_distillation utils: maxpool nodes, sim_dis_compute."""

    def sim(f):
        f = f / ((f.pow(2).sum(1, keepdim=True)).sqrt() + 1e-8)
        f = f.reshape(f.shape[0], f.shape[1], -1)
        return torch.einsum("icm,icn->imn", f, f)

    if scale < 1:
        k = (int(f_t.shape[2] * scale), int(f_t.shape[3] * scale))
    else:
        k = (int(scale), int(scale))
    pool = nn.MaxPool2d(kernel_size=k, stride=k, padding=0, ceil_mode=True)
    f_s, f_t = pool(f_s), pool(f_t)
    err = (sim(f_t) - sim(f_s)) ** 2 / ((f_t.shape[-1] * f_t.shape[-2]) ** 2) / f_t.shape[0]
    return err.sum()


@pytest.mark.parametrize("pool", [2.0, 0.5])
def test_skd_pairwise_matches_reference_and_is_zero_for_equal_features(pool):
    torch.manual_seed(1)
    s, t = torch.randn(2, 6, 7, 9), torch.randn(2, 4, 7, 9)  # channels may differ
    assert pairwise_loss(s, t, pool).item() == pytest.approx(_skd_reference(s, t, pool).item(), rel=1e-5)
    assert pairwise_loss(t, t.clone(), pool).item() == pytest.approx(0.0, abs=1e-12)
    # similarity is scale-free per pixel: a positive rescale of the student changes nothing
    assert pairwise_loss(3 * t, t, pool).item() == pytest.approx(0.0, abs=1e-10)


# ------------------------------------------------------------------ CWD


def test_cwd_matches_mmrazor_formula_and_zero_for_equal():
    torch.manual_seed(2)
    s, t, tau = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7), 4.0
    n, c, h, w = s.shape
    p_t = F.softmax(t.reshape(-1, w * h) / tau, dim=1)
    ref = torch.sum(
        p_t * F.log_softmax(t.reshape(-1, w * h) / tau, 1) - p_t * F.log_softmax(s.reshape(-1, w * h) / tau, 1)
    )
    ref = ref * tau**2 / (c * n)
    assert channel_wise_divergence(s, t, tau).item() == pytest.approx(ref.item(), rel=1e-5)
    assert channel_wise_divergence(t, t.clone(), tau).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ AT


def test_at_matches_zagoruyko_and_is_zero_for_equal_and_interpolates():
    torch.manual_seed(3)
    s, t = torch.randn(2, 8, 6, 6), torch.randn(2, 16, 6, 6)
    at = lambda x: F.normalize(x.pow(2).mean(1).view(x.size(0), -1))  # noqa: E731  (AT repo's at())
    assert at_loss(s, t).item() == pytest.approx((at(s) - at(t)).pow(2).mean().item(), rel=1e-6)
    assert at_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # a student at half the resolution is compared at the teacher's size
    small = torch.randn(2, 8, 3, 3)
    a_small = F.interpolate(small.pow(2).mean(1, keepdim=True), size=(6, 6), mode="bilinear", align_corners=False)
    ref = (F.normalize(a_small.flatten(1)) - at(t)).pow(2).mean()
    assert at_loss(small, t).item() == pytest.approx(ref.item(), rel=1e-6)


# ------------------------------------------------------------------ CAT


def test_cat_matches_direct_recomputation_and_zero_for_equal():
    torch.manual_seed(4)
    s, t = torch.randn(2, 6, 8, 8), torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[1][labels[1] == 2] = 1  # class 2 absent from image 1: left out of the mean
    masks = torch.stack([(labels == k).float() for k in range(4)], dim=1)  # class 3 absent everywhere
    pool = 2
    dists = []
    for b in range(2):
        a_s, a_t = s[b].pow(2).mean(0), t[b].pow(2).mean(0)
        for k in range(4):
            m = F.avg_pool2d(masks[b, k][None, None], 2)[0, 0]  # 16x16 -> 8x8 area fractions
            if m.sum() == 0:
                continue
            ps = F.avg_pool2d((a_s * m)[None, None], 4).flatten()  # 8x8 -> 2x2
            pt = F.avg_pool2d((a_t * m)[None, None], 4).flatten()
            dists.append(((ps / ps.norm() - pt / pt.norm()) ** 2).sum())
    assert len(dists) == 5
    assert cat_loss(s, t, masks, pool).item() == pytest.approx(torch.stack(dists).mean().item(), rel=1e-5)
    assert cat_loss(t, t.clone(), masks, pool).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ AttnFD


def test_attnfd_layer_loss_formula_and_zero_for_equal():
    torch.manual_seed(5)
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    ref = sum(((s[i] / s[i].norm() - t[i] / t[i].norm()) ** 2).sum() for i in range(3)) / 3
    assert attnfd_layer_loss(s, t).item() == pytest.approx(ref.item(), rel=1e-5)
    assert attnfd_layer_loss(2 * t, t).item() == pytest.approx(0.0, abs=1e-10)


def test_cbam_gates_match_their_formulas():
    torch.manual_seed(6)
    x = torch.randn(2, 32, 6, 6)
    cbam = CBAM(32, reduction=16).eval()
    mlp = cbam.channel.mlp
    xc = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    pooled = torch.cat([xc.mean(1, keepdim=True), xc.amax(1, keepdim=True)], 1)
    ref = xc * torch.sigmoid(cbam.spatial.bn(F.conv2d(pooled, cbam.spatial.conv.weight, padding=3)))
    assert torch.allclose(cbam(x), ref, atol=1e-6)
    assert mlp[1].out_features == 2  # reduction 16
    # the public code's parameter-free teacher gate (cbam.py, model='teacher')
    xt = x * torch.sigmoid(F.avg_pool2d(x, 6) + F.max_pool2d(x, 6))
    ref_t = xt * torch.sigmoid(torch.max(xt, 1)[0].unsqueeze(1) + torch.mean(xt, 1).unsqueeze(1))
    assert torch.allclose(fixed_cbam(x), ref_t, atol=1e-6)


def test_attnfd_learned_teacher_cbam_option_builds_and_trains_teacher_gates(runs):
    student, step = _step(runs, ("deeplabv3plus", "resnet18"))
    cfg = {**CFG, "weights": {"attnfd_teacher_cbam": 1}}
    mods = TERMS["attnfd"].build(
        {k: v.shape for k, v in step.s_feats.items()}, {k: v.shape for k, v in step.t_feats.items()}, cfg
    )
    assert mods.teacher is not None and isinstance(mods.student["enc"][1], nn.Sequential)  # 512 -> 2048 connector
    step.extras["attnfd"] = mods
    loss = TERMS["attnfd"].fn(step, cfg)
    g = torch.autograd.grad(loss, list(mods.teacher.parameters()), retain_graph=True, allow_unused=True)
    assert any(x is not None and x.abs().sum() > 0 for x in g)


# ------------------------------------------------------------------ SKD holistic (adversarial) term


def test_gradient_reversal_negates_and_scales():
    from trainables.losses.holistic import GradReverse

    x = torch.randn(3, requires_grad=True)
    (GradReverse.apply(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -0.75]))


def test_holistic_term_trains_the_critic_to_separate_and_the_student_to_fool_it():
    from trainables.losses.holistic import discriminator, holistic_loss

    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    s_logits = torch.randn(4, K, 16, 16, requires_grad=True)
    t_logits = torch.randn(4, K, 16, 16) * 3
    disc = discriminator(K, width=8)
    loss = holistic_loss(disc, x, s_logits, t_logits, lam=0.001)
    (g_s,) = torch.autograd.grad(loss, s_logits, retain_graph=True)
    # the student's gradient is -lambda times that of D(student): it descends -lambda * D(student)
    up = F.interpolate(F.softmax(s_logits, 1), size=(32, 32), mode="bilinear", align_corners=False)
    (g_ref,) = torch.autograd.grad(disc(torch.cat([x, up], 1)).mean(), s_logits)
    assert torch.allclose(g_s, -0.001 * g_ref, atol=1e-9) and g_s.abs().sum() > 0
    # the critic descends the same loss: a few steps of D alone widen D(teacher) - D(student)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    start = -holistic_loss(disc, x, s_logits, t_logits, 0.001).item()
    for _ in range(30):
        opt.zero_grad()
        holistic_loss(disc, x, s_logits.detach(), t_logits, 0.001).backward()
        opt.step()
    assert -holistic_loss(disc, x, s_logits, t_logits, 0.001).item() > start + 0.1


def test_skd_with_holistic_term_trains_student_and_critic_in_one_step():
    import copy

    from orchestrator.spec.load import validate
    from orchestrator.spec.train import TrainSpec
    from trainables.step import build_trainer, train_step

    cfg = validate(
        TrainSpec,
        {
            "data": {"kind": "synthetic", "num_train": 2, "image_size": 64, "crop": 64},
            "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
            "distill": {"method": "skd", "weights": {"skd_ho": 0.001}},
        },
    ).model_dump()
    assert [n for n, _, _ in active_terms(cfg["distill"], True)] == ["seg", "pi", "skd_pa", "skd_ho"]
    torch.manual_seed(0)
    student = create_model("deeplabv3plus", "resnet18", K)
    teacher = create_model("deeplabv3plus", "resnet18", K).eval().requires_grad_(False)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    tr = build_trainer(cfg, student, teacher, x[:1], torch.device("cpu"), 10)
    critic = copy.deepcopy(tr.extras["skd_ho"].state_dict())
    head = student.segmentation_head[0].weight.detach().clone()
    out = train_step(tr, x, y)
    assert torch.isfinite(out.loss) and out.losses.shape == (4,)
    assert any(not torch.equal(v, critic[k]) for k, v in tr.extras["skd_ho"].state_dict().items())
    assert not torch.equal(student.segmentation_head[0].weight, head)
