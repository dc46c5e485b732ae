"""Checkpoints on an S3-compatible object store: moto's S3 server on a free local port stands in
for the endpoint, given as the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION). A sweep with `storage_path: s3://...` whose driver is
SIGKILLed resumes from the checkpoints in the bucket, with nothing of Tune's on local disk, and
report and export read the best checkpoint back from the bucket. A missing bucket or an endpoint
that does not answer is refused before Ray starts, in one line naming the URI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
import yaml

from orchestrator.cli import main
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T
from test_sweep import mlflow_runs, poll_trials

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "xgd-test"
MARKS = "markers"  # under run.out_dir: <trial>-resumed-<epoch>, left by a trial that started from a checkpoint
SECRET = "xgd-test-secret-never-logged"  # AWS_SECRET_ACCESS_KEY: must reach no MLflow param or tag
DRIVER_TIMEOUT_S = 300  # for each of the two drivers (the killed one is caught midway well before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server with one bucket; the AWS variables point at it for this module only."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def raw_spec(tmp_path: Path, name: str, storage: str, **resources) -> dict:
    """Tiny real trainer: DeepLabV3+ MobileNetV2 on 64 px synthetic scenes, 2 steps an epoch, one
    trial at a time (one process trains them all: each process costs a torch import). SGD without
    momentum keeps no optimizer state: a checkpoint is half the size for moto's server to take in."""
    return {
        "name": name,
        "results": str(tmp_path / "results"),
        "storage_path": storage,
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 64},
            "model": {"encoder": "mobilenet_v2"},
            "optim": {"epochs": 3, "momentum": 0.0},
            "run": {"out_dir": str(tmp_path / "runs"), "max_steps_per_epoch": 2, "explain": False},
        },
        "space": {"optim.lr": {"type": "choice", "values": [0.01, 0.02]}},
        "search": {"algorithm": "grid"},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 1, **resources},
    }


def marking_train_loop(config: dict) -> dict:
    """trainables.loop.train_loop, leaving a marker when the trial starts from a checkpoint."""
    from trainables.loop import train_loop
    from trainables.reporting import METRICS_FILE, session_api

    ckpt = session_api().get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            epoch = json.loads(Path(d, METRICS_FILE).read_text())["epoch"]
        marks = Path(config["run"]["out_dir"], MARKS)
        marks.mkdir(parents=True, exist_ok=True)
        (marks / f"{config['name']}-resumed-{epoch}").touch()
    return train_loop(config)


SCRIPT = """
import json, sys
import ray.cloudpickle, test_object_store
ray.cloudpickle.register_pickle_by_value(test_object_store)
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
run_sweep(parse_sweep_spec(json.loads(sys.argv[1])), resume=sys.argv[2] == "resume",
          worker=test_object_store.marking_train_loop)
"""


def driver(raw: dict, tmp_path: Path, resume: bool) -> subprocess.Popen:
    """The sweep's driver in its own process with its own embedded Ray, which inherits the AWS
    variables (the test session's Ray was started without them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(raw), "resume" if resume else "start"],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE if resume else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def resumable_on_store(experiment_uri: str) -> bool:
    """Tune's last snapshot in the bucket holds an unfinished trial with a checkpoint: Tune's own
    (one-process trials) or its Train run's (in <sweep>/train/<trial>; test_sweep.resumable_in_snapshot)."""
    import logging

    from ray.tune import ExperimentAnalysis

    from orchestrator.run.storage import read_text

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        trials = ExperimentAnalysis(experiment_uri).trials
    except Exception:  # noqa: BLE001 - no snapshot yet, or one half written: poll again
        return False

    def train_checkpointed(trial_id: str) -> bool:
        try:
            snap = read_text(f"{experiment_uri}/train/{trial_id}/checkpoint_manager_snapshot.json")
            return bool(json.loads(snap).get("checkpoint_results"))
        except (OSError, ValueError):
            return False

    return any(
        t.status not in ("TERMINATED", "ERROR") and (t.checkpoint is not None or train_checkpointed(t.trial_id))
        for t in trials
    )


# ------------------------------------------------------------------ before Ray


