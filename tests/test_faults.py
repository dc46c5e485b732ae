"""Faults a long sweep meets: a diverging trial (NaN loss) and a CUDA out-of-memory trial fail
alone with their reason in MLflow and on the terminal while the sweep goes on; a worker process
killed mid-epoch is retried from its last checkpoint (one epoch redone at most); an unwritable or
full results location is refused before Ray starts. (Driver SIGKILL + --resume: tests/test_sweep.py.)"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.cloudpickle
from rich.console import Console

import orchestrator.run.sweep
import sweep_stubs
from orchestrator.cli import main
from orchestrator.run.callback import error_line
from orchestrator.run.failures import fatal_cause, summarize_error
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T

ray.cloudpickle.register_pickle_by_value(sweep_stubs)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stubs below run in Ray workers


# ------------------------------------------------------------------ stub workers (run in Ray)


def faulty_worker(config: dict) -> dict:
    """distill.alpha picks the fault: 0.5 loss becomes NaN in epoch 1 (the loop's own error),
    1.0 CUDA OOM in epoch 0, 1.5 trains normally."""
    import torch

    from trainables.reporting import session_api

    alpha = config["distill"]["alpha"]
    calls = Path(config["run"]["out_dir"], "calls")
    calls.mkdir(parents=True, exist_ok=True)
    with open(calls / str(alpha), "a") as f:  # one line per attempt
        f.write("x\n")
    if alpha == 1.0:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total capacity)")
    if alpha == 0.5:
        for epoch in range(config["optim"]["epochs"]):
            if epoch == 1:
                raise FloatingPointError(f"training loss became nan at epoch {epoch}; trial stopped")
            session_api().report({"epoch": epoch, "train_loss": 1.0, "val_miou": 0.1})
    return sweep_stubs.stub_worker(config)


def dies_once_worker(config: dict) -> dict:
    """The worker process dies (os._exit, no cleanup, like a preempted node) in the middle of
    epoch 2 the first time only; a marker file remembers that it already died."""
    from trainables.reporting import session_api

    api = session_api()
    marker = Path(config["run"]["out_dir"], f"{config['name']}-died")
    if marker.exists():
        return sweep_stubs.resume_marking_worker(config, api)

    class DiesAfterEpoch1:
        Checkpoint, get_checkpoint = api.Checkpoint, staticmethod(api.get_checkpoint)

        @staticmethod
        def report(metrics, checkpoint=None):
            api.report(metrics, checkpoint=checkpoint)
            if metrics["epoch"] == 1:
                # into epoch 2, and past Ray Train's 2 s health-check poll, which collects the epoch's
                # report from this process: dying sooner can lose it with the process on a loaded machine
                time.sleep(3.0)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os._exit(1)

    return sweep_stubs.resume_marking_worker(config, DiesAfterEpoch1)


# ------------------------------------------------------------------ helpers


def raw_spec(tmp_path: Path, name: str, **over) -> dict:
    raw = {
        "name": name,
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 4, "num_val": 2, "image_size": 64, "crop": 64},
            "optim": {"epochs": 4},
            "run": {"max_steps_per_epoch": 2, "out_dir": str(tmp_path / "runs")},
        },
        "space": {"distill.alpha": {"type": "choice", "values": [0.5, 1.0, 1.5]}},
        "search": {"algorithm": "grid"},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    }
    raw.update(over)
    return raw


def children(spec):
    from mlflow import MlflowClient

    client = MlflowClient(spec.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(spec.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=T.equals(T.SWEEP, spec.name))
    return (
        client,
        [r for r in runs if r.data.tags.get(T.KIND) == "trial"],
        [r for r in runs if r.data.tags.get(T.KIND) == "sweep"],
    )


def _error_files(tmp_path: Path) -> str:
    """Every trial error file under the test's results, whole: what a failure here needs to be diagnosed."""
    return "\n".join(f"--- {p}\n{p.read_text()}" for p in sorted(tmp_path.rglob("error.txt")))


def error_file_of(exc: BaseException, tmp_path: Path) -> SimpleNamespace:
    path = tmp_path / "error.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return SimpleNamespace(error_file=str(path))


# ------------------------------------------------------------------ without Ray


def test_oom_error_maps_to_a_hint(tmp_path):
    import torch

    try:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except torch.OutOfMemoryError as e:
        line = error_line(error_file_of(e, tmp_path))
    assert "\n" not in line and line.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried")
    for hint in ("data.batch_size", "resources.max_concurrent"):
        assert hint in line, line


def test_error_summary_keeps_the_root_cause_not_rays_wrapper():
    text = (
        "Traceback (most recent call last):\n  File 'loop.py', line 64\n"
        "FloatingPointError: training loss became nan at epoch 3; trial stopped\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "Traceback (most recent call last):\n"
        "ray.train.WorkerGroupError: Training failed due to worker errors:\n[Rank 0]\n"
    )
    assert summarize_error(text) == "FloatingPointError: training loss became nan at epoch 3; trial stopped"
    assert summarize_error("") == "failed"
    assert summarize_error("ValueError: x\n").startswith("ValueError: x")


def test_only_the_latest_failure_counts_and_fatal_causes_are_recognised():
    text = (
        "Failure # 1 (occurred at x)\nRuntimeError: node lost\n"
        "Failure # 2 (occurred at y)\nray.exceptions.RayTaskError(FatalTrialError): ray::ImplicitFunc.train()\n"
        "orchestrator.run.failures.FatalTrialError: "
        "FloatingPointError: training loss became inf at epoch 2; trial stopped\n"
    )
    assert summarize_error(text) == "FloatingPointError: training loss became inf at epoch 2; trial stopped"
    assert fatal_cause("Failure # 1\nRuntimeError: node lost\n") is None
    assert summarize_error("Failure # 1\nRuntimeError: node lost\n") == "RuntimeError: node lost"
    wrapped = (
        "Failure # 1\nray.exceptions.RayTaskError(WorkerGroupError): ray::ImplicitFunc.train()\n"
        "ray.train.WorkerGroupError: Training failed due to worker errors:\n[Rank 0 Error Snippet]:\n"
        "Traceback (most recent call last):\n  File 'stub.py', line 3\nRuntimeError: stub trial failed on purpose\n"
    )
    assert summarize_error(wrapped) == "RuntimeError: stub trial failed on purpose"


def test_unwritable_results_is_refused_before_ray(tmp_path, no_ray, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(raw_spec(tmp_path, "unwritable", results=str(blocker / "results"))))
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: results ") and "is not writable" in err, err
    assert "--set results=" in err


def test_full_results_disk_is_refused_before_ray(tmp_path, no_ray, monkeypatch, capsys):
    monkeypatch.setattr(
        orchestrator.run.sweep.shutil, "disk_usage", lambda p: SimpleNamespace(total=1e12, used=1e12, free=5 * 2**20)
    )
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps(raw_spec(tmp_path, "full")))
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has only 5 MB free" in err, err


