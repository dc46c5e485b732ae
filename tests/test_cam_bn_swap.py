"""No silent BatchNorm after the student's CAM layer (trainables.cam_path): every layer there with
batch statistics is either given the per-image CAM gradient or refused in one line.

Oracle for 'per image': an eval-mode copy of the original student whose running statistics are this
batch's statistics, explained one image at a time (a batch of 1), in float64. Before the check, a
SyncBatchNorm or timm BatchNormAct2d after the CAM layer was left as it was and mixed the batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, EvoNorm2dB0, SyncBatchNormAct
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import trainables.batchnorm as batchnorm
import trainables.cam_path as cam_path
from cam_bn_models import CAM_LAYER, K, Tiny, batch, randomise
from trainables.batchnorm import constant_batch_stats
from trainables.cam_path import prepare_cam_path
from trainables.saliency import target_grads
from trainables.taps import tap

C = 6
pytestmark = pytest.mark.usefixtures("one_thread")


class CustomBN(nn.modules.batchnorm._BatchNorm):
    """A user's own _BatchNorm subclass: plain batch statistics, but not a type the swap knows."""

    def _check_input_dim(self, input):
        pass


def masks_of(y: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, K).permute(0, 3, 1, 2).double()


def cam_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The student's CAM gradient as L_sa takes it (trainables.saliency.target_grads, constant statistics)."""
    with tap(model, {"cam": CAM_LAYER}) as f:
        logits = model(x)
    with constant_batch_stats():
        return target_grads(logits, f["cam"], masks_of(y)).detach()


