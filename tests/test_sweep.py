"""Sweeps on a real local Ray (2 CPUs): Tune + Optuna + ASHA over Ray Train trials, no leaked
resources after early stopping, MLflow parent/child runs, DDP over 2 gloo workers with the real
trainer, resume after the driver is SIGKILLed, and the missing-dataset message (before Ray)."""

import copy
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle

import sweep_stubs
from orchestrator.cli import main
from orchestrator.run.live import Row
from orchestrator.run.outcome import pareto_trials
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import Objective, parse_sweep_spec
from orchestrator.tracking import tags as T

ray.cloudpickle.register_pickle_by_value(sweep_stubs)  # Ray workers cannot import tests/
ROOT = Path(__file__).resolve().parents[1]


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def stub_raw(tmp_path, name: str, **over) -> dict:
    raw = {
        "name": name,
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "image_size": 64, "crop": 64},
            "optim": {"epochs": 4},
            "run": {"max_steps_per_epoch": 2, "out_dir": str(tmp_path / "runs")},
        },
        "space": {
            "distill.alpha": {"type": "uniform", "low": 0.1, "high": 2.0},
            "distill.tau": {"type": "choice", "values": [0.5, 1.0]},
        },
        "search": {"algorithm": "tpe", "num_samples": 6, "seed": 0},
        "early_stopping": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    }
    return merge(raw, over)


