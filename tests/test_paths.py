"""No name taken from a spec or a run can write outside its root through '..' or an absolute
path: sweep and train spec names are single safe path components (refused otherwise, one line,
exit 2), and names read back from an MLflow store (sweep names for report/export folders,
export card names) go through aggregate.safe_name / safe_join, which stay under their root."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.errors import SpecError, UserError
from orchestrator.spec.load import validate
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.spec.train import TrainSpec
from orchestrator.tracking import reader
from orchestrator.tracking import tags as T

ROOT = Path(__file__).resolve().parents[1]

ESCAPES = [
    "..",
    "../x",
    "../../etc/cron.d/x",
    "/etc/passwd",
    "/tmp/x",
    "a/../../b",
    "a/b",
    ".",
    ".hidden",
    "~root",
    "x\x00y",
    "C:\\Windows",
    "a\\..\\b",
    "-rf",
    " spaced",
    "",
]
# allowed by the validators and harmless: each stays one component directly under its root
ODD_BUT_SAFE = ["a..", "a..b", "x.", "a-b_c.d", "A1", "v1.2.3"]

SPACE = {"distill.alpha": {"type": "uniform", "low": 0.1, "high": 1.0}}


@pytest.mark.parametrize("name", ESCAPES)
def test_sweep_name_that_could_escape_is_refused(name):
    with pytest.raises(SpecError) as e:
        parse_sweep_spec({"name": name, "space": SPACE})
    assert str(e.value).startswith("name") and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ESCAPES)
def test_train_spec_name_that_could_escape_is_refused(name):
    with pytest.raises(SpecError) as e:
        validate(TrainSpec, {"name": name})
    assert str(e.value).startswith("name") and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ODD_BUT_SAFE)
def test_names_the_validators_allow_are_one_component_under_the_root(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    spec = parse_sweep_spec({"name": name, "space": SPACE, "results": "results"})
    assert Path(spec.experiment_dir).resolve().parent == Path(spec.storage_path).resolve()
    train = validate(TrainSpec, {"name": name, "run": {"out_dir": str(tmp_path / "runs")}})
    assert (Path(train.run.out_dir) / train.name).resolve().parent == (tmp_path / "runs").resolve()


@pytest.mark.parametrize("command", [["sweep"], ["train"]])
def test_escaping_name_from_the_command_line_is_one_line_exit_2(tmp_path, capsys, command):
    path = tmp_path / "s.yaml"
    raw = {"space": SPACE} if command == ["sweep"] else {}
    path.write_text(json.dumps({"name": "ok", **raw}))
    extra = ["--dry-run"] if command == ["sweep"] else []
    assert main([*command, str(path), "--set", "name=../../escape", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "name" in err and "\n" not in err
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("name", ESCAPES + ODD_BUT_SAFE + ["../" * 20 + "x", "a" * 500])
def test_safe_name_is_one_plain_component(name):
    clean = reader.safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]{0,119}", clean), clean
    assert clean not in (".", "..") and "/" not in clean and "\\" not in clean


@pytest.mark.parametrize("name", ESCAPES + ["../" * 20 + "x"])
def test_safe_join_stays_under_root(tmp_path, name):
    root = tmp_path / "exports"
    for parts in ((name,), (name, "1"), ("sweep", name)):
        path = reader.safe_join(root, *parts)
        assert path.is_relative_to(root.resolve()) and path != root.resolve(), (parts, path)


def test_safe_join_refuses_a_symlink_that_leads_out(tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    (root / "sneaky").symlink_to(tmp_path.parent)
    with pytest.raises(UserError, match="refusing to write outside"):
        reader.safe_join(root, "sneaky", "x")


def test_report_for_a_sweep_named_with_dotdots_writes_under_its_root(tmp_path):
    """A store written by someone else can hold any sweep name: the report folder stays inside."""
    from mlflow import MlflowClient

    from orchestrator.results.report import make_report

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("xgd", artifact_location=(tmp_path / "art").as_uri())
    evil = "../../../escaped"
    parent = client.create_run(exp, tags={T.KIND: "sweep", T.SWEEP: evil})
    child = client.create_run(
        exp, tags={T.KIND: "trial", T.SWEEP: evil, T.TRIAL_ID: "t1", T.PARENT: parent.info.run_id}
    )
    client.log_param(child.info.run_id, "distill.alpha", "0.5")
    client.log_metric(child.info.run_id, "val_miou", 0.5, step=0)
    client.set_terminated(child.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    out_root = tmp_path / "reports" / "deep"
    rep = make_report(client, evil, out_root, log=False, galleries=0)
    assert rep.dir.is_relative_to(out_root.resolve()) and rep.files
    assert all(Path(f).resolve().is_relative_to(out_root.resolve()) for f in rep.files)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("command", [["report"], ["export"], ["ui", "--port", "0"], ["sweep"]])
def test_unreachable_tracking_server_is_refused_quickly_in_one_line(command, tmp_path, capsys, no_ray):
    import time

    from orchestrator.cli import main

    uri = f"http://127.0.0.1:{_closed_port()}"
    if command == ["sweep"]:
        argv = [
            "sweep",
            str(ROOT / "search_spaces" / "quickstart.yaml"),
            "--set",
            f"results={tmp_path}",
            "--set",
            f"mlflow.tracking_uri={uri}",
        ]
    else:
        argv = [*command[:1], "--tracking-uri", uri, *command[1:]]
    t0 = time.monotonic()
    rc = main(argv)
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and uri in err[0] and "cannot be reached" in err[0], err
    assert took < 10, took
