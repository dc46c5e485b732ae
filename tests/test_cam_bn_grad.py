"""distill.cam_bn_grad: how L_sa's derivative treats the batch statistics of the BatchNorms after
the student's CAM layer (trainables.batchnorm). The map's value is the per-image one either way.

Oracle: the tiny student written out in float64 with plain autograd. The CAM gradient is the
partial derivative of the scores with respect to the CAM activations A, the statistics of the BN
after the CAM layer entering as separate inputs (grad with respect to e at A + e, e = 0):
- 'exact': statistics = the live (differentiable) batch mean and variance;
- 'constant': the same, except that the BN's local Jacobian gamma * invstd, i.e. dy/dz, uses a
  detached invstd (the values after the BN still follow the statistics, as the project's
  train-mode forward node does).
The map is GradCAM (trainables.cams.CAMS, pure torch, float64 here) and the loss saliency_mse
against fixed teacher maps; the gradients of L_sa with respect to every parameter must agree."""

from __future__ import annotations

import copy
import typing

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cam_bn_models import CAM_LAYER, K, Tiny, batch, randomise
from orchestrator.errors import SpecError
from orchestrator.spec.load import validate
from orchestrator.spec.train import DistillSpec
from trainables.batchnorm import CAM_BN_GRADS, DEFAULT_CAM_BN_GRAD, constant_batch_stats
from trainables.cam_path import prepare_cam_path
from trainables.cams import CAMS
from trainables.losses import Step
from trainables.losses.methods import READS
from trainables.saliency import saliency_maps, saliency_mse, target_grads
from trainables.taps import tap

pytestmark = pytest.mark.usefixtures("one_thread")
ACTS = {"relu": nn.ReLU, "silu": nn.SiLU}