# ------------------------------------------------------------------ on Ray


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("max_failures", [1, -1])  # -1: retry forever, but never these two faults
def test_nan_and_oom_trials_fail_alone_at_once_with_their_reason(ray_cluster, tmp_path, max_failures):
    raw = raw_spec(tmp_path, "faults")
    raw["resources"]["max_failures"] = max_failures
    spec = parse_sweep_spec(raw)
    term = io.StringIO()
    out = run_sweep(spec, worker=faulty_worker, console=Console(file=term, width=400, force_terminal=False))

    rows = {r.point["distill.alpha"]: r for r in out.rows}
    assert sorted(rows) == [0.5, 1.0, 1.5]
    assert rows[1.5].state == "completed" and rows[1.5].epoch == 4  # the sweep went on
    assert rows[0.5].state == "failed" and "training loss became nan at epoch 1" in rows[0.5].error
    assert rows[1.0].state == "failed" and "CUDA out of memory" in rows[1.0].error
    assert "data.batch_size" in rows[1.0].error
    attempts = {p.name: len(p.read_text().split()) for p in (tmp_path / "runs" / "calls").iterdir()}
    assert attempts == {"0.5": 1, "1.0": 1, "1.5": 1}, attempts  # failed at once: no retry redid epochs
    shown = term.getvalue()
    assert "training loss became nan" in shown and "CUDA out of memory" in shown, shown[-3000:]

    client, runs, parents = children(spec)
    assert len(runs) == 3 and parents[0].info.status == "FINISHED"
    by_alpha = {float(r.data.params["distill.alpha"]): r for r in runs}
    nan_run, oom_run = by_alpha[0.5], by_alpha[1.0]
    assert nan_run.info.status == "FAILED" and "training loss became nan" in nan_run.data.tags[T.ERROR]
    assert [m.step for m in client.get_metric_history(nan_run.info.run_id, "train_loss")] == [0]  # stopped at once
    assert oom_run.info.status == "FAILED" and "resources.max_concurrent" in oom_run.data.tags[T.ERROR]
    assert by_alpha[1.5].info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["tune", "train"])
def test_worker_killed_mid_epoch_is_retried_from_its_last_checkpoint(ray_cluster, tmp_path, executor):
    raw = raw_spec(tmp_path, "killed", space={"distill.alpha": {"type": "choice", "values": [1.5]}})
    raw["train"]["optim"]["epochs"] = 3
    # 2 retries: the death is the one failure meant; the second absorbs one failure of Ray's own while
    # the retry starts on a loaded machine (seen once in a full run as "A worker health check failed")
    raw["resources"].update(max_failures=2, executor=executor)
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec, worker=dies_once_worker, console=Console(file=io.StringIO()))

    (row,) = out.rows
    assert (tmp_path / "runs" / f"{row.trial_id}-died").exists()  # it did die once
    assert row.state == "completed" and row.epoch == 3, _error_files(tmp_path) or row.error
    marks = [p.name for p in (tmp_path / "runs" / "markers").glob("*-resumed-*")]
    # continued after epoch 1: only epoch 2 redone. (A second failure of Ray's own on a loaded machine,
    # which the second retry absorbs, resumes from its latest checkpoint too and may add a mark.)
    assert f"{row.trial_id}-resumed-1" in marks, marks
    client, runs, _ = children(spec)
    (run,) = runs
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert steps == [0, 1, 2], steps  # every epoch once in MLflow