def test_missing_bucket_is_refused_before_ray_naming_the_uri(s3, tmp_path, no_ray, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path, "nobucket", "s3://no-such-bucket/xgd")))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'s3://no-such-bucket/xgd'" in err[0] and "does not exist" in err[0], err
    assert os.environ["AWS_ENDPOINT_URL"] in err[0]


def test_unreachable_endpoint_is_refused_before_ray_naming_the_uri(tmp_path, no_ray, capsys, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path, "noendpoint", f"s3://{BUCKET}/xgd")))
    t0 = time.monotonic()
    assert main(["sweep", str(path)]) == 2
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"'s3://{BUCKET}/xgd'" in err[0] and endpoint in err[0], err
    assert took < 15, f"took {took:.1f} s to refuse"


def test_uri_with_options_is_refused_before_ray(s3, tmp_path, no_ray, capsys):
    path = tmp_path / "s.yaml"
    uri = f"s3://{BUCKET}/xgd?endpoint_override=localhost:9000"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path, "query", uri)))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(uri) in err[0] and "AWS_ENDPOINT_URL" in err[0], err


# ------------------------------------------------------------------ a sweep in the bucket


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_driver_killed_sweep_resumes_from_checkpoints_in_the_bucket(s3, tmp_path):
    kill_resume_report_export(s3, tmp_path, executor="tune")


def kill_resume_report_export(s3, tmp_path: Path, **resources) -> None:
    """The sweep in the bucket, its driver SIGKILLed midway, --resume, then report and export."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    raw = raw_spec(tmp_path, "s3resume", f"s3://{BUCKET}/xgd", **resources)
    spec = parse_sweep_spec(raw)
    db = Path(spec.results, "mlflow.db")
    proc = driver(raw, tmp_path, resume=False)
    killed_at: dict = {}
    try:
        deadline = time.time() + DRIVER_TIMEOUT_S
        while time.time() < deadline and proc.poll() is None:
            trials = poll_trials(db)
            midway = [t for t in trials.values() if t["status"] == "RUNNING" and 1 <= t["epochs"] < 3]
            if midway and resumable_on_store(spec.experiment_dir):
                killed_at = poll_trials(db)
                break
            time.sleep(0.3)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the driver
        proc.wait()
    assert killed_at, f"no trial was caught midway with a checkpoint: {proc.stderr.read().decode()[-3000:]}"

    again = driver(raw, tmp_path, resume=True)
    out, err = again.communicate(timeout=DRIVER_TIMEOUT_S)
    assert again.returncode == 0, (out.decode()[-2000:], err.decode()[-3000:])

    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [c for c in children if c.data.tags.get(T.STATUS) != "orphaned"]  # started after the last snapshot
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children), [c.data.tags for c in children]
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_miou")]
        assert steps == [0, 1, 2], steps  # every epoch once
        assert c.data.tags[T.CHECKPOINT].startswith(f"{spec.experiment_dir}/"), c.data.tags[T.CHECKPOINT]
    for run in parents + children:
        assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if SECRET in v], run.info.run_id
    marks = sorted(p.name for p in (tmp_path / "runs" / MARKS).glob("*-resumed-*"))
    running = {tid for tid, t in killed_at.items() if t["status"] == "RUNNING"}
    assert {m.split("-resumed-")[0] for m in marks} & running, (marks, killed_at)  # not restarted from scratch

    # the checkpoints are in the bucket, and nothing of Tune's is on local disk
    stored = keys(s3, f"xgd/{spec.name}/")
    assert any(k.endswith("/checkpoint.pt") for k in stored) and any(k.endswith("/best.pt") for k in stored), stored
    local = [
        p for p in tmp_path.rglob("*") if p.name.startswith(("checkpoint", "experiment_state")) or p.suffix == ".pt"
    ]
    assert not local, local

    # report and export read the best checkpoint back from the bucket
    uri = ["--tracking-uri", spec.mlflow.tracking_uri]
    assert main(["report", spec.name, *uri, "--out", str(tmp_path / "reports"), "--no-log"]) == 0
    assert list((tmp_path / "reports").rglob("*gallery*.png")), sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["export", spec.name, *uri, "--format", "pt", "--out", str(tmp_path / "exports"), "--no-register"]) == 0
    assert list((tmp_path / "exports").rglob("model.safetensors"))
