"""Saliency time (trainables.timing.SpanTimer): host seconds on the CPU; on CUDA event pairs that
the step only records and the loop (once per epoch) or the bench (once per timed step) reads.
Without a GPU the CUDA path runs with a fake event class whose elapsed_time fails unless the end
event was waited for, as cudaEventElapsedTime does for an event that has not completed."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

import trainables.loop
import trainables.step
from orchestrator.bench.steps import BenchSettings, build_trainers, fixed_batch, measure, variant_config
from orchestrator.spec.train import TrainSpec
from trainables import checkpoint
from trainables.data import class_names
from trainables.loop import train_loop
from trainables.losses import TERMS
from trainables.models import create_model
from trainables.step import train_step
from trainables.timing import SpanTimer

SPAN_MS = 1.5  # the fake device clock advances this much between two consecutive records


class FakeEvent:
    """torch.cuda.Event's timing interface on a virtual clock: each record() is SPAN_MS later."""

    clock = itertools.count()
    reads = 0  # elapsed_time calls, all instances

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t: float | None = None
        self.waited = False

    def record(self) -> None:
        self.t = next(FakeEvent.clock) * SPAN_MS

    def synchronize(self) -> None:
        assert self.t is not None, "synchronize on an event never recorded"
        self.waited = True

    def elapsed_time(self, end: FakeEvent) -> float:
        if not end.waited:
            raise RuntimeError("CUDA error: device not ready")
        FakeEvent.reads += 1
        return end.t - self.t


class FakeCudaTimer(SpanTimer):
    """A SpanTimer on the CUDA path (fake events) whatever the device; counts its reads."""

    event_class = FakeEvent
    resolved: list[FakeCudaTimer] = []

    def __init__(self, device) -> None:
        super().__init__("cuda")

    def seconds(self) -> float:
        FakeCudaTimer.resolved.append(self)
        return super().seconds()


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeCudaTimer.resolved = []
    FakeEvent.reads = 0
    monkeypatch.setattr(trainables.step, "SpanTimer", FakeCudaTimer)
    monkeypatch.setattr(trainables.loop, "SpanTimer", FakeCudaTimer)
    return FakeCudaTimer


def test_cpu_spans_add_host_seconds():
    timer = SpanTimer("cpu")
    assert timer.seconds() == 0.0
    for _ in range(2):
        with timer:
            time.sleep(0.02)
    assert not timer.events and 0.04 <= timer.seconds() < 1.0
    other = SpanTimer(torch.device("cpu"))
    with other:
        time.sleep(0.01)
    total = timer.seconds() + other.seconds()
    assert timer.add(other).seconds() == pytest.approx(total)
    with pytest.raises(RuntimeError, match="do not nest"), timer, timer:
        pass


def test_cuda_spans_record_event_pairs_and_read_them_only_in_seconds():
    timer = FakeCudaTimer("cuda")
    with timer:
        pass
    epoch = FakeCudaTimer("cuda").add(timer)
    with epoch:
        pass
    assert len(epoch.events) == 2 and FakeEvent.reads == 0 and not any(e.waited for _, e in epoch.events)
    with pytest.raises(RuntimeError, match="not ready"):  # reading before the events complete fails...
        timer.events[0][0].elapsed_time(timer.events[0][1])
    assert epoch.seconds() == pytest.approx(2 * SPAN_MS / 1000)  # ...seconds() waits for them first
    assert epoch.host_s == 0.0


def test_only_the_sa_term_is_a_saliency_term():
    assert [name for name, term in TERMS.items() if term.saliency] == ["sa"]


@pytest.fixture(scope="module")
def trainers():
    s = BenchSettings(crop=32, batch=2, teacher="r18", variants=["pi", "xgd_gradcam"], seed=0)
    configs = {v: variant_config(s, v) for v in s.variants}
    x, y = fixed_batch(configs["pi"])
    return build_trainers(s, configs, x, torch.device("cpu")), x, y


@pytest.mark.slow  # the trainers fixture builds real teacher and student models (about 10 s here)
def test_step_times_its_saliency_term_in_host_seconds_on_cpu(trainers):
    trs, x, y = trainers
    xgd, pi = train_step(trs["xgd_gradcam"], x, y).saliency, train_step(trs["pi"], x, y).saliency
    assert xgd.host_s > 0 and not xgd.events
    assert pi.seconds() == 0.0


@pytest.mark.slow  # the trainers fixture builds real teacher and student models (about 10 s here)
def test_step_records_one_event_pair_per_saliency_term_and_reads_none(trainers, fake_cuda):
    trs, x, y = trainers
    xgd, pi = train_step(trs["xgd_gradcam"], x, y).saliency, train_step(trs["pi"], x, y).saliency
    assert len(xgd.events) == 1 and not pi.events and xgd.host_s == 0.0
    assert FakeEvent.reads == 0 and not fake_cuda.resolved  # the step itself never waits on the device


def test_bench_reads_each_timed_steps_device_time(fake_cuda):
    s = BenchSettings(iters=3, warmup=1)

    def step():
        out = type("Out", (), {})()
        out.saliency = fake_cuda("cuda")
        with out.saliency:
            pass
        return out

    rows = measure({"xgd_gradcam": step}, s, torch.device("cpu"))
    assert rows["xgd_gradcam"]["saliency_s"] == pytest.approx(SPAN_MS / 1000)
    assert len(fake_cuda.resolved) == s.iters  # timed steps only, each read once


def _spec(tmp, name: str, **sections) -> dict:
    raw = {
        "name": name,
        "seed": 0,
        "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "data": {
            "kind": "synthetic",
            "num_train": 4,
            "num_val": 2,
            "num_test": 2,
            "image_size": 48,
            "crop": 32,
            "batch_size": 2,
        },
        "optim": {"name": "sgd", "lr": 0.01, "epochs": 1},
        "run": {"out_dir": str(tmp), "device": "cpu", "max_steps_per_epoch": 2, "explain": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return TrainSpec.model_validate(raw).model_dump()


@pytest.mark.slow  # 46-118 s measured on a shared, loaded 2-core machine
def test_loop_reads_device_time_once_per_epoch(tmp_path, fake_cuda):
    cfg = _spec(tmp_path, "xgd", optim={"epochs": 2}, distill={"method": "xgd"})
    torch.manual_seed(0)
    teacher = create_model("deeplabv3plus", "resnet18", len(class_names(cfg["data"])))  # random: timing only
    checkpoint.save(
        {
            "model": teacher.state_dict(),
            "classes": class_names(cfg["data"]),
            "model_cfg": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        },
        tmp_path / "teacher.pt",
    )
    cfg["teacher"] = {"checkpoint": str(tmp_path / "teacher.pt")}
    out = train_loop(cfg)
    assert len(fake_cuda.resolved) == 2  # one read per epoch, none per step
    assert [len(t.events) for t in fake_cuda.resolved] == [2, 2]  # 2 steps, one saliency span each
    assert out["saliency_time_s"] == pytest.approx(SPAN_MS / 1000)  # device seconds per step
