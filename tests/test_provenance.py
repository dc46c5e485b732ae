"""A tiny real sweep with only MLFLOW_TRACKING_URI naming the store: sweep, report and export all
use that store (the spec's default store is never created), the sweep's parent run holds the
environment/ artifact, each trial's run says on which host, Ray node and device it trained, and
the export is registered there with the alias `champion`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.tracking import tags as T
from orchestrator.tracking.store import ENV_URI

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_spec(tmp_path: Path) -> Path:
    raw = {
        "name": "prov",
        "results": str(tmp_path / "res"),
        "train": {
            "data": {
                "kind": "synthetic",
                "num_train": 8,
                "num_val": 4,
                "num_test": 4,
                "image_size": 64,
                "crop": 64,
                "batch_size": 4,
            },
            "optim": {"epochs": 1},
            "run": {"max_steps_per_epoch": 2, "out_dir": str(tmp_path / "runs"), "device": "cpu"},
        },
        "space": {"distill.alpha": {"type": "choice", "values": [0.5, 1.0]}},
        "search": {"algorithm": "tpe", "num_samples": 2, "seed": 0},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
    }
    path = tmp_path / "prov.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sweep_report_export_use_MLFLOW_TRACKING_URI_and_record_provenance(ray_cluster, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/env/mlflow.db"
    monkeypatch.setenv(ENV_URI, uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    line = f"store: {uri} ({ENV_URI})"

    assert main(["sweep", str(tiny_spec(tmp_path))]) == 0
    assert capsys.readouterr().out.splitlines()[0] == line
    assert not (tmp_path / "res" / "mlflow.db").exists() and not (tmp_path / "results").exists()

    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], T.matching({T.KIND: "sweep", T.SWEEP: "prov"})
    )
    files = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "environment")}
    got = client.download_artifacts(parent.info.run_id, "environment/environment.json", str(tmp_path))
    facts = json.loads(Path(got).read_text())
    assert {"environment.json", "requirements.txt"} <= files
    assert ("git_diff.patch" in files) == bool(facts["git"]["dirty"])  # the diff exactly when the tree is dirty
    for key in ("python", "torch", "cuda", "cudnn", "gpus", "driver"):
        assert key in facts, key
    assert {"ray", "mlflow", "optuna"} <= set(facts["versions"])
    children = client.search_runs([parent.info.experiment_id], T.matching({T.KIND: "trial", T.SWEEP: "prov"}))
    node = ray_cluster.get_runtime_context().get_node_id()  # one local node: the trials ran on it
    assert len(children) == 2
    for run in children:
        tags = run.data.tags
        assert (tags[T.HOST], tags[T.RAY_NODE], tags[T.DEVICE]) == (socket.gethostname(), node, "cpu")
        assert run.info.status == "FINISHED" and "host" not in run.data.metrics

    out = tmp_path / "reports"
    assert main(["report", "prov", "--out", str(out), "--gallery", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == line
    assert (out / "prov" / "trials.csv").is_file()
    assert client.list_artifacts(parent.info.run_id, "report")  # logged to the same store's parent run

    assert main(["export", "prov", "--out", str(tmp_path / "exports"), "--format", "pt"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == line
    champion = client.get_model_version_by_alias("xgd-prov", "champion")
    card = json.loads((tmp_path / "exports" / "prov" / "1" / "model_card.json").read_text())
    assert champion.run_id == card["source"]["run_id"] and card["source"]["tracking_uri"] == uri
    assert not (tmp_path / "res" / "mlflow.db").exists() and not (tmp_path / "results").exists()