def mlflow_runs(spec):
    from mlflow import MlflowClient

    client = MlflowClient(spec.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(spec.mlflow.experiment)
    if exp is None:
        return client, [], []
    runs = client.search_runs([exp.experiment_id], filter_string=T.equals(T.SWEEP, spec.name))
    parents = [r for r in runs if r.data.tags.get(T.KIND) == "sweep"]
    children = [r for r in runs if r.data.tags.get(T.KIND) == "trial"]
    return client, parents, children


def poll_trials(db: Path) -> dict[str, dict]:
    """trial id -> run id, status, epochs logged; read-only SQL, so a test never races the
    driver's MLflow schema set-up (an MlflowClient would try to migrate a half-made database)."""
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        runs = con.execute(
            "select t.value, r.run_uuid, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
            f"where t.key = '{T.TRIAL_ID}'"
        ).fetchall()
        epochs = dict(
            con.execute("select run_uuid, count(*) from metrics where key = 'val_miou' group by run_uuid").fetchall()
        )
        con.close()
    except sqlite3.Error:
        return {}
    return {tid: {"run_id": rid, "status": st, "epochs": epochs.get(rid, 0)} for tid, rid, st in runs}


def resumable_in_snapshot(experiment_dir: str) -> bool:
    """Whether Tune's last experiment snapshot on storage holds an unfinished trial with a
    checkpoint: only then can a killed driver's sweep resume a trial rather than restart it.
    One-process trials checkpoint through Tune, which snapshots a step later and copies the
    snapshot to storage in the background; Train runs keep their checkpoints in their own run
    folder (<sweep>/train/<trial>), which the restarted trial's TorchTrainer finds again.
    So a trial's logged epoch alone does not say that it can resume yet."""
    import logging

    from ray.tune import ExperimentAnalysis

    # the sweep keeps no result files for the analysis to read: it warns on every poll otherwise
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if not list(Path(experiment_dir).glob("experiment_state-*.json")):
        return False
    try:
        trials = ExperimentAnalysis(experiment_dir).trials
    except Exception:  # noqa: BLE001 - a snapshot half copied: poll again
        return False

    def train_checkpointed(trial_id: str) -> bool:
        try:
            snap = json.loads(Path(experiment_dir, "train", trial_id, "checkpoint_manager_snapshot.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(snap.get("checkpoint_results"))

    # a loaded snapshot shows a running trial as PENDING: the state it would resume in
    return any(
        t.status not in ("TERMINATED", "ERROR") and (t.checkpoint is not None or train_checkpointed(t.trial_id))
        for t in trials
    )


def wait_all_resources_free(ray, timeout: float = 30.0) -> tuple[float, float]:
    deadline = time.time() + timeout
    while True:
        avail, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        if avail == total or time.time() > deadline:
            return avail, total
        time.sleep(0.5)


def live_placement_groups(ray) -> list[dict]:
    return [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]


# ------------------------------------------------------------------ without Ray


def test_missing_dataset_stops_before_ray_with_where_to_get_it(no_ray, capsys):
    rc = main(["sweep", str(ROOT / "search_spaces" / "ttpla.yaml"), "--set", "data.root=/nonexistent/ttpla"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "TTPLA not found at /nonexistent/ttpla" in err
    assert "https://github.com/R3ab/ttpla_dataset" in err and "--set data.root=" in err


def test_pareto_front_keeps_only_non_dominated_trials():
    objs = [Objective(metric="val_miou", mode="max"), Objective(metric="latency_ms", mode="min")]
    rows = [
        Row("a", result={"val_miou": 0.7, "latency_ms": 30}),
        Row("b", result={"val_miou": 0.6, "latency_ms": 10}),
        Row("c", result={"val_miou": 0.5, "latency_ms": 20}),  # beaten by b on both
        Row("d", result={"val_miou": 0.8}),  # no latency: not comparable
        Row("e", state="failed", result={"val_miou": 0.9, "latency_ms": 1}),
    ]
    assert sorted(pareto_trials(rows, objs)) == ["a", "b"]


# ------------------------------------------------------------------ on Ray


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("executor", ["tune", "train"])
def test_asha_sweep_two_concurrent_on_two_cpus_leaks_nothing_and_tracks_mlflow(ray_cluster, tmp_path, executor):
    ray = ray_cluster
    n = 6 if executor == "tune" else 4  # a Train trial starts a worker group: about 10 s each here
    spec = parse_sweep_spec(
        stub_raw(tmp_path, f"asha-{executor}", resources={"executor": executor}, search={"num_samples": n})
    )
    out = run_sweep(spec, worker=sweep_stubs.stub_worker)

    states = sorted(r.state for r in out.rows)
    assert len(out.rows) == n and out.status == "completed", states
    assert "stopped" in states and "completed" in states, states  # ASHA stopped some, others ran out
    if executor == "train":  # stopped trials left their Train placement group behind; the reaper removed them
        assert out.leaks_fixed >= states.count("stopped")
    avail, total = wait_all_resources_free(ray)
    assert avail == total == 2.0
    assert live_placement_groups(ray) == []

    best = max((r for r in out.rows if r.best is not None), key=lambda r: r.best)
    assert out.best.trial_id == best.trial_id and out.best.point["distill.alpha"] > 1.0
    assert Path(out.best.checkpoint, "best.pt").is_file()
    if executor == "tune":  # the trial's folder is named after its id
        assert Path(out.best.checkpoint).parent.name == f"trial_{out.best.trial_id}", out.best.checkpoint

    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 1 and len(children) == n
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[T.BEST_TRIAL_ID] == out.best.trial_id
    assert parent.data.tags[T.BEST_CHECKPOINT].endswith("best.pt")
    assert parent.data.params["space.distill.alpha"].startswith("uniform [0.1, 2]")
    assert "sweep.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    by_trial = {c.data.tags[T.TRIAL_ID]: c for c in children}
    for row in out.rows:
        run = by_trial[row.trial_id]
        assert run.data.tags[T.PARENT] == parent.info.run_id
        assert run.info.status == {"completed": "FINISHED", "stopped": "KILLED"}[row.state]
        assert float(run.data.params["distill.alpha"]) == pytest.approx(row.point["distill.alpha"])
        assert run.data.params["model.encoder"] == "resnet18" and run.data.params["optim.epochs"] == "4"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
        assert steps == list(range(row.epoch)), steps  # one point per epoch, step = epoch
        assert os.path.exists(run.data.tags[T.CHECKPOINT])
        if row.state == "completed":
            assert {"params", "gflops", "latency_ms"} <= set(run.data.metrics)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_trial_with_two_ddp_workers_runs_the_real_trainer_after_training_the_teacher(ray_cluster, tmp_path):
    data = {"kind": "synthetic", "num_train": 16, "num_val": 4, "image_size": 64, "crop": 64, "batch_size": 4}
    raw = {
        "name": "ddp",
        "results": str(tmp_path / "results"),
        "train": {
            "data": data,
            "model": {"encoder": "resnet18"},
            "distill": {"method": "xgd", "cam": "gradcam"},
            "optim": {"name": "adamw", "lr": 0.001, "epochs": 2},
            "run": {"device": "cpu", "max_steps_per_epoch": 2, "out_dir": str(tmp_path / "runs")},
        },
        "teacher": {
            "recipe": {
                "model": {"encoder": "resnet18"},
                "optim": {"epochs": 1},
                "run": {"device": "cpu", "max_steps_per_epoch": 2},
            },
            "cpus": 2,
        },
        "space": {"distill.alpha": {"type": "choice", "values": [0.5]}},
        "search": {"num_samples": 1},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 2, "cpus_per_worker": 1, "max_concurrent": 1},
    }
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec, worker=sweep_stubs.ddp_probe_worker)

    (row,) = out.rows
    assert row.state == "completed" and row.epoch == 2, row.error
    for key in ("val_miou", "train_seg", "train_pi", "train_sa", "params", "gflops"):
        assert key in row.result, key  # the saliency term ran: the teacher was there
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / "ddp_probe").glob("rank*.json"))]
    assert len(ranks) == 2 and all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept the replicas identical

    from trainables.checkpoint import load

    best = load(Path(row.checkpoint, "best.pt"))
    assert best["model_cfg"]["encoder"] == "resnet18" and "model" in best
    # the teacher recipe was trained once and cached; the next sweep reuses it
    from orchestrator.run import teachers

    hit = teachers.cached(spec)
    assert hit is not None and Path(hit.checkpoint).is_file()
    assert Path(spec.results, "teachers", teachers.recipe_hash(spec.teacher.recipe), "result.json").is_file()
    client, parents, (trial,) = mlflow_runs(spec)
    assert parents[0].data.tags[T.TEACHER_CHECKPOINT] == hit.checkpoint
    assert parents[0].data.tags.get(T.TEACHER_RUN_ID)
    # the held-out split: once, with the last epoch's result, in MLflow (trial and teacher)
    held_out = client.get_metric_history(trial.info.run_id, "test_miou")
    assert [m.step for m in held_out] == [1] and held_out[0].value == pytest.approx(row.result["test_miou"])
    assert "test_iou_background" in trial.data.metrics and "test_pixel_acc" in trial.data.metrics
    assert "test_miou" in client.get_run(parents[0].data.tags[T.TEACHER_RUN_ID]).data.metrics


