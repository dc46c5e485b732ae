"""The step benchmark and what it made faster.

- `orchestrator bench` smoke run (tiny crop, 2 steps): the JSON holds every variant with its
  figures and both ratios, and the targets.
- FastGradConv2d (trainables.convgrad): first-order gradients bit for bit those of nn.Conv2d,
  second-order ones equal up to rounding, also under bf16 autocast; only the convolutions after
  the CAM layer are swapped.
- The XGD step with the swapped convolutions gives the loss and the update of the built-in
  path (the loop tests check determinism, exact resume and that beta trains the student).
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.bench.steps import (
    CACHED,
    DEFAULT_VARIANTS,
    GRADCAM,
    PI,
    VARIANTS,
    BenchSettings,
    fixed_batch,
    variant_config,
)
from orchestrator.cli import main
from trainables.cam_path import prepare_cam_path
from trainables.convgrad import FastGradConv2d
from trainables.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_bench_smoke_writes_every_variant_and_ratio(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--crop",
            "32",
            "--batch",
            "2",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--teacher",
            "r18",
            "--threads",
            "1",
            "--profile",
            "xgd_gradcam",
            "--out",
            str(tmp_path),
            "--name",
            "smoke",
            "--no-sweep",
        ]
    )
    assert rc == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert "orchestration" not in result and result["total_wall_s"] >= result["bench_wall_s"]
    rows = result["variants"]
    assert list(rows) == DEFAULT_VARIANTS and set(VARIANTS) < set(rows)
    for name, row in rows.items():
        assert len(row["times_s"]) == 2 and row["median_s"] > 0 and row["cpu_median_s"] > 0, name
        assert row["ratio_pi"] > 0 and row["ratio_gradcam"] > 0 and row["peak_mem_mb"] > 0, name
    assert rows[PI]["ratio_pi"] == 1.0 and rows[GRADCAM]["ratio_gradcam"] == 1.0
    assert rows[GRADCAM]["saliency_s"] > 0 and rows["ce"]["saliency_s"] == 0
    cached = [v for v in rows if v.endswith(CACHED)]
    assert cached == [
        f"{v}{CACHED}" for v in (PI, "xgd_gradcam", "xgd_gradcam++", "xgd_hirescam", "xgd_eigengradcam", "xgd_layercam")
    ]
    assert all(rows[v]["cached_teacher"] and rows[v]["saliency_s"] > 0 for v in cached[1:])
    assert set(result["targets"]) == {"xgd_gradcam_vs_pi", "xgd_gradcam_cached_vs_pi"} | {
        f"xgd_{c}_vs_gradcam" for c in ("gradcam++", "hirescam", "eigengradcam", "layercam")
    }
    assert result["machine"]["torch_threads"] == 1 and result["load_avg_before"]
    phases = result["profiles"]["xgd_gradcam"]["phases_s"]
    assert {"step.backward", "cam.student", "cam.teacher"} <= set(phases)
    assert "variant" in capsys.readouterr().out


def test_bench_rejects_unknown_variant_and_bad_sweep_sizes(capsys):
    assert main(["bench", "--variants", "pi,xgd_scorecam"]) == 2
    assert main(["bench", "--variants", "pi,at@cache"]) == 2  # AT reads teacher features: no cached form
    assert main(["bench", "--sweep-trials", "1"]) == 2
    assert "--sweep-trials must be >= 2" in capsys.readouterr().err


CONVS = [
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),  # depthwise
    dict(in_channels=6, out_channels=4, kernel_size=1),  # pointwise
    dict(in_channels=6, out_channels=4, kernel_size=3, stride=2, padding=1, bias=True),  # strided
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, groups=3),
]  # dilated, grouped


def _pair(kw: dict, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    c = kw["out_channels"]
    ref = nn.Sequential(nn.Conv2d(**kw), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 3, 1))
    fast = copy.deepcopy(ref)
    for m in fast.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = FastGradConv2d
    return ref, fast


def _grads(model: nn.Module, x: torch.Tensor, second: bool) -> list[torch.Tensor]:
    """Parameter and input gradients of a loss that (second=True) contains d(out)/dx, as XGD's does."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    loss = out.square().mean()
    if second:
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = loss + g.mean(dim=(2, 3)).square().sum() + (g * x).relu().mean()
    params = [p for p in model.parameters()]
    return list(torch.autograd.grad(loss, [x, *params]))


