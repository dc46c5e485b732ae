"""Unattended re-runs: the same command with `--resume auto`, as a retried Kubernetes job or a
requeued SLURM job runs it, starts the sweep the first time and continues it after its driver was
killed, twice; a second driver while one runs is refused, naming the first."""

from __future__ import annotations

import io
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray  # noqa: F401 (puts its bundled psutil on sys.path: kill_its_ray uses it)
import yaml
from rich.console import Console

import sweep_stubs
from orchestrator.cli import main
from orchestrator.run import lock, study
from orchestrator.run.sweep import driver_lock, run_sweep
from orchestrator.spec.sweep import parse_sweep_spec, sampler
from orchestrator.tracking import tags as T
from test_sweep import mlflow_runs, poll_trials, resumable_in_snapshot
from test_teacher_cache import held_elsewhere

ray.cloudpickle.register_pickle_by_value(sweep_stubs)  # Ray workers cannot import tests/
stub_worker = sweep_stubs.stub_worker
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 400
AUTO = ("--resume", "auto")


def raw_spec(tmp_path: Path) -> dict:
    """Tiny real trainer, 3 trials of 3 epochs, one at a time: every kill lands mid-sweep."""
    return {
        "name": "unattended",
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 64},
            "model": {"encoder": "mobilenet_v2"},
            "optim": {"epochs": 3},
            "run": {"out_dir": str(tmp_path / "runs"), "max_steps_per_epoch": 2, "explain": False},
        },
        "space": {"optim.lr": {"type": "choice", "values": [0.01, 0.02, 0.05]}},
        "search": {"algorithm": "grid"},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
    }


MARK = "XGD_TEST_DRIVER"  # set in a driver's environment, which every process of its Ray inherits


def start(spec_file: Path, *args: str) -> subprocess.Popen:
    """`python -m orchestrator sweep SPEC ARGS`, in its own session: a kill takes the driver and
    the local Ray it started, as a node loss would."""
    mark = secrets.token_hex(8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "sweep", str(spec_file), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), MARK: mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    proc.mark = mark
    return proc


def epochs_logged(db: Path) -> int:
    return sum(t["epochs"] for t in poll_trials(db).values())


