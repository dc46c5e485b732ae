"""`ls`, `status` and `stop` against a running sweep in another process: the sweep is listed as
running with its driver, `stop` ends it cleanly (MLflow runs KILLED, the running trial
interrupted, not failed), and the same command with --resume then finishes it, every epoch once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.run.status import SweepState, objective
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T
from test_resume_auto import raw_spec, start
from test_sweep import mlflow_runs, poll_trials

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 400
EPOCHS = 6


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT_S)
def test_ls_status_and_stop_a_running_sweep_then_resume_it(ray_cluster, tmp_path, capsys):
    raw = raw_spec(tmp_path)
    raw["train"]["optim"]["epochs"] = EPOCHS  # long enough that the stop lands mid-sweep
    spec = parse_sweep_spec(raw)
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    db = Path(spec.results) / "mlflow.db"
    uri = ["--tracking-uri", spec.mlflow.tracking_uri]
    on_shared_ray = ("--address", ray_cluster.get_runtime_context().gcs_address)  # no Ray start per driver
    proc = start(spec_file, *on_shared_ray)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(t["epochs"] for t in poll_trials(db).values()) >= 1:
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()[-3000:]

        capsys.readouterr()
        assert main(["ls", *uri]) == 0
        listed = capsys.readouterr().out
        row = next(line for line in listed.splitlines() if spec.name in line)
        assert "sweep" in row and "running" in row and "/3" in row, listed

        assert main(["status", spec.name, "--json", *uri]) == 0
        state = json.loads(capsys.readouterr().out)
        assert state["state"] == "running" and state["total"] == 3 and state["pending_writes"] == 0
        assert f"pid {proc.pid}" in state["driver"], state["driver"]
        assert main(["status", spec.name, *uri]) == 0
        shown = capsys.readouterr().out
        assert f"sweep {spec.name} (sweep): running" in shown and f"pid {proc.pid}" in shown, shown

        assert main(["stop", spec.name, "--wait", "120", *uri]) == 0
        said = capsys.readouterr().out
        assert "asked unattended's driver" in said and "is stopped" in said, said
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        assert "stop requested" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    client, parents, children = mlflow_runs(spec)
    assert parents[0].info.status == "KILLED"
    assert {c.data.tags.get(T.STATUS) for c in children} <= {"completed", "interrupted"}
    assert "interrupted" in {c.data.tags.get(T.STATUS) for c in children}  # stopped mid-trial, not failed

    again = start(spec_file, "--resume", *on_shared_ray)
    out, _ = again.communicate(timeout=TIMEOUT_S)
    assert again.returncode == 0, out[-3000:]
    shown = " ".join(out.split())
    assert "best checkpoint: None" not in shown and "best.pt" in shown, out[-2000:]  # also a trial done before
    client, parents, children = mlflow_runs(spec)
    assert parents[0].info.status == "FINISHED" and T.STOP_REQUESTED not in parents[0].data.tags
    children = [c for c in children if c.data.tags.get(T.STATUS) != "orphaned"]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_miou")]
        assert steps == list(range(EPOCHS)), steps


def test_stop_of_an_unknown_or_ended_sweep_is_one_line(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp, tags={T.KIND: T.SWEEP_RUN, T.SWEEP: "done"})
    client.set_terminated(run.info.run_id, "FINISHED")
    capsys.readouterr()
    assert main(["stop", "done", "--tracking-uri", uri]) == 2
    assert "sweep 'done' is not running (it is finished)" in capsys.readouterr().err
    assert main(["status", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown sweep 'nope'" in err


def test_eta_and_objective():
    s = SweepState("s", "sweep", "running", total=10, trials={"completed": 3, "stopped": 1, "running": 2}, started=0.0)
    assert s.done == 4 and s.eta_s(now=400.0) == pytest.approx(400 / 4 * 6)
    assert SweepState("s", "sweep", "finished", total=4, trials={"completed": 4}, started=0.0).eta_s() is None
    assert objective({"objective": "max val_miou, min latency_ms"}) == ("max", "val_miou")
    assert objective({}) == ("max", "val_miou")
