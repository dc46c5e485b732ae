"""Differentiable CAMs: equal to pytorch-grad-cam's maps, and L_sa trains the student only.

Oracle comparisons are made at the activation resolution (pytorch-grad-cam's get_cam_image
followed by np.maximum(., 0), i.e. before its cv2 resize), with max |ours - oracle| <= 1e-4 times
the oracle map's max over the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenGradCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from trainables.cams import CAMS, cam, top_eigenvector
from trainables.losses import TERMS, Step
from trainables.saliency import cam_maps, class_masks, normalize_maps, target_grads, xgd_saliency_loss
from trainables.taps import tap

K = 5
ORACLES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "eigengradcam": EigenGradCAM,
    "layercam": LayerCAM,
}
LAYERS = {"DeepLabV3Plus": "decoder.block1", "PSPNet": "decoder.conv"}
REL_TOL = 1e-4


def make_model(arch: str = "DeepLabV3Plus", encoder: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=K)


def make_batch(b: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 64, 64, generator=g)
    y = torch.randint(0, K, (b, 1, 8, 8), generator=g).float()
    y = F.interpolate(y, size=(64, 64), mode="nearest")[:, 0].long()  # blocky regions
    y[:, :6] = 255  # an ignored band
    return x, y


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {arch: make_model(arch).eval() for arch in LAYERS}


def ours(model, layer, x, masks, method, reduce="sum") -> np.ndarray:
    with tap(model, {"cam": layer}) as f:
        logits = model(x)
    return cam_maps(logits, f["cam"], masks, method, reduce).detach().numpy()


def oracle(method, model, layer, x, targets) -> np.ndarray:
    """pytorch-grad-cam's map at the layer's resolution (no resize); our sign rule for Eigen."""
    c = ORACLES[method](model, [model.get_submodule(layer)])
    try:
        outputs = c.activations_and_grads(x)
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs)).backward(retain_graph=True)
        acts = c.activations_and_grads.activations[0].numpy()
        grads = c.activations_and_grads.gradients[0].numpy()
        img = c.get_cam_image(x, model.get_submodule(layer), targets, acts, grads, eigen_smooth=False)
    finally:
        c.activations_and_grads.release()
    if method == "eigengradcam":  # SVD sign is arbitrary: point along the HiResCAM map
        agree = (img * (acts * grads).sum(axis=1)).sum(axis=(1, 2))
        img = np.where(agree[:, None, None] < 0, -img, img)
    return np.maximum(img, 0)


def assert_close(mine: np.ndarray, ref: np.ndarray) -> None:
    assert mine.shape == ref.shape
    assert ref.max() > 0, "degenerate oracle map: the comparison would prove nothing"
    err = np.abs(mine - ref).max()
    assert err <= REL_TOL * ref.max(), f"max err {err:.3g} vs map max {ref.max():.3g}"


@pytest.mark.parametrize("arch", list(LAYERS))
@pytest.mark.parametrize("method", list(CAMS))
def test_per_category_matches_pytorch_grad_cam(models, arch, method):
    model, layer = models[arch], LAYERS[arch]
    x, y = make_batch()
    masks = class_masks(y, None, K)
    per_class = ours(model, layer, x, masks, method, reduce="per_class")
    for k in (0, 3):
        if masks[:, k].sum() == 0:
            continue
        one = torch.zeros_like(masks)
        one[:, k] = masks[:, k]
        targets = [SemanticSegmentationTarget(k, masks[b, k].numpy()) for b in range(len(x))]
        ref = oracle(method, model, layer, x, targets)
        assert_close(ours(model, layer, x, one, method)[:, 0], ref)
        assert_close(per_class[:, k], ref)


@pytest.mark.parametrize("method", list(CAMS))
def test_summed_target_matches_pytorch_grad_cam(models, method):
    model, layer = models["DeepLabV3Plus"], LAYERS["DeepLabV3Plus"]
    x, y = make_batch()
    masks = class_masks(y, None, K)
    targets = [lambda out, m=masks[b]: (out * m).sum() for b in range(len(x))]
    assert_close(ours(model, layer, x, masks, method)[:, 0], oracle(method, model, layer, x, targets))


def test_class_masks_gt_and_teacher():
    y = torch.tensor([[[0, 1], [255, 4]]])
    m = class_masks(y, None, K, "gt")
    assert m.shape == (1, K, 2, 2) and m[0, :, 1, 0].sum() == 0 and m.sum() == 3
    t_logits = F.one_hot(torch.tensor([[[2, 2], [3, 0]]]), K).permute(0, 3, 1, 2).float()
    mt = class_masks(y, t_logits, K, "teacher")
    assert mt[0, 3, 1, 0] == 1 and mt.sum() == 4  # teacher masks cover ignored pixels too
    with pytest.raises(ValueError, match="cam_target"):
        class_masks(y, None, K, "oracle")
    with pytest.raises(ValueError, match="CAM method"):
        cam("scorecam", torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3))


def test_per_class_and_sum_are_consistent_in_train_mode():
    model = make_model().train()
    x, y = make_batch()
    with tap(model, {"cam": "decoder.block1"}) as f:
        logits = model(x)
    masks = class_masks(y, None, K)
    g_sum = target_grads(logits, f["cam"], masks, "sum")
    g_per = target_grads(logits, f["cam"], masks, "per_class")
    assert g_per.shape == (K,) + g_sum.shape
    torch.testing.assert_close(g_per.sum(0), g_sum, rtol=1e-4, atol=1e-6 * g_sum.abs().max().item())
    a = f["cam"].detach()
    per_maps = sum(CAMS["gradcam"](a, g) for g in g_per)  # pre-ReLU GradCAM is linear in grads
    sum_map = CAMS["gradcam"](a, g_sum)
    torch.testing.assert_close(per_maps, sum_map, rtol=1e-4, atol=1e-5 * sum_map.abs().max().item())


def test_normalisation_of_constant_maps_is_zero_not_nan():
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4)])[None]
    n = normalize_maps(maps)
    assert torch.isfinite(n).all() and n[0, :2].abs().max() == 0
    assert n[0, 2].min() == 0 and abs(n[0, 2].max().item() - 1) < 1e-6


def test_top_eigenvector_gradient_matches_eigh_and_is_finite_on_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, generator=g, dtype=torch.float64)

    def f(vec):  # sign-invariant function of the eigenvector
        return ((vec @ w) ** 2).sum()

    a1 = a.clone().requires_grad_(True)
    f(top_eigenvector(a1 @ a1.transpose(1, 2))).backward()
    a2 = a.clone().requires_grad_(True)
    f(torch.linalg.eigh(a2 @ a2.transpose(1, 2))[1][..., -1]).backward()
    torch.testing.assert_close(a1.grad, a2.grad)
    z = torch.zeros(2, 5, 5, requires_grad=True)
    f_z = top_eigenvector(z.transpose(1, 2) @ z) @ torch.ones(5)
    f_z.sum().backward()
    assert torch.isfinite(z.grad).all()


def teacher_step(teacher, x, layer="decoder.block1"):
    with torch.enable_grad(), tap(teacher, {"cam": layer}, leaf=True) as tf, tap(teacher, {"enc": "encoder"}) as ef:
        t_logits = teacher(x)
    return t_logits, tf["cam"], ef["enc"]


@pytest.mark.parametrize(
    "method,cam_target,reduce",
    [
        ("gradcam", "gt", "sum"),
        ("eigengradcam", "gt", "sum"),
        ("gradcam", "teacher", "per_class"),
        ("eigengradcam", "teacher", "per_class"),
    ],
)
def test_saliency_loss_trains_student_not_teacher(method, cam_target, reduce):
    student = make_model(seed=0).train()
    teacher = make_model(encoder="resnet34", seed=1).eval()  # params left trainable: must get no grads
    x, y = make_batch(b=3)
    t_logits, t_acts, _ = teacher_step(teacher, x)
    with tap(student, {"cam": "decoder.block1"}) as sf:
        s_logits = student(x)
    step = Step(
        images=x, labels=y, s_logits=s_logits, t_logits=t_logits, s_feats={"cam": sf["cam"]}, t_feats={"cam": t_acts}
    )
    cfg = {"cam": method, "cam_target": cam_target, "cam_reduce": reduce, "beta": 1.0, "background": 0}
    loss = TERMS["sa"].fn(step, cfg)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    for name in (
        "encoder.conv1.weight",
        "encoder.layer4.0.conv1.weight",
        "decoder.block1.0.weight",
        "decoder.block2.0.0.weight",
        "segmentation_head.0.weight",
    ):
        grad = student.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    assert t_acts.grad is None  # teacher maps are detached
    assert student.training and not teacher.training  # modes untouched


def test_saliency_loss_has_finite_gradients_when_every_pixel_is_ignored():
    student, teacher = make_model(seed=0).train(), make_model(seed=1).eval().requires_grad_(False)
    x, y = make_batch()
    y[:] = 255  # zero targets -> zero maps, the degenerate case for eigh
    t_logits, t_acts, _ = teacher_step(teacher, x)
    with tap(student, {"cam": "decoder.block1"}) as sf:
        s_logits = student(x)
    for method in CAMS:
        step = Step(
            images=x,
            labels=y,
            s_logits=s_logits,
            t_logits=t_logits,
            s_feats={"cam": sf["cam"]},
            t_feats={"cam": t_acts},
        )
        loss = xgd_saliency_loss(step, {"cam": method, "cam_reduce": "per_class", "background": 0})
        grads = torch.autograd.grad(loss, [student.encoder.conv1.weight], retain_graph=True, allow_unused=True)
        assert loss.item() == 0 and all(g is None or torch.isfinite(g).all() for g in grads), method


def test_teacher_leaf_tap_builds_no_encoder_graph_and_gives_full_graph_maps():
    teacher = make_model(seed=1).eval().requires_grad_(False)
    x, y = make_batch()
    masks = class_masks(y, None, K)
    t_logits, t_acts, enc = teacher_step(teacher, x)
    assert all(e.grad_fn is None for e in enc)  # the leaf's producer has no graph
    assert t_acts.is_leaf and t_acts.requires_grad and t_logits.grad_fn is not None
    full = make_model(seed=1).eval()  # same weights, ordinary graph through everything
    with tap(full, {"cam": "decoder.block1"}) as f:
        full_logits = full(x)
    assert f["cam"].grad_fn is not None
    for method in CAMS:
        for reduce in ("sum", "per_class"):
            leaf_maps = cam_maps(t_logits, t_acts, masks, method, reduce)
            full_maps = cam_maps(full_logits, f["cam"], masks, method, reduce)
            torch.testing.assert_close(leaf_maps, full_maps, rtol=1e-5, atol=1e-6 * full_maps.abs().max().item())


def test_maps_of_different_sizes_are_compared_at_the_larger_size():
    from trainables.saliency import saliency_mse

    t = torch.rand(2, 1, 16, 16)
    s = F.avg_pool2d(t, 2).requires_grad_(True)  # 8 x 8
    loss = saliency_mse(s, t)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0
    assert saliency_mse(t, t).item() == 0


def test_cams_compute_in_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    a, gr = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = {m: cam(m, a, gr) for m in CAMS}
    for m, v in inside.items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, cam(m, a, gr), rtol=0, atol=0)
