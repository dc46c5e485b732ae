"""One store for every command: --tracking-uri > $MLFLOW_TRACKING_URI > the spec's
mlflow.tracking_uri > results/mlflow.db, the same for sweep, ablate, report, export and ui, named on
the first line each prints; a resumed sweep stays on its store. And the provenance pieces that need
no sweep: the environment files (git diff only when dirty) and where a trainer says it runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.tracking.store import ENV_URI, resolve_store

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "search_spaces" / "quickstart.yaml")
ABLATION = str(ROOT / "search_spaces" / "ablations" / "quickstart_table1.yaml")


def test_precedence_is_flag_then_environment_then_spec_then_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_URI, raising=False)
    default = f"sqlite:///{tmp_path}/res/mlflow.db"
    assert resolve_store(None, None, "res").uri == default and resolve_store(None, None, "res").source == "default"
    assert resolve_store(None, default, "res").source == "default"  # a resolved spec holds the default
    spec = resolve_store(None, "http://spec:5000", "res")
    assert (spec.uri, spec.source) == ("http://spec:5000", "the spec's mlflow.tracking_uri")
    monkeypatch.setenv(ENV_URI, "sqlite:///env.db")
    env = resolve_store(None, "http://spec:5000", "res")
    assert env.uri == f"sqlite:///{tmp_path}/env.db" and env.source.startswith(ENV_URI)
    assert "http://spec:5000 is overridden" in env.source
    flag = resolve_store("http://flag:5000", "http://spec:5000", "res")
    assert flag.uri == "http://flag:5000" and flag.source.startswith("--tracking-uri")
    assert flag.line() == f"store: http://flag:5000 ({flag.source})"


def _first_line(capsys) -> tuple[str, str]:
    out = capsys.readouterr()
    return out.out.splitlines()[0], out.err


@pytest.mark.parametrize("command", [["sweep", QUICKSTART], ["ablate", ABLATION]])
def test_sweep_and_ablate_print_the_store_and_the_ray_cluster_first(command, tmp_path, monkeypatch, capsys):
    env_uri = f"sqlite:///{tmp_path}/env/mlflow.db"
    monkeypatch.setenv(ENV_URI, env_uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main([*command, "--dry-run", "--set", f"results={tmp_path}/res"]) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert first == f"store: {env_uri} ({ENV_URI})" and second == "ray: a local Ray on this machine"

    flag = f"sqlite:///{tmp_path}/flag.db"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert main([*command, "--dry-run", "--tracking-uri", flag, "--set", "mlflow.tracking_uri=http://spec:5000"]) == 0
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first == f"store: {flag} (--tracking-uri; the spec's mlflow.tracking_uri http://spec:5000 is overridden)"
    assert second == "ray: auto (RAY_ADDRESS)"
    assert not Path(tmp_path, "flag.db").exists() and not Path(tmp_path, "env").exists()  # a dry run writes nothing


def _store_without_sweeps(root: Path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("x", artifact_location=(root / "art").as_uri())
    return uri


@pytest.mark.parametrize("command", [["report"], ["export"]])
def test_report_and_export_read_the_store_of_MLFLOW_TRACKING_URI(command, tmp_path, monkeypatch, capsys):
    uri = _store_without_sweeps(tmp_path)
    monkeypatch.setenv(ENV_URI, uri)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*command, "--out", str(tmp_path / "out")]) == 2
    first, err = _first_line(capsys)
    assert first == f"store: {uri} ({ENV_URI})"
    assert err.startswith(f"error: the MLflow store {uri} holds no sweeps") and err.count("\n") == 1
    assert not (tmp_path / "results").exists()  # the default store was never opened


def test_ui_names_the_store_of_MLFLOW_TRACKING_URI(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    monkeypatch.setenv(ENV_URI, f"sqlite:///{missing}")
    assert main(["ui", "--port", "0"]) == 2
    first, err = _first_line(capsys)
    assert first == f"store: sqlite:///{missing} ({ENV_URI})" and "no MLflow store" in err and str(missing) in err


def test_resume_on_another_store_is_refused_before_ray(tmp_path, monkeypatch, capsys, no_ray):
    from orchestrator.run.storage import save_spec
    from orchestrator.spec.sweep import load_sweep_spec

    monkeypatch.delenv(ENV_URI, raising=False)
    spec = load_sweep_spec(QUICKSTART, [f"results={tmp_path}/res"])
    save_spec(spec)  # the sweep started on the default store
    other = f"sqlite:///{tmp_path}/other.db"
    assert main(["sweep", QUICKSTART, "--set", f"results={tmp_path}/res", "--resume", "--tracking-uri", other]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"started on the MLflow store {spec.mlflow.tracking_uri}, not {other}" in err
    assert main(["sweep", QUICKSTART, "--set", f"results={tmp_path}/res", "--resume"]) == 2
    err = capsys.readouterr().err  # the same store passes; Tune then finds no state to restore here
    assert "MLflow store" not in err and "no sweep 'quickstart' to resume" in err


# ---------------------------------------------------------------- provenance without a sweep


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_environment_files_hold_versions_requirements_and_a_diff_only_when_dirty(tmp_path, monkeypatch):
    from orchestrator.tracking import environment as E

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = E.collect(repo)
    facts = json.loads(clean["environment.json"])
    assert set(clean) == {"environment.json", "requirements.txt"} and facts["git"]["dirty"] is False
    assert len(facts["git"]["commit"]) == 40 and facts["python"].count(".") == 2
    import mlflow
    import optuna
    import ray
    import torch

    versions = facts["versions"]
    assert (versions["ray"], versions["mlflow"], versions["optuna"]) == (
        ray.__version__,
        mlflow.__version__,
        optuna.__version__,
    )
    assert facts["torch"] == torch.__version__ and facts["torch"].startswith(versions["torch"])  # + build tag
    assert facts["cuda"] == (torch.version.cuda or "none") and "cudnn" in facts and "driver" in facts
    assert f"torch=={versions['torch']}" in clean["requirements.txt"].splitlines()

    (repo / "a.py").write_text("x = 2\n")
    dirty = E.collect(repo)
    assert json.loads(dirty["environment.json"])["git"]["dirty"] is True
    assert "-x = 1" in dirty["git_diff.patch"] and "+x = 2" in dirty["git_diff.patch"]
    assert json.loads(E.collect(tmp_path / "no-git")["environment.json"])["git"]["commit"] == "none"


def test_nvidia_smi_gives_the_gpus_and_the_driver(tmp_path, monkeypatch):
    from orchestrator.tracking import environment as E

    smi = tmp_path / "nvidia-smi"  # what `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` prints
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H200, 143771, 570.86.15'\necho '1, NVIDIA H200, 143771, 570.86.15'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(E, "_gpus_nvml", lambda: None)  # no pynvml
    got = E.gpus()
    assert got["driver"] == "570.86.15" and got["gpu_source"] == "smi"
    assert got["gpus"] == [{"index": i, "name": "NVIDIA H200", "memory_mib": 143771} for i in (0, 1)]


def test_a_resumed_sweep_run_keeps_its_first_environment_and_adds_one(tmp_path):
    from orchestrator.tracking.writer import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "xgd", "s").start_sweep("name: s\n", {}, {})
    again = Tracker(uri, "xgd", "s").start_sweep("name: s\n", {}, {})  # the driver of --resume
    assert again == first
    client = Tracker(uri, "xgd", "s").client
    top = {Path(a.path).name: a.is_dir for a in client.list_artifacts(first, "environment")}
    resumed = [name for name, is_dir in top.items() if is_dir]
    assert {"environment.json", "requirements.txt"} <= set(top) and len(resumed) == 1
    assert resumed[0].startswith("resumed-") and resumed[0].endswith("Z")
    inner = {Path(a.path).name for a in client.list_artifacts(first, f"environment/{resumed[0]}")}
    assert {"environment.json", "requirements.txt"} <= inner


def test_no_gpu_tools_reads_as_none(monkeypatch):
    import torch

    from orchestrator.tracking import environment as E

    monkeypatch.setattr(E.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setattr(E, "_gpus_nvml", lambda: None)  # no pynvml
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert E.gpus() == {"gpus": [], "driver": "none", "gpu_source": "none"}


def test_a_trainer_on_the_cpu_says_where_it_runs():
    import socket

    import torch

    from trainables.setup import placement

    ray = sys.modules.get("ray")  # the session's shared test Ray may run in this process
    in_ray = {"ray_node": ray.get_runtime_context().get_node_id()} if ray and ray.is_initialized() else {}
    assert placement(torch.device("cpu")) == {"host": socket.gethostname(), "device": "cpu", **in_ray}