def batch_stat_copy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Eval-mode copy whose BatchNorms' running statistics are the batch statistics of `x` (biased variance)."""
    m = copy.deepcopy(model).train()
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        bn.register_forward_pre_hook(lambda mod, inp: seen.__setitem__(mod, inp[0].detach()))
        for bn in m.modules()
        if isinstance(bn, nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    for bn, inp in seen.items():
        bn.running_mean.copy_(inp.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(inp.var(dim=(0, 2, 3), unbiased=False))
    return m.eval()


def each_alone(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Image i's CAM gradient from a batch holding image i alone."""
    out = []
    for i in range(len(x)):
        with torch.enable_grad(), tap(model, {"cam": CAM_LAYER}) as f:
            logits = model(x[i : i + 1])
        out.append(target_grads(logits, f["cam"], masks_of(y[i : i + 1])))
    return torch.cat(out).detach()


PER_IMAGE = {
    "SyncBatchNorm": lambda: nn.SyncBatchNorm(C),
    "timm BatchNormAct2d": lambda: BatchNormAct2d(C, act_layer=nn.SiLU),
}


@pytest.mark.parametrize("kind", list(PER_IMAGE))
def test_batchnorm_variants_get_the_per_image_cam(kind):
    torch.manual_seed(0)
    student = randomise(Tiny(PER_IMAGE[kind]()), seed=1).double().train()
    x, y = batch(4, seed=2, dtype=torch.float64)
    oracle = each_alone(batch_stat_copy(student, x), x, y)
    swapped = prepare_cam_path(student, [CAM_LAYER], x[:1])
    torch.testing.assert_close(cam_grads(student, x, y), oracle, rtol=1e-9, atol=1e-12)
    assert "norm" in swapped


@pytest.mark.parametrize("kind", list(PER_IMAGE))
def test_the_oracle_tells_a_mixed_cam_apart(kind):
    """Control: the same batch without the constant statistics (plain train-mode backward) is far off."""
    student = randomise(Tiny(PER_IMAGE[kind]()), seed=1).double().train()
    x, y = batch(4, seed=2, dtype=torch.float64)
    oracle = each_alone(batch_stat_copy(student, x), x, y)
    with tap(student, {"cam": CAM_LAYER}) as f:
        logits = student(x)
    mixed = target_grads(logits, f["cam"], masks_of(y)).detach()
    assert (mixed - oracle).abs().max() > 1e-3 * oracle.abs().max()


REFUSED = {
    "custom _BatchNorm subclass": (lambda: CustomBN(C), "CustomBN"),
    "timm SyncBatchNormAct": (lambda: SyncBatchNormAct(C), "SyncBatchNormAct"),
    "timm EvoNorm2dB0 (batch variance, not a _BatchNorm)": (lambda: EvoNorm2dB0(C), "EvoNorm2dB0"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_other_batch_statistics_layers_are_refused_in_one_line(kind):
    make, type_name = REFUSED[kind]
    student = Tiny(make()).train()
    with pytest.raises(ValueError) as err:
        prepare_cam_path(student, [CAM_LAYER], torch.zeros(1, 3, 8, 8))
    msg = str(err.value)
    assert type(err.value).__name__ == "CamPathError"
    assert "\n" not in msg and "'norm'" in msg and type_name in msg and CAM_LAYER in msg, msg


def test_a_nested_refused_layer_is_named_by_its_dotted_path():
    student = Tiny(nn.Sequential(nn.Identity(), CustomBN(C))).train()
    with pytest.raises(ValueError, match=r"'norm\.1' \(.*CustomBN\)"):
        prepare_cam_path(student, [CAM_LAYER], torch.zeros(1, 3, 8, 8))


def test_a_layer_before_the_cam_layer_is_not_refused():
    student = Tiny().train()
    student.stem[1] = CustomBN(C)  # runs before the CAM layer's output: not on the CAM's gradient path
    assert "norm" in prepare_cam_path(student, [CAM_LAYER], torch.zeros(1, 3, 8, 8))


PASS = {
    "InstanceNorm2d with running statistics": lambda: nn.InstanceNorm2d(C, affine=True, track_running_stats=True),
    "torchvision FrozenBatchNorm2d": lambda: FrozenBatchNorm2d(C),
    "GroupNorm": lambda: nn.GroupNorm(2, C),
}


@pytest.mark.parametrize("kind", list(PASS))
def test_per_image_norms_pass_and_their_cam_is_each_images_own(kind):
    """No BatchNorm anywhere: image i's CAM in the batch is its CAM alone, literally (train mode)."""
    student = randomise(Tiny(PASS[kind](), stem_norm=False), seed=3).double().train()
    x, y = batch(4, seed=4, dtype=torch.float64)
    prepare_cam_path(student, [CAM_LAYER], x[:1])
    torch.testing.assert_close(cam_grads(student, x, y), each_alone(student, x, y), rtol=1e-9, atol=1e-12)


def test_sync_batchnorm_across_processes_is_refused(monkeypatch):
    student = Tiny(nn.SyncBatchNorm(C)).train()
    monkeypatch.setattr(cam_path, "sync_world", lambda _m: 2)
    with pytest.raises(ValueError, match=r"'norm' \(.*SyncBatchNorm\).*across 2 processes"):
        prepare_cam_path(student, [CAM_LAYER], torch.zeros(1, 3, 8, 8))


def test_a_swapped_sync_batchnorm_refuses_to_train_once_processes_join(monkeypatch):
    student = Tiny(nn.SyncBatchNorm(C)).train()
    prepare_cam_path(student, [CAM_LAYER], torch.zeros(1, 3, 8, 8))
    monkeypatch.setattr(batchnorm, "sync_world", lambda _m: 4)
    with pytest.raises(RuntimeError, match="spans 4 processes"):
        student(torch.zeros(2, 3, 8, 8))
    student.eval()
    assert student(torch.zeros(2, 3, 8, 8)).shape == (2, K, 8, 8)  # eval: running statistics, per image


def test_the_timm_swap_keeps_forward_running_stats_and_state_dict():
    torch.manual_seed(0)
    ref = randomise(BatchNormAct2d(C, act_layer=nn.SiLU), seed=5).train()
    mine = copy.deepcopy(ref)
    mine.__class__ = cam_path.SWAPS[BatchNormAct2d]
    x = torch.randn(3, C, 5, 5)
    torch.testing.assert_close(mine(x), ref(x))
    torch.testing.assert_close(mine.running_var, ref.running_var)
    assert mine.num_batches_tracked == ref.num_batches_tracked == 1
    assert mine.state_dict().keys() == ref.state_dict().keys()


def test_the_cli_prints_the_refusal_as_one_line(monkeypatch, tmp_path, capsys):
    """`orchestrator train` runs the trainer in-process: the refusal is a user error (exit 2), no traceback."""
    import orchestrator.run.train as run_train
    from orchestrator.cli import main

    def train_with_custom_bn(spec):
        prepare_cam_path(Tiny(CustomBN(C)).train(), [CAM_LAYER], torch.zeros(1, 3, 8, 8))

    monkeypatch.setattr(run_train, "run_training", train_with_custom_bn)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: refused\n")
    assert main(["train", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'norm' (") and "CustomBN" in err and "\n" not in err, err