SCRIPT = """
import json, sys
import ray.cloudpickle, sweep_stubs
ray.cloudpickle.register_pickle_by_value(sweep_stubs)
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
run_sweep(parse_sweep_spec(json.loads(sys.argv[1])), address=sys.argv[2], worker=sweep_stubs.resume_marking_worker)
"""


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("executor", ["tune", "train"])
def test_resume_after_the_driver_is_killed_continues_without_duplicates(ray_cluster, tmp_path, executor):
    """Killed with a trial finished and one midway, the resumed sweep reruns neither from scratch.
    Under Ray Train (each trial starts a worker group: ~15 s here) one trial, killed midway, is what
    that executor adds: its checkpoint restored into a new worker group."""
    ray = ray_cluster
    n = 3 if executor == "tune" else 1
    raw = stub_raw(
        tmp_path,
        "resume",
        search={"num_samples": n},
        early_stopping={"kind": "none"},
        train={"optim": {"epochs": 3}, "run": {"max_steps_per_epoch": 10}},
        resources={"executor": executor},
    )
    spec = parse_sweep_spec(raw)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # for sweep_stubs
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(raw), ray.get_runtime_context().gcs_address],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    before: dict[str, str] = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            trials = poll_trials(Path(spec.results, "mlflow.db"))
            done = [t for t in trials.values() if t["status"] == "FINISHED"]
            midway = [t for t in trials.values() if t["status"] == "RUNNING" and t["epochs"] >= 1]
            if (done or n == 1) and midway and resumable_in_snapshot(spec.experiment_dir):
                before = {tid: t["run_id"] for tid, t in poll_trials(Path(spec.results, "mlflow.db")).items()}
                break
            time.sleep(0.3)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the driver
        proc.wait()
    assert before, f"the sweep never reached a finished + a running trial: {proc.stderr.read().decode()[-2000:]}"

    out = run_sweep(spec, resume=True, worker=sweep_stubs.resume_marking_worker)

    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [c.data.tags[T.TRIAL_ID] for c in children]
    assert len(ids) == len(set(ids))  # no trial has two runs
    # a trial the killed driver started after Tune's last experiment snapshot is unknown to the
    # restored sweep (which samples anew): its run is closed as KILLED and tagged, not left RUNNING
    orphans = [c for c in children if c.data.tags.get(T.STATUS) == "orphaned"]
    assert all(c.info.status == "KILLED" for c in orphans)
    children = [c for c in children if c not in orphans]
    assert len(children) == n and {c.data.tags[T.TRIAL_ID] for c in children} == {r.trial_id for r in out.rows}
    assert all(before[t] == r for t, r in ((c.data.tags[T.TRIAL_ID], c.info.run_id) for c in children) if t in before)
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_miou")]
        assert steps == [0, 1, 2], steps  # every epoch once: nothing lost, nothing logged twice
    assert sorted(r.state for r in out.rows) == ["completed"] * n
    marks = list((tmp_path / "runs" / "markers").glob("*-resumed-*"))
    assert marks, "the interrupted trial restarted from scratch instead of its checkpoint"
    avail, total = wait_all_resources_free(ray)
    assert avail == total