def masks_of(y: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    return F.one_hot(y, K).permute(0, 3, 1, 2).to(dtype)


def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    return CAMS["gradcam"](acts, grads).clamp_min(0).unsqueeze(1)


def project_grads(model: nn.Module, x, y, t_maps, mode: str) -> tuple[dict, torch.Tensor]:
    """d L_sa / d params with the project's path: swapped modules, target_grads inside constant_batch_stats."""
    student = copy.deepcopy(model)
    prepare_cam_path(student, [CAM_LAYER], x[:1])
    with tap(student, {"cam": CAM_LAYER}) as f:
        logits = student(x)
    with constant_batch_stats(mode):
        g = target_grads(logits, f["cam"], masks_of(y), create_graph=True)
    maps = gradcam(f["cam"], g)
    names, params = zip(*student.named_parameters())
    grads = torch.autograd.grad(saliency_mse(maps, t_maps), params, allow_unused=True)
    return _zeros_for_unused(names, params, grads), maps.detach()


def reference_grads(model: nn.Module, x, y, t_maps, mode: str, act: str) -> dict:
    """The same derivative, written out with F.* and plain autograd (see the module docstring)."""
    p = {n: t.detach().clone().requires_grad_(True) for n, t in model.named_parameters()}
    eps = model.norm.eps
    h = F.conv2d(x, p["stem.0.weight"], p["stem.0.bias"], padding=1)
    a = F.relu(F.batch_norm(h, None, None, p["stem.1.weight"], p["stem.1.bias"], True, 0.0, model.stem[1].eps))
    z = F.conv2d(a, p["mid.weight"], p["mid.bias"], padding=1)
    mean = z.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    inv = (z.var(dim=(0, 2, 3), unbiased=False) + eps).rsqrt().view(1, -1, 1, 1)
    gamma, beta = p["norm.weight"].view(1, -1, 1, 1), p["norm.bias"].view(1, -1, 1, 1)
    e = torch.zeros_like(a, requires_grad=True)
    zz = F.conv2d(a + e, p["mid.weight"], p["mid.bias"], padding=1)  # e moves A alone, not the statistics
    if mode == "exact":
        yy = gamma * (zz - mean) * inv + beta
    else:  # value as above; dy/dz = gamma * sg(invstd); the value's dependence on the statistics kept
        sg = inv.detach()
        yy = gamma * (zz - mean) * sg + gamma * (zz.detach() - mean.detach()) * (inv - sg) + beta
    logits = F.conv2d(ACTS[act]()(yy), p["head.weight"], p["head.bias"])
    g = torch.autograd.grad((logits * masks_of(y)).sum(), e, create_graph=True)[0]
    loss = saliency_mse(gradcam(a, g), t_maps)
    names = list(p)
    params = [p[n] for n in names]
    return _zeros_for_unused(names, params, torch.autograd.grad(loss, params, allow_unused=True))


def _zeros_for_unused(names, params, grads) -> dict:
    """None (a parameter L_sa does not reach, e.g. the head's bias) as zeros, so both sides compare."""
    return {n: torch.zeros_like(t) if g is None else g for n, t, g in zip(names, params, grads)}


def setup(act: str, seed: int = 0):
    model = randomise(Tiny(act=ACTS[act]()), seed=seed).double().train()
    x, y = batch(5, seed=seed + 10, size=10, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed + 20)
    t_maps = torch.rand(5, 1, 10, 10, generator=g, dtype=torch.float64)
    return model, x, y, t_maps


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("mode", CAM_BN_GRADS)
def test_saliency_gradients_match_the_float64_autograd_reference(mode, act):
    model, x, y, t_maps = setup(act)
    mine, _ = project_grads(model, x, y, t_maps, mode)
    ref = reference_grads(model, x, y, t_maps, mode, act)
    assert mine.keys() == ref.keys()
    for name in ref:
        scale = ref[name].abs().max().item()
        err = (mine[name] - ref[name]).abs().max().item()
        assert err <= 1e-10 * max(scale, 1e-3), (name, err, scale)


@pytest.mark.parametrize("act", list(ACTS))
def test_exact_keeps_the_map_and_changes_the_gradient(act):
    """Same map, bit for bit; different parameter gradients (so the test above tells them apart)."""
    model, x, y, t_maps = setup(act, seed=1)
    g_c, m_c = project_grads(model, x, y, t_maps, "constant")
    g_e, m_e = project_grads(model, x, y, t_maps, "exact")
    assert torch.equal(m_c, m_e)
    rel = max(((g_e[n] - g_c[n]).norm() / g_e[n].norm()).item() for n in g_e if g_e[n].norm() > 0)
    assert rel > 1e-3, rel


def test_exact_is_not_the_reference_for_constant():
    """Control: each reference tells the modes apart by far more than the tolerance."""
    model, x, y, t_maps = setup("silu", seed=2)
    mine, _ = project_grads(model, x, y, t_maps, "exact")
    other = reference_grads(model, x, y, t_maps, "constant", "silu")
    assert max((mine[n] - other[n]).abs().max().item() for n in mine) > 1e-6


def test_saliency_maps_passes_cam_bn_grad_through():
    """trainables.saliency.saliency_maps reads distill.cam_bn_grad (float32, a train-mode student)."""
    torch.manual_seed(0)
    base = randomise(Tiny(act=nn.SiLU()), seed=3).train()
    teacher = randomise(Tiny(), seed=4).eval().requires_grad_(False)
    x, y = batch(4, seed=5, size=10)
    grads = {}
    for mode in (*CAM_BN_GRADS, None):
        student = copy.deepcopy(base)
        prepare_cam_path(student, [CAM_LAYER], x[:1])
        with tap(student, {"cam": CAM_LAYER}) as sf:
            s_logits = student(x)
        with torch.enable_grad(), tap(teacher, {"cam": CAM_LAYER}, leaf=True) as tf:
            t_logits = teacher(x)
        step = Step(x, y, s_logits, t_logits, {"cam": sf["cam"]}, {"cam": tf["cam"]})
        cfg = {"cam": "gradcam", "cam_classes": "all", **({"cam_bn_grad": mode} if mode else {})}
        saliency_mse(*saliency_maps(step, cfg)).backward()
        grads[mode] = student.stem[0].weight.grad.clone()
    torch.testing.assert_close(grads[None], grads[DEFAULT_CAM_BN_GRAD], rtol=0, atol=0)
    assert (grads["exact"] - grads["constant"]).norm() > 1e-3 * grads["exact"].norm()


def test_an_unknown_mode_is_refused_naming_the_allowed():
    with pytest.raises(ValueError, match="cam_bn_grad 'stale'.*constant, exact"):
        with constant_batch_stats("stale"):
            pass


def test_the_spec_key_is_validated_and_read_by_the_saliency_term():
    assert typing.get_args(DistillSpec.model_fields["cam_bn_grad"].annotation) == CAM_BN_GRADS
    assert DistillSpec().cam_bn_grad == DEFAULT_CAM_BN_GRAD
    assert DistillSpec(cam_bn_grad="exact").cam_bn_grad == "exact"
    with pytest.raises(SpecError) as err:
        validate(DistillSpec, {"cam_bn_grad": "full"})
    assert "cam_bn_grad" in str(err.value) and "\n" not in str(err.value).strip()
    assert "cam_bn_grad" in READS["sa"]
