"""The worker loop as plain Python on tiny synthetic data: determinism, exact resume, and
that the saliency term really trains the student (the published code's beta trained nothing)."""

import json
import math
from pathlib import Path

import pytest
import torch

from orchestrator.run.train import run_training
from orchestrator.spec.train import TrainSpec
from trainables import checkpoint
from trainables.loop import train_loop
from trainables.reporting import FolderReporter

TINY = {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 32, "batch_size": 4}


def spec(tmp, name, **kw) -> dict:
    raw = {
        "name": name,
        "seed": 0,
        "data": TINY,
        "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "optim": {"name": "sgd", "lr": 0.05, "epochs": 3},
        "run": {"out_dir": str(tmp), "device": "cpu"},
    }
    for key, value in kw.items():
        section, _, field = key.partition("__")
        raw.setdefault(section, {})
        raw[section] = {**raw[section], field: value} if field else value
    return TrainSpec.model_validate(raw).model_dump()


@pytest.fixture(scope="module")
def teacher(module_tmp):
    tmp = module_tmp
    cfg = spec(tmp, "teacher", optim__epochs=1)
    train_loop(cfg)
    return str(tmp / "teacher" / "best.pt")


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    a = train_loop(spec(tmp_path, "a", optim__epochs=2))
    b = train_loop(spec(tmp_path, "b", optim__epochs=2))
    keys = [k for k in a if k.startswith(("train_", "val_"))]
    assert keys and all(a[k] == b[k] for k in keys)


