"""Specs and stores that cannot work are refused before Ray starts, in one line naming the keys:
CUDA without a GPU from Ray, GPUs asked of a machine without one, a store MLflow cannot open; a
device 'auto' given GPUs trains on CUDA or fails, never on the CPU unnoticed; loader processes
beyond the trial's CPUs are a warning. Nothing already stored is changed by a refusal."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from orchestrator.spec.sweep import load_sweep_spec
from orchestrator.tracking.store import ENV_URI

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "search_spaces" / "quickstart.yaml")
TTPLA = str(ROOT / "search_spaces" / "ttpla.yaml")


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv(ENV_URI, raising=False)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    "spec, sets",
    [
        (TTPLA, ["resources.gpus_per_worker=0"]),  # ttpla trains on cuda
        (QUICKSTART, ["train.run.device=cuda"]),  # the quickstart asks for no GPU
    ],
)
def test_cuda_without_a_gpu_from_ray_is_a_spec_error(spec, sets, tmp_path, capsys, no_ray):
    args = ["sweep", spec, "--dry-run", "--set", f"results={tmp_path}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "train.run.device is 'cuda'" in err and "resources.gpus_per_worker is 0" in err


def test_a_cuda_teacher_without_a_gpu_is_a_spec_error(tmp_path, capsys, no_ray):
    args = ["sweep", QUICKSTART, "--dry-run", "--set", f"results={tmp_path}", "--set", "teacher.recipe.run.device=cuda"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "teacher.recipe.run.device is 'cuda'" in err and "teacher.gpus" in err


def test_device_auto_given_gpus_means_cuda():
    spec = load_sweep_spec(QUICKSTART, ["train.run.device=auto", "resources.gpus_per_worker=0.5"])
    assert spec.train.run.device == "cuda"
    assert load_sweep_spec(QUICKSTART, ["train.run.device=auto"]).train.run.device == "auto"
    if not torch.cuda.is_available():  # what such a trial says on a worker that cannot see its GPU
        from trainables.setup import pick_device

        with pytest.raises(ValueError, match="run.device='cuda' but no CUDA device is visible"):
            pick_device(spec.train.run.device)


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has a GPU")
def test_gpus_asked_of_a_machine_without_one_are_refused_before_ray(tmp_path, capsys, no_ray):
    args = ["sweep", QUICKSTART, "--set", f"results={tmp_path}", "--set", "resources.gpus_per_worker=1"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "resources.gpus_per_worker is 1" in err and "no visible CUDA GPU" in err


def test_more_loader_workers_than_cpus_is_a_warning(tmp_path, capsys, no_ray):
    args = ["sweep", QUICKSTART, "--set", f"results={tmp_path}", "--set", "train.data.workers=3"]
    with pytest.raises(no_ray):
        main(args)
    out = capsys.readouterr().out
    assert "warning: data.workers 3 > resources.cpus_per_worker 1" in " ".join(out.split())


# ------------------------------------------------------------------ stores MLflow cannot open


def mlflow_store(path: Path) -> str:
    """Made in another process: MLflow keeps an opened store per URI for its process's life."""
    uri = f"sqlite:///{path}"
    code = "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).create_experiment('kept')"
    subprocess.run([sys.executable, "-c", code, uri], check=True, capture_output=True, cwd=path.parent)
    return uri


def stores(tmp_path: Path) -> dict[str, tuple[str, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    future = tmp_path / "future.db"
    mlflow_store(future)
    with sqlite3.connect(future) as con:  # a schema newer than this MLflow knows
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    return {
        "text": (f"sqlite:///{text}", "is not an SQLite database"),
        "other": (f"sqlite:///{other}", "is an SQLite database without MLflow's tables"),
        "future": (f"sqlite:///{future}", "cannot be opened (Detected out-of-date database schema"),
    }


@pytest.mark.parametrize("which", ["text", "other", "future"])
@pytest.mark.parametrize("command", ["report", "export", "sweep"])
def test_a_store_mlflow_cannot_open_is_one_line_and_left_as_it_was(which, command, tmp_path, capsys, no_ray):
    uri, says = stores(tmp_path)[which]
    db = Path(uri.removeprefix("sqlite:///"))
    before = db.read_bytes()
    capsys.readouterr()  # MLflow's own lines while the test made its stores
    if command == "sweep":
        args = ["sweep", QUICKSTART, "--set", f"results={tmp_path / 'res'}", "--tracking-uri", uri]
    else:
        args = [command, "--out", str(tmp_path / "out"), "--tracking-uri", uri]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert f"the MLflow store {uri} {says}" in err, err
    assert db.read_bytes() == before  # nothing written to it
