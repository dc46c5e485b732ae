"""What a sweep costs besides training: the real sweep (Ray Tune, Optuna, MLflow, the chosen
executor) over stub trials that do no training, each reporting once with a checkpoint.

- `sweep_overhead`: trials one at a time; the overhead of trial k is its worker's first
  instruction minus trial k-1's report (teardown of one trial plus start of the next).
- `sweep_load`: many trials, `concurrent` at a time; trials per minute, and a count of the MLflow
  runs, so a run lost under load shows.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TARGET_S = 15.0  # the per-trial overhead the project aims for on 2 CPUs (median seconds)


def stub_trial_worker(config: dict) -> dict:
    """A worker that does no training: it reports once (with a checkpoint) and returns. It runs
    under either executor (trainables.reporting.session_api)."""
    from trainables.reporting import session_api

    api = session_api()
    start = time.time()
    out = {
        "epoch": 0,
        "train_loss": 1.0,
        "val_miou": float(config["distill"]["alpha"]) / 10,
        "lr": 0.0,
        "step_time_s": 0.0,
        "stub_start_unix": start,
    }
    out["best_val_miou"] = out["val_miou"]
    with tempfile.TemporaryDirectory() as d:
        Path(d, "best.pt").write_text("stub")
        out["stub_report_unix"] = time.time()
        api.report(out, checkpoint=api.Checkpoint.from_directory(d))
    return out


def stub_sweep_raw(
    root: str, trials: int, executor: str = "auto", concurrent: int = 1, name: str = "bench_stub"
) -> dict:
    """A sweep spec of `trials` stub trials on the synthetic data, results under `root`."""
    return {
        "name": name,
        "results": root,
        "train": {
            "data": {"kind": "synthetic", "num_train": 4, "num_val": 4, "image_size": 64, "crop": 64},
            "optim": {"epochs": 1},
            "run": {"out_dir": str(Path(root) / "runs")},
        },
        "space": {"distill.alpha": {"type": "uniform", "low": 0.1, "high": 2.0}},
        "search": {"algorithm": "random", "num_samples": trials, "seed": 0},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": concurrent, "executor": executor},
    }


def _run_stub_sweep(raw: dict):
    from rich.console import Console

    from orchestrator.run.sweep import run_sweep
    from orchestrator.spec.sweep import parse_sweep_spec

    spec = parse_sweep_spec(raw)
    t0 = time.time()
    outcome = run_sweep(spec, worker=stub_trial_worker, console=Console(quiet=True))
    return spec, outcome, t0, time.time() - t0


def overhead_of(trials: int, executor: str, log: Callable[[str], None] = lambda _m: None) -> dict:
    with tempfile.TemporaryDirectory(prefix="xgd_bench_sweep_") as root:
        log(f"stub sweep: {trials} trials, one at a time, executor {executor}, on a local Ray")
        _, outcome, t0, wall = _run_stub_sweep(stub_sweep_raw(root, trials, executor))
    res = sorted((r.result for r in outcome.rows if "stub_start_unix" in r.result), key=lambda r: r["stub_start_unix"])
    if len(res) < 2:
        raise RuntimeError(f"stub sweep finished {len(res)} of {trials} trials; cannot measure overhead")
    gaps = [r["stub_start_unix"] - prev["stub_report_unix"] for prev, r in zip(res, res[1:])]
    # Tune's own clock (whole-second timestamp, so +-1 s): when the trial function started
    fn_start = [r["stub_start_unix"] - (r["timestamp"] - r["time_total_s"]) for r in res if "time_total_s" in r]
    report = [r["timestamp"] - r["stub_report_unix"] for r in res if "timestamp" in r]
    med = statistics.median(gaps)
    return {
        "executor": executor,
        "trials": trials,
        "completed": len(res),
        "sweep_wall_s": wall,
        "first_trial_s": res[0]["stub_start_unix"] - t0,
        "per_trial_overhead_s": med,
        "per_trial_overhead_all_s": gaps,
        "trials_per_min": 60 * len(res) / wall,
        "breakdown_s": {
            "trial_fn_to_step": statistics.median(fn_start) if fn_start else None,
            "report_to_tune": statistics.median(report) if report else None,
        },
        "target_s": TARGET_S,
        "met": med <= TARGET_S,
    }


def sweep_overhead(
    trials: int = 4, executors: tuple[str, ...] = ("tune", "train"), log: Callable[[str], None] = lambda _m: None
) -> dict:
    """Per-trial overhead of each executor; the headline is the first (the default for one worker)."""
    by = {ex: overhead_of(trials, ex, log) for ex in executors}
    head = by[executors[0]]
    return {
        "executor": executors[0],
        "per_trial_overhead_s": head["per_trial_overhead_s"],
        "trials_per_min": head["trials_per_min"],
        "target_s": TARGET_S,
        "met": head["met"],
        "by_executor": by,
        "cpus": os.cpu_count(),
        "load_avg": list(os.getloadavg()),
    }


def sweep_load(
    trials: int = 200,
    concurrent: int = 2,
    executor: str = "auto",
    root: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict:
    """A sweep of `trials` stub trials, `concurrent` at a time; throughput and MLflow completeness."""
    from mlflow import MlflowClient

    from orchestrator.tracking import tags as T

    with tempfile.TemporaryDirectory(prefix="xgd_load_") as tmp:
        root = root or tmp
        log(f"load: {trials} stub trials, {concurrent} at a time, executor {executor}")
        spec, outcome, _, wall = _run_stub_sweep(stub_sweep_raw(root, trials, executor, concurrent, "load"))
        client = MlflowClient(spec.mlflow.tracking_uri)
        exp = client.get_experiment_by_name(spec.mlflow.experiment)
        runs = client.search_runs([exp.experiment_id], T.equals(T.KIND, T.TRIAL_RUN), max_results=50_000)
        finished = [r for r in runs if r.info.status == "FINISHED" and "val_miou" in r.data.metrics]
    done = [r for r in outcome.rows if r.state == "completed"]
    return {
        "trials": trials,
        "concurrent": concurrent,
        "executor": executor,
        "completed": len(done),
        "mlflow_runs": len(runs),
        "mlflow_finished_with_metric": len(finished),
        "distinct_trials": len({r.data.tags.get(T.TRIAL_ID) for r in runs}),
        "wall_s": wall,
        "trials_per_min": 60 * len(done) / wall,
        "cpus": os.cpu_count(),
    }
