"""Load: a sweep of 200 stub trials (no training: orchestration only) on the session's
2-CPU Ray, 2 at a time, through the real sweep (Tune, Optuna random search, the driver's MLflow
writer). Every trial completes and has exactly one finished MLflow run with its metric; the
throughput is printed to the terminal."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_200_stub_trials_on_two_cpus_lose_no_mlflow_run(ray_cluster, tmp_path, capsys):
    from orchestrator.bench.sweep import sweep_load

    out = sweep_load(200, concurrent=2, root=str(tmp_path))
    with capsys.disabled():
        print(
            f"\nload: {out['completed']}/{out['trials']} stub trials, {out['concurrent']} at a time on "
            f"{out['cpus']} CPUs, in {out['wall_s']:.0f} s: {out['trials_per_min']:.1f} trials/min"
        )
    assert out["completed"] == 200, out
    assert out["mlflow_runs"] == out["distinct_trials"] == out["mlflow_finished_with_metric"] == 200, out
    free = ray_cluster.available_resources().get("CPU", 0.0)
    assert free == ray_cluster.cluster_resources().get("CPU", 0.0) == 2.0
