"""A Pareto sweep (max val_miou, min params) with ASHA over the real trainer: the student's static
costs are reported with every epoch, so a trial that ASHA stops still reaches Optuna with both
objectives. The persisted study must hold every trial COMPLETE with two values, and Tune's searcher
must not have logged a failed `tell`."""

from __future__ import annotations

import logging

import optuna
import pytest

from orchestrator.run import study
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def pareto_raw(tmp_path) -> dict:
    return {
        "name": "pareto-asha",
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 64},
            "optim": {"epochs": 4},
            "run": {"device": "cpu", "max_steps_per_epoch": 1, "out_dir": str(tmp_path / "runs")},
        },
        "students": {
            "dlv3p_mbv2": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2"},
            "pspnet_r18": {"arch": "pspnet", "encoder": "resnet18"},
        },
        "space": {
            "student": {"type": "choice", "values": ["dlv3p_mbv2", "pspnet_r18"]},
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 0.05},
        },
        "objective": [{"metric": "val_miou", "mode": "max"}, {"metric": "params", "mode": "min"}],
        "search": {"algorithm": "tpe", "num_samples": 6, "seed": 0},
        "early_stopping": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    }


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_asha_stopped_trials_reach_optuna_with_every_objective(ray_cluster, tmp_path):
    searcher_log = logging.getLogger("ray.tune.search.optuna.optuna_search")
    collect = Collect()
    searcher_log.addHandler(collect)
    try:
        spec = parse_sweep_spec(pareto_raw(tmp_path))
        out = run_sweep(spec)
    finally:
        searcher_log.removeHandler(collect)

    states = sorted(r.state for r in out.rows)
    assert len(out.rows) == 6 and "stopped" in states and "completed" in states, states
    assert collect.lines == [], collect.lines  # e.g. "The number of the values 1 did not match ..."
    stopped = [r for r in out.rows if r.state == "stopped"]
    assert all({"params", "gflops", "latency_ms"} <= set(r.result) for r in stopped)

    loaded = optuna.load_study(
        study_name=spec.name, storage=study.open_storage(study.study_path(spec.results, spec.name))
    )
    assert len(loaded.trials) == 6
    assert [t.state for t in loaded.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    by_point = {(r.point["student"], round(r.point["optim.lr"], 12)): r for r in out.rows}
    for t in loaded.trials:
        row = by_point[(t.params["student"], round(t.params["optim.lr"], 12))]
        # what Optuna was told is the trial's last report: its val mIoU and its student's size
        assert t.values == pytest.approx([row.result["val_miou"], row.result["params"]])
    sizes = {t.params["student"]: t.values[1] for t in loaded.trials}
    assert len(set(sizes.values())) == len(sizes)  # the two students differ in size: a real trade-off
    # the sweep's own front (parent tag) compares finished trials only
    assert out.pareto and set(out.pareto) <= {r.trial_id for r in out.rows if r.state == "completed"}


def test_the_sweeps_front_leaves_out_stopped_trials():
    from orchestrator.run.live import Row
    from orchestrator.run.outcome import pareto_trials
    from orchestrator.spec.sweep import Objective

    objs = [Objective(metric="val_miou", mode="max"), Objective(metric="params", mode="min")]
    rows = [
        Row("a", state="completed", result={"val_miou": 0.7, "params": 30}),
        Row("b", state="completed", result={"val_miou": 0.6, "params": 10}),
        Row("s", state="stopped", result={"val_miou": 0.9, "params": 5}),  # would beat both; 1 epoch only
    ]
    assert sorted(pareto_trials(rows, objs)) == ["a", "b"]