@pytest.mark.slow
def test_loader_workers_do_not_change_training(tmp_path):
    """Items come from (seed, epoch, index) whatever process loads them: the teacher's cache key
    leaves data.workers out (orchestrator.run.teachers.NOT_THE_TEACHER) on the strength of this."""
    runs = [train_loop(spec(tmp_path, f"w{w}", data={**TINY, "workers": w}, optim__epochs=2)) for w in (0, 2)]
    keys = [k for k in runs[0] if k.startswith(("train_", "val_", "test_miou"))]
    assert keys and all(runs[0][k] == runs[1][k] for k in keys), keys


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_mid_run_checkpoint_matches_uninterrupted(tmp_path, teacher, monkeypatch, workers):
    """Also with 2 persistent loader workers, whose processes restart with the resumed run."""
    data = {**TINY, "workers": workers}
    full = train_loop(spec(tmp_path, "full", data=data, teacher={"checkpoint": teacher}))

    original = FolderReporter.report

    def killed_after_epoch_1(self, metrics, state, best):
        original(self, metrics, state, best)
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt  # the process dies right after its epoch-1 checkpoint

    monkeypatch.setattr(FolderReporter, "report", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_loop(spec(tmp_path, "part", data=data, teacher={"checkpoint": teacher}))
    monkeypatch.undo()
    mid = tmp_path / "part" / "checkpoint.pt"
    assert checkpoint.load(mid)["epoch"] == 1
    cfg = spec(tmp_path, "part", data=data, teacher={"checkpoint": teacher})
    cfg["run"]["resume"] = str(mid)
    resumed = train_loop(cfg)
    assert resumed["epoch"] == 2
    for k in ("train_loss", "train_seg", "train_pi", "train_sa", "val_miou"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), k


@pytest.mark.slow
def test_killed_after_its_last_checkpoint_resumes_to_the_same_result(tmp_path, teacher, monkeypatch):
    """Killed after the last epoch's checkpoint but before it finished (metrics.json unwritten): the
    resume trains nothing and returns the whole run's figures, test and explanation metrics included
    (the old loop returned {}); and a log line written before a kill that lost its checkpoint is not
    left to appear twice."""
    kw = {"teacher": {"checkpoint": teacher}, "optim__epochs": 2}
    full = train_loop(spec(tmp_path, "full", **kw))

    original = FolderReporter.report

    def killed_after_last(self, metrics, state, best):
        original(self, metrics, state, best)
        if metrics["epoch"] == 1:
            with open(self.dir / "metrics.jsonl", "a") as f:  # a later epoch's line, its checkpoint lost
                f.write(json.dumps({"epoch": 2, "train_loss": 0.0}) + '\n{"epoch": 3, "trunc')
            raise KeyboardInterrupt

    monkeypatch.setattr(FolderReporter, "report", killed_after_last)
    with pytest.raises(KeyboardInterrupt):
        train_loop(spec(tmp_path, "part", **kw))
    monkeypatch.undo()
    cfg = spec(tmp_path, "part", **kw)
    cfg["run"]["resume"] = str(tmp_path / "part" / "checkpoint.pt")
    resumed = train_loop(cfg)
    for k in ("epoch", "train_loss", "val_miou", "best_val_miou", "test_miou", "expl_sal_spearman"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), k
    lines = [json.loads(ln) for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1]
    assert json.loads((tmp_path / "part" / "metrics.json").read_text())["test_miou"] == pytest.approx(full["test_miou"])


@pytest.mark.slow
def test_beta_changes_trained_weights(tmp_path, teacher):
    runs = {}
    for beta in (0.0, 1.0):
        cfg = spec(tmp_path, f"beta{beta}", teacher={"checkpoint": teacher}, distill__beta=beta, optim__epochs=1)
        out = train_loop(cfg)
        runs[beta] = (checkpoint.load(tmp_path / f"beta{beta}" / "checkpoint.pt")["model"], out)
    assert "train_sa" in runs[1.0][1] and "train_sa" not in runs[0.0][1]
    assert -1 <= runs[1.0][1]["expl_sal_spearman"] <= 1 and 0 <= runs[1.0][1]["expl_focus"] <= 1
    assert runs[1.0][1]["train_sa"] > 0
    w0, w1 = runs[0.0][0], runs[1.0][0]
    changed = [k for k in w0 if w0[k].is_floating_point() and not torch.allclose(w0[k], w1[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.block1") for k in changed)


@pytest.mark.slow
def test_run_training_writes_checkpoints_and_metrics(tmp_path):
    out = run_training(TrainSpec.model_validate(spec(tmp_path, "t", optim__epochs=2)))
    d = tmp_path / "t"
    assert (d / "best.pt").exists() and (d / "checkpoint.pt").exists() and (d / "metrics.json").exists()
    m = out["metrics"]
    assert 0 <= m["val_miou"] <= 1 and m["params"] > 1e6 and m["gflops"] > 0 and m["latency_ms"] > 0
    assert m["peak_mem_mb"] > 50 and "gpu_util_pct" not in m  # the epoch's peak RSS on the CPU
    lines = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    assert all(ln["peak_mem_mb"] > 50 for ln in lines)  # every epoch
    best = checkpoint.load(out["checkpoint"])
    assert best["classes"][1] == "cable" and best["model_cfg"]["encoder"] == "resnet18"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["xgd+cwd", "attnfd", "skd"])
def test_baseline_methods_train_through_the_loop(tmp_path, teacher, method):
    out = train_loop(
        spec(
            tmp_path,
            method.replace("+", "_"),
            teacher={"checkpoint": teacher},
            distill__method=method,
            optim__epochs=1,
            run__max_steps_per_epoch=1,
        )
    )
    assert math.isfinite(out["train_loss"]) and "val_miou" in out
    assert any(k.startswith("train_") and k not in ("train_loss", "train_seg", "train_pi") for k in out)


def test_a_restored_train_checkpoint_replays_its_epoch_once(tmp_path, monkeypatch):
    """A Train run persists its checkpoint before the sweep's driver logs the epoch: the checkpoint
    carries that epoch's metrics and a restored run reports them once more (no checkpoint), so a
    driver killed in between still logs every epoch. Outside Train nothing is replayed."""
    import shutil

    from trainables import reporting

    class FakeTrain:  # ray.train's report/get_checkpoint/Checkpoint, keeping what it was given
        class Checkpoint:
            def __init__(self, path):
                self.path = path

            @classmethod
            def from_directory(cls, d):
                kept = tmp_path / f"ckpt{len(list(tmp_path.glob('ckpt*')))}"
                shutil.copytree(d, kept)
                return cls(str(kept))

            def as_directory(self):
                import contextlib

                return contextlib.nullcontext(self.path)

        def __init__(self, restore_from=None):
            self.reports, self.restore_from = [], restore_from

        def report(self, metrics, checkpoint=None):
            self.reports.append((metrics, checkpoint))

        def get_checkpoint(self):
            return self.restore_from

    state = {"epoch": 1, "model": {"w": torch.ones(2)}}
    first = FakeTrain()
    rep = reporting.RayReporter(first)
    rep.report({"epoch": 1, "val_miou": 0.25, "iou_c0": float("nan")}, state, best=state)
    ((metrics, ckpt),) = first.reports
    assert json.loads(Path(ckpt.path, reporting.METRICS_FILE).read_text()) == {"epoch": 1, "val_miou": 0.25}

    monkeypatch.setattr(reporting, "in_ray_train", lambda: True)
    resumed = FakeTrain(restore_from=ckpt)
    restored = reporting.RayReporter(resumed).restore()
    assert restored["epoch"] == 1 and torch.equal(restored["model"]["w"], torch.ones(2))
    assert resumed.reports == [({"epoch": 1, "val_miou": 0.25}, None)]

    monkeypatch.setattr(reporting, "in_ray_train", lambda: False)  # a one-process trial: no replay
    again = FakeTrain(restore_from=ckpt)
    reporting.RayReporter(again).restore()
    assert again.reports == []


@pytest.mark.slow
def test_held_out_split_is_evaluated_once_with_the_best_on_val_weights(tmp_path):
    """metrics.json's test_* equal best.pt evaluated on the test split by hand (a model rebuilt from
    the file, its own confusion matrix); no epoch before the last reports a test metric."""
    from torch.utils.data import DataLoader

    from trainables import metrics as M
    from trainables.data import build_dataset, pad_collate
    from trainables.models import model_from_config

    cfg = spec(tmp_path, "held", optim__epochs=2)
    run_training(TrainSpec.model_validate(cfg))
    d = tmp_path / "held"
    final = json.loads((d / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(k for k in e if k.startswith("test_")) != [] for e in epochs] == [False, True]

    best = checkpoint.load(d / "best.pt")
    model = model_from_config(best["model_cfg"], len(best["classes"]))
    model.load_state_dict(best["model"])
    model.eval()
    k = len(best["classes"])
    cm = torch.zeros(k, k, dtype=torch.int64)
    loader = DataLoader(build_dataset(cfg["data"], "test", train=False), batch_size=4, collate_fn=pad_collate)
    with torch.no_grad():
        for x, y in loader:
            cm += M.confusion_matrix(model(x).argmax(1), y, k)
    assert cm.sum() == 4 * 64 * 64  # the 4 test images, whole
    iou = M.iou_per_class(cm)
    assert final["test_miou"] == pytest.approx(float(iou[~iou.isnan()].mean()), abs=1e-12)
    assert final["test_pixel_acc"] == pytest.approx(float(cm.diag().sum() / cm.sum()), abs=1e-12)
    for name, v in zip(best["classes"], iou.tolist()):
        assert final.get(f"test_iou_{name}", math.nan) == pytest.approx(v, abs=1e-12, nan_ok=True)


def test_evaluate_best_uses_the_given_weights_and_gives_the_model_its_own_back():
    from trainables.loop import evaluate, evaluate_best
    from trainables.reporting import TEST_CONFUSION

    torch.manual_seed(0)
    classes = ["a", "b", "c"]
    model, other = torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 3, 1)
    data = [(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))) for _ in range(3)]
    own = {k: v.clone() for k, v in model.state_dict().items()}
    out = evaluate_best(model, {"model": other.state_dict()}, data, classes, torch.device("cpu"))
    assert out.pop(TEST_CONFUSION).shape == (6, 3, 3)  # per-image counts: tests/test_confirm_stats.py
    assert out == {
        k.replace("val_", "test_", 1): v for k, v in evaluate(other, data, classes, torch.device("cpu")).items()
    }
    assert out != {
        k.replace("val_", "test_", 1): v for k, v in evaluate(model, data, classes, torch.device("cpu")).items()
    }
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_dataset_without_a_test_split_says_so_once_and_skips_it(tmp_path, capsys):
    from fixtures_data import write_voc

    write_voc(tmp_path)
    cfg = spec(
        tmp_path, "voc", data={"kind": "voc", "root": str(tmp_path), "crop": 32, "batch_size": 2}, optim__epochs=2
    )
    assert cfg["data"]["test_split"] == "auto"
    out = run_training(TrainSpec.model_validate(cfg))["metrics"]
    printed = capsys.readouterr().out
    assert printed.count("no test split") == 1 and "data.kind 'voc'" in printed
    assert "val_miou" in out and not any(k.startswith("test_") for k in out)


def test_a_named_test_split_that_is_missing_fails_before_training(tmp_path):
    from trainables.data import DataError

    bad = TrainSpec.model_validate(spec(tmp_path, "nosplit", data={**TINY, "test_split": "holdout"}))
    with pytest.raises(DataError, match=r"'holdout'.*null runs without a test split") as e:
        run_training(bad)
    assert "\n" not in str(e.value) and not (tmp_path / "nosplit" / "metrics.jsonl").exists()


def test_a_resumed_folder_run_keeps_its_best_on_val_weights(tmp_path):
    """The resumed run's test split is evaluated with the best.pt beside its checkpoint, unless that
    best.pt is of a later epoch than the checkpoint (an epoch the resumed run trains again)."""
    run = tmp_path / "r"
    run.mkdir()
    checkpoint.save({"epoch": 1, "model": {"w": torch.zeros(1)}}, run / "checkpoint.pt")
    cfg = {"name": "r2", "run": {"out_dir": str(tmp_path), "resume": str(run / "checkpoint.pt")}}
    for best_epoch, kept in ((0, True), (1, True), (2, False)):
        checkpoint.save({"epoch": best_epoch, "model": {"w": torch.ones(1)}}, run / "best.pt")
        rep = FolderReporter(cfg)
        assert rep.restore()["epoch"] == 1
        assert (rep.best is not None and rep.best["epoch"] == best_epoch) == kept
    rep.report({"epoch": 2, "train_loss": 1.0, "step_time_s": 0.1}, None, {"epoch": 2, "model": {}})
    assert rep.best["epoch"] == 2