def kill_when(proc: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                return
            time.sleep(0.3)
        out = proc.stdout.read() if proc.poll() is not None else ""
        raise AssertionError(f"never caught mid-sweep (rc {proc.poll()}): {out[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_its_ray(proc.mark)


def kill_its_ray(mark: str, settle_s: float = 1.0) -> None:
    """A lost node takes every process with it; a killed driver's local Ray does not all die at once
    with its process group: its services and trial processes, orphaned, live until they notice.
    Kill every process that carries the driver's mark in its environment (what it started, and
    what those started: nothing else on the machine, such as another test's Ray) and wait until
    none is left, so no orphan trial writes a checkpoint under the next driver."""
    import psutil  # Ray's bundled copy

    def left() -> list:
        found = []
        for p in psutil.process_iter(["status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get(MARK) == mark:
                    found.append(p)
            except psutil.Error:  # gone, or not ours to read
                pass
        return found

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs = left()
        if not procs:
            time.sleep(settle_s)
            if not left():
                return
            continue
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        time.sleep(0.5)
    raise AssertionError(f"the killed driver's Ray processes did not go: {[p.pid for p in left()]}")


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT_S)
def test_killed_twice_and_rerun_with_resume_auto_finishes_every_trial_once(tmp_path, capsys):
    raw = raw_spec(tmp_path)
    spec = parse_sweep_spec(raw)
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    db = Path(spec.results) / "mlflow.db"

    first = start(spec_file, *AUTO)  # nothing exists yet: --resume auto starts it
    kill_when(first, lambda: epochs_logged(db) >= 2 and resumable_in_snapshot(spec.experiment_dir))
    at_first = epochs_logged(db)
    assert main(["status", spec.name, "--tracking-uri", spec.mlflow.tracking_uri]) == 0
    assert f"sweep {spec.name} (sweep): driver gone" in capsys.readouterr().out  # killed: no one holds its lock

    second = start(spec_file, *AUTO)  # continues it
    kill_when(second, lambda: epochs_logged(db) >= at_first + 2 and resumable_in_snapshot(spec.experiment_dir))

    third = start(spec_file, *AUTO)
    out, _ = third.communicate(timeout=TIMEOUT_S)
    assert third.returncode == 0, out[-3000:]
    assert f"--resume auto: continuing sweep {spec.name!r}" in out

    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", out[-3000:]
    children = [c for c in children if c.data.tags.get(T.STATUS) != "orphaned"]
    assert sorted(float(c.data.params["optim.lr"]) for c in children) == [0.01, 0.02, 0.05]  # each trial once
    for c in children:
        assert c.info.status == "FINISHED", (c.data.tags.get(T.ERROR), c.data.tags.get(T.STATUS), out[-3000:])
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_miou")]
        assert steps == [0, 1, 2], steps  # every epoch logged once


def test_a_second_driver_while_one_runs_is_refused_naming_it(tmp_path, capsys, no_ray):
    raw = raw_spec(tmp_path)
    spec = parse_sweep_spec(raw)
    spec_file = tmp_path / "sweep.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    holder = held_elsewhere("""exclusive(folder, "sweep 'unattended'")""", driver_lock(spec))
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(spec_file), "--resume", "auto"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "sweep 'unattended' is running now" in err, err
        assert f"pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(no_ray):  # its holder gone, the lock is free (the kernel released it)
        main(["sweep", str(spec_file), "--resume", "auto"])
    with lock.exclusive(driver_lock(spec), "check"):
        pass


def test_resume_takes_no_value_but_auto(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "search_spaces/quickstart.yaml", "--resume", "always"])
    assert e.value.code == 2 and "--resume takes no value, or 'auto'" in capsys.readouterr().err


def lose_last_trial(spec) -> float:
    """What a driver killed while Tune wrote its snapshot leaves (seen in CI): a searcher state that
    counts a trial the experiment state lacks, and the study holding that trial RUNNING. The last
    trial is cut from Tune's newest experiment state and made RUNNING again in a rebuilt study.
    Returns the lost trial's lr."""
    import json

    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    state_file = Path(_find_newest_experiment_checkpoint(spec.experiment_dir))
    state = json.loads(state_file.read_text())
    state["trial_data"] = state["trial_data"][:-1]
    state_file.write_text(json.dumps(state))

    path = study.study_path(spec.results, spec.name)
    old = optuna.load_study(study_name=spec.name, storage=study.open_storage(path))
    done = sorted(old.trials, key=lambda t: t.number)
    path.rename(path.with_suffix(".old"))
    new = optuna.create_study(study_name=spec.name, storage=study.open_storage(path), direction="maximize")
    for t in done[:-1]:
        new.add_trial(t)
    new.enqueue_trial(done[-1].params)
    sampler(spec)[1](new.ask())  # asked and its point set: RUNNING, as the killed driver left it
    return done[-1].params


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_the_restored_snapshot_lost_runs_again_on_resume(ray_cluster, tmp_path):
    raw = {
        **raw_spec(tmp_path),
        "name": "lost-trial",
        "train": {**raw_spec(tmp_path)["train"], "run": {"out_dir": str(tmp_path / "runs"), "max_steps_per_epoch": 1}},
    }
    spec = parse_sweep_spec(raw)
    assert run_sweep(spec, worker=stub_worker).status == "completed"
    lost = lose_last_trial(spec)

    out = io.StringIO()
    again = run_sweep(spec, resume=True, worker=stub_worker, console=Console(file=out, width=200))
    assert "1 trial(s) a killed driver asked for never ran: running them now" in out.getvalue(), out.getvalue()
    assert again.status == "completed", out.getvalue()
    assert sorted(r.point["optim.lr"] for r in again.rows if r.state == "completed") == [0.01, 0.02, 0.05]
    trials = optuna.load_study(
        study_name=spec.name, storage=study.open_storage(study.study_path(spec.results, spec.name))
    ).trials
    states = {(t.state.name, t.params["grid_index"]) for t in trials}
    assert ("FAIL", lost["grid_index"]) in states and ("COMPLETE", lost["grid_index"]) in states, states
    assert sum(s == "COMPLETE" for s, _ in states) == 3
