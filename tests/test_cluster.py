"""A sweep on a multi-node Ray cluster on one machine (ray.cluster_utils.Cluster: a head and a
worker node, 1 CPU each), in its own process so it never meets the test session's Ray. Trials
land on both nodes, results and checkpoints sit on the shared storage path, MLflow is complete,
and removing the worker node mid-sweep loses no completed trial (its running trial is retried
from its checkpoint on the node that is left)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.tracking import tags as T

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SCRIPT = r"""
import json, os, sqlite3, sys, threading, time
import ray, ray.cloudpickle, sweep_stubs
from ray.cluster_utils import Cluster
from orchestrator.tracking import tags as T
ray.cloudpickle.register_pickle_by_value(sweep_stubs)

def node_worker(config):
    import ray.train
    marks = os.path.join(config["run"]["out_dir"], "nodes")
    os.makedirs(marks, exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    open(os.path.join(marks, config["name"] + "@" + node), "w").close()
    return sweep_stubs.resume_marking_worker(config)

def trials(db):
    try:
        con = sqlite3.connect("file:" + db + "?mode=ro", uri=True, timeout=1)
        rows = con.execute("select t.value, r.status, (select count(*) from metrics m where m.run_uuid = r.run_uuid "
                           "and m.key = 'val_miou') from runs r join tags t on t.run_uuid = r.run_uuid "
                           f"where t.key = '{T.TRIAL_ID}'").fetchall()
        con.close()
        return rows
    except sqlite3.Error:
        return []

raw = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False))
worker_node = cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
head_id = ray.get_runtime_context().get_node_id()
removed = {}

def remover():
    # remove the worker node once a trial has finished and another is mid-run on that node
    db = os.path.join(raw["results"], "mlflow.db")
    marks = os.path.join(raw["train"]["run"]["out_dir"], "nodes")
    deadline = time.time() + 240
    while time.time() < deadline:
        rows = trials(db)
        done = [t for t, st, n in rows if st == "FINISHED"]
        on_worker = {f.split("@")[0] for f in (os.listdir(marks) if os.path.isdir(marks) else [])
                     if f.endswith("@" + worker_node.node_id)}
        running = [t for t, st, n in rows if st == "RUNNING" and n >= 1 and t in on_worker]
        if done and running:
            removed.update(finished_before=done, interrupted=running)
            cluster.remove_node(worker_node, allow_graceful=False)
            return
        time.sleep(0.2)

t = threading.Thread(target=remover, daemon=True)
t.start()
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
from rich.console import Console
out = run_sweep(parse_sweep_spec(raw), worker=node_worker, console=Console(file=sys.stderr))
t.join(timeout=5)
deadline = time.time() + 90  # the GCS declares the removed node dead after its health checks fail
def cpus(view):
    return view().get("CPU", 0.0)
while time.time() < deadline and (cpus(ray.cluster_resources) > 1.0
                                   or cpus(ray.available_resources) < cpus(ray.cluster_resources)):
    time.sleep(0.5)
summary = dict(head=head_id, worker=worker_node.node_id, removed=removed,
               resumed=sorted(os.listdir(os.path.join(raw["train"]["run"]["out_dir"], "markers")))
               if os.path.isdir(os.path.join(raw["train"]["run"]["out_dir"], "markers")) else [],
               rows=[dict(trial_id=r.trial_id, state=r.state, epoch=r.epoch, error=r.error) for r in out.rows],
               available=ray.available_resources().get("CPU", 0.0), total=ray.cluster_resources().get("CPU", 0.0))
print("SUMMARY " + json.dumps(summary))
ray.shutdown()
cluster.shutdown()
"""


def tune_errors(experiment: Path) -> dict[str, str]:
    """Each failed attempt of each trial, as Tune recorded it: what a failure here needs to be read."""
    return {p.parent.name: p.read_text()[-3000:] for p in experiment.glob("trial_*/error.txt")}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_node_cluster_sweep_survives_losing_a_node(tmp_path):
    shared = tmp_path / "shared"
    raw = {
        "name": "cluster",
        "results": str(shared / "results"),
        "storage_path": str(shared / "sweeps"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 4, "num_val": 2, "image_size": 64, "crop": 64},
            "optim": {"epochs": 3},
            "run": {"max_steps_per_epoch": 15, "out_dir": str(shared / "runs")},
        },
        "space": {"distill.alpha": {"type": "choice", "values": [0.5, 1.0, 1.5, 2.0]}},
        "search": {"algorithm": "grid"},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2, "max_failures": 2},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
    )  # the script imports sweep_stubs
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(raw)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    s = json.loads(line[len("SUMMARY ") :])

    # trials ran on both nodes
    nodes = {p.name.split("@")[1] for p in (shared / "runs" / "nodes").iterdir()}
    assert {s["head"], s["worker"]} <= nodes, (nodes, s)
    # the worker node was removed mid-sweep, after a trial had finished, and the sweep still finished
    assert s["removed"].get("finished_before") and s["removed"].get("interrupted"), s
    states = {r["trial_id"]: r for r in s["rows"]}
    assert len(states) == 4 and all(r["state"] == "completed" and r["epoch"] == 3 for r in states.values()), (
        s["rows"],
        tune_errors(shared / "sweeps" / "cluster"),
    )
    assert s["available"] == s["total"] == 1.0, s  # one node left, nothing reserved

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{shared}/results/mlflow.db")
    exp = client.get_experiment_by_name("xgd")
    runs = client.search_runs([exp.experiment_id], filter_string=T.equals(T.SWEEP, "cluster"))
    trials = [r for r in runs if r.data.tags.get(T.KIND) == "trial"]
    parent = [r for r in runs if r.data.tags.get(T.KIND) == "sweep"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert sorted(r.data.tags[T.TRIAL_ID] for r in trials) == sorted(states)  # each trial once
    for r in trials:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_miou")]
        assert steps == [0, 1, 2], steps
        ckpt = Path(r.data.tags[T.CHECKPOINT])
        assert ckpt.is_relative_to(shared / "sweeps" / "cluster") and ckpt.exists(), ckpt
    for tid in s["removed"]["finished_before"]:  # completed before the node went: untouched
        assert tid in states and states[tid]["state"] == "completed"
    for tid in s["removed"]["interrupted"]:  # running on the lost node: retried, and it completes
        # (from its checkpoint when Ray Train had collected one before the node went; its 2 s report
        # interval makes that timing-dependent, so a restart from scratch is accepted too)
        assert tid in states and states[tid]["state"] == "completed", s