@pytest.mark.parametrize("kw", CONVS)
def test_fast_conv_first_order_is_bitwise_and_second_order_matches(kw):
    ref, fast = _pair(kw)
    x = torch.randn(3, 6, 9, 10)
    for a, b in zip(_grads(ref, x, False), _grads(fast, x, False)):
        assert torch.equal(a, b)
    for a, b in zip(_grads(ref, x, True), _grads(fast, x, True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * max(1.0, a.abs().max().item()))


def test_fast_conv_under_bf16_autocast_matches_builtin():
    ref, fast = _pair(CONVS[0])
    x = torch.randn(2, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ga, gb = _grads(ref, x, True), _grads(fast, x, True)
        assert fast(x).dtype == ref(x).dtype == torch.bfloat16
    for a, b in zip(ga, gb):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b.float(), a.float(), rtol=0.05, atol=0.05 * max(1.0, a.abs().max().item()))


def test_only_convolutions_after_the_cam_layer_are_swapped():
    model = create_model("deeplabv3plus", "resnet18", 5)
    state = copy.deepcopy(model.state_dict())
    swapped = prepare_cam_path(model, ["decoder.block1"], torch.zeros(1, 3, 64, 64))
    assert swapped == ["decoder.block2.0.0", "decoder.block2.0.1", "decoder.block2.1", "segmentation_head.0"]
    assert type(model.decoder.aspp[0].convs[0][0]) is nn.Conv2d and type(model.encoder.conv1) is nn.Conv2d
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # same parameters and keys
    psp = create_model("pspnet", "resnet18", 5)
    assert prepare_cam_path(psp, ["decoder.conv"], torch.zeros(1, 3, 64, 64)) == ["segmentation_head.0"]


def test_xgd_step_with_fast_convs_matches_builtin_step():
    """Same losses (the saliency term's CAM gradient runs other convolution kernels, so up to rounding) and,
    after two SGD steps, the same weights up to rounding."""
    from trainables.step import build_trainer, train_step

    s = BenchSettings(crop=64, batch=2, teacher="r18")
    cfg = variant_config(s, "xgd_gradcam")
    x, y = fixed_batch(cfg)
    torch.manual_seed(0)
    teacher = create_model("deeplabv3plus", "resnet18", 5).eval().requires_grad_(False)
    runs = []
    for builtin in (False, True):
        torch.manual_seed(1)
        student = create_model("deeplabv3plus", "resnet18", 5)
        tr = build_trainer(cfg, student, teacher, x[:1], torch.device("cpu"), 10)
        if builtin:
            for m in student.modules():
                if type(m) is FastGradConv2d:
                    m.__class__ = nn.Conv2d
        assert any(type(m) is FastGradConv2d for m in student.modules()) != builtin
        torch.manual_seed(2)  # ASPP dropout
        losses = [train_step(tr, x, y).losses for _ in range(2)]
        runs.append((losses, {k: v.clone() for k, v in student.state_dict().items()}))
    (fast_l, fast_w), (ref_l, ref_w) = runs
    torch.testing.assert_close(fast_l[0], ref_l[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fast_l[1], ref_l[1], rtol=1e-4, atol=1e-5)  # the maps are min-max normalised
    for k in ref_w:
        if ref_w[k].is_floating_point():
            torch.testing.assert_close(fast_w[k], ref_w[k], rtol=1e-4, atol=1e-6, msg=k)
    assert F.mse_loss(fast_w["decoder.block2.0.1.weight"], ref_w["decoder.block2.0.1.weight"]) < 1e-12


def test_teacher_graph_starts_at_its_cam_layer():
    """Under grad mode with a leaf tap at block1, the frozen teacher records only block2 and the head."""
    from trainables.taps import tap

    teacher = create_model("deeplabv3plus", "resnet18", 5).eval().requires_grad_(False)
    with torch.enable_grad(), tap(teacher, {"cam": "decoder.block1"}, leaf=True) as feats:
        out = teacher(torch.zeros(1, 3, 64, 64))
    seen, stack, convs = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        convs += "Convolution" in type(node).__name__
        stack.extend(n for n, _ in node.next_functions)
    assert convs == 3  # depthwise + pointwise of block2, the head's conv; nothing of the encoder or ASPP
    assert feats["cam"].is_leaf and feats["cam"].requires_grad


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sweep_overhead_on_stub_trials(ray_cluster):
    """The orchestration figures come from a real (stub-trial) sweep per executor: 2 trials, one at a time."""
    from orchestrator.bench.sweep import sweep_overhead

    out = sweep_overhead(2)
    assert set(out["by_executor"]) == {"tune", "train"} and out["executor"] == "tune"
    for r in out["by_executor"].values():
        assert r["completed"] == 2 and len(r["per_trial_overhead_all_s"]) == 1
        assert 0 < r["per_trial_overhead_s"] < 300 and r["trials_per_min"] > 0
        assert r["breakdown_s"]["trial_fn_to_step"] is not None and isinstance(r["met"], bool)
    assert out["per_trial_overhead_s"] == out["by_executor"]["tune"]["per_trial_overhead_s"]
    deadline = time.time() + 30
    while ray_cluster.available_resources().get("CPU", 0) != ray_cluster.cluster_resources().get("CPU", 0):
        assert time.time() < deadline, "the bench's stub sweep left CPUs reserved"
        time.sleep(0.5)