LOGGED_SCRIPT = """
import json, sys
import ray.cloudpickle, sweep_stubs
ray.cloudpickle.register_pickle_by_value(sweep_stubs)
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
run_sweep(parse_sweep_spec(json.loads(sys.argv[1])), address=sys.argv[2], worker=sweep_stubs.stub_worker)
"""
LONG_STUDENTS = {
    "dlv3p_r18_with_a_long_student_name": {"arch": "deeplabv3plus", "encoder": "resnet18"},
    "unet_mobilenet_v2_student": {"arch": "unet", "encoder": "mobilenet_v2"},
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_logged_to_a_file_closes_with_a_table_that_splits_no_value(ray_cluster, tmp_path):
    """stdout redirected to a file (a log, `ray job logs`, CI): the driver's default console is
    no terminal, and rich folded its closing table into 80 columns, splitting values mid-word."""
    raw = stub_raw(
        tmp_path,
        "logged_to_a_file",
        search={"num_samples": 3},
        early_stopping={"kind": "none"},
        train={"optim": {"epochs": 2}, "run": {"max_steps_per_epoch": 1}},
        students=LONG_STUDENTS,
        space={
            "student": {"type": "choice", "values": list(LONG_STUDENTS)},
            "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-2},
            "distill.beta": {"type": "uniform", "low": 0.0, "high": 1.0},
        },
    )
    spec = parse_sweep_spec(raw)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}  # for sweep_stubs
    env.pop("COLUMNS", None)  # rich's width off a terminal: 80 unless COLUMNS says otherwise
    log = tmp_path / "sweep.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", LOGGED_SCRIPT, json.dumps(raw), ray_cluster.get_runtime_context().gcs_address],
            cwd=str(tmp_path),
            env=env,
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=240,
        )
    text = log.read_text()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = text.splitlines()
    title = f"sweep {spec.name}: 3 trials"
    assert title in lines, f"no plain closing table (a rich table folded to 80 columns?):\n{text[-3000:]}"
    start = lines.index(title)
    head, rows = lines[start + 1], lines[start + 2 : start + 5]
    assert head.split()[:2] == ["trial", "status"]
    assert all(key in head.split() for key in ("student", "alpha", "tau", "lr", "beta")), head
    _, _, children = mlflow_runs(spec)
    assert len(children) == 3
    for run in children:  # each trial's sampled values, whole, on its own row of the table
        trial = run.data.tags[T.TRIAL_ID]
        (row,) = [r for r in rows if r.startswith(trial + " ")]
        cells = row.split()
        assert cells[1] == "completed" and run.data.params["student"] in cells, row
        for key in ("optim.lr", "distill.beta", "distill.alpha"):
            assert f"{float(run.data.params[key]):.4g}" in cells, (key, row)
    assert any(len(r) > 80 for r in rows)  # the table is wider than rich's 80 columns, yet not folded
