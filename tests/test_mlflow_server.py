"""MLflow through a real tracking server (`mlflow server`, SQLite backend, artifacts served by the
server) and a server that goes away: the sweep driver's outbox (orchestrator.tracking.pending)
queues the writes a dead store refuses, keeps them on disk, delivers them in order when the store
answers again (later callbacks, the sweep's end, or a `--resume`), and says what is not logged.

The fast tests use a sqlite store and a closed port (a real MLflow client, refused connections);
the slow ones start `mlflow server` (the venv's) on a free port of 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from io import StringIO
from pathlib import Path

import pytest

from orchestrator.tracking import pending as P
from orchestrator.tracking import tags as T
from orchestrator.tracking.writer import Tracker

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def child_runs(client, sweep: str) -> dict[str, object]:
    """trial id -> its MLflow run (fresh from the store)."""
    exp = client.get_experiment_by_name("xgd")
    runs = client.search_runs([exp.experiment_id], filter_string=T.equals(T.SWEEP, sweep))
    return {r.data.tags[T.TRIAL_ID]: r for r in runs if r.data.tags.get(T.KIND) == T.TRIAL_RUN}


def steps(client, run_id: str, key: str = "val_miou") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


# ------------------------------------------------------------------ the outbox, without a server


@pytest.fixture(scope="module")
def store(module_tmp) -> str:
    """One sqlite store for the fast tests (MLflow sets up a new one in seconds); a sweep each."""
    return sqlite_uri(module_tmp / "mlflow.db")


def _result(epoch: int) -> dict:
    return {"epoch": epoch, "epochs_done": epoch + 1, "val_miou": 0.1 * (epoch + 1), "train_loss": 1.0 / (epoch + 1)}


def test_writes_a_dead_server_refuses_wait_on_disk_and_land_in_order_later(store, tmp_path, monkeypatch):
    """The driver writes while the store is down (a closed port): each attempt blocks only briefly,
    later writes queue behind the first without an attempt of their own until the retry interval
    passes, the queue is on disk, and a new driver of the sweep delivers it: every epoch once."""
    from mlflow import MlflowClient

    first = Tracker(store, "xgd", "outage")
    parent = first.start_sweep("name: demo\n", {"space": "{}"}, {})
    first.keep_pending(tmp_path / "pending.jsonl", say=lambda msg: None)
    first.trial_started("t1", {"distill.alpha": 0.5}, {T.TRIAL_DIR: "/x"})
    first.trial_result("t1", _result(0))
    assert first.outbox.retried == 0 and not (tmp_path / "pending.jsonl").exists()  # delivered at once

    live = first.client
    first.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # the server went away
    notes: list[str] = []
    first.outbox.say = notes.append
    t0 = time.monotonic()
    for epoch in (1, 2):
        first.trial_result("t1", _result(epoch))
    first.trial_ended("t1", "completed", {T.EPOCHS_DONE: 3})
    blocked = time.monotonic() - t0
    assert first.outbox.failed_attempts == 1, "writes behind a failed one must wait for the retry interval"
    assert blocked < 10 and first.outbox.longest_wait < 10, (blocked, first.outbox.longest_wait)
    assert len(notes) == 1 and "cannot be reached" in notes[0] and "training goes on" in notes[0], notes

    kept = [json.loads(ln) for ln in (tmp_path / "pending.jsonl").read_text().splitlines()]
    assert [w["kind"] for w in kept] == ["metrics", "metrics", "trial_ended"]
    assert [w["args"][1] for w in kept[:2]] == [1, 2] and all(w["queued"] for w in kept)
    # the server is still down at the end: one line per kind, and where the writes are kept
    monkeypatch.setattr(P, "END_WAIT_S", 0.0)
    notes.clear()
    first.finish_sweep("completed", {T.BEST_TRIAL_ID: "t1"}, {"best_val_miou": 0.3})
    lines = [n for n in notes if n.startswith("MLflow: ")]
    assert any("NOT logged" in ln and "2 epoch metrics of trial(s) t1" in ln for ln in lines), lines
    assert any("NOT logged" in ln and "1 trial ends (status) of trial(s) t1" in ln for ln in lines), lines
    assert any("NOT logged" in ln and "sweep run end (status" in ln for ln in lines), lines
    assert any(str(tmp_path / "pending.jsonl") in ln and "--resume" in ln for ln in lines), lines

    # a later driver of the same sweep (e.g. --resume) delivers what the first one kept
    second = Tracker(store, "xgd", "outage")
    assert second.start_sweep("name: demo\n", {"space": "{}"}, {}) == parent
    second.keep_pending(tmp_path / "pending.jsonl", say=notes.append)
    assert not (tmp_path / "pending.jsonl").exists() and second.outbox.retried == 4
    (run,) = child_runs(live, "outage").values()
    assert steps(live, run.info.run_id) == [0, 1, 2] and run.info.status == "FINISHED"
    assert run.data.tags[T.STATUS] == "completed" and run.data.params["distill.alpha"] == "0.5"
    got = live.get_run(parent)
    assert got.info.status == "FINISHED" and got.data.tags[T.BEST_TRIAL_ID] == "t1"
    assert got.data.metrics["best_val_miou"] == pytest.approx(0.3)


def test_the_same_driver_delivers_the_queue_when_the_store_answers_again(store, tmp_path, monkeypatch):
    """A trial that starts while the store is down: its run is created when the store is back, then
    its epochs and end land in order (a write replayed after a lost answer logs nothing twice)."""
    from mlflow import MlflowClient

    monkeypatch.setattr(P, "RETRY_S", 0.2)
    tr = Tracker(store, "xgd", "back")
    tr.start_sweep("name: back\n", {}, {})
    tr.keep_pending(tmp_path / "pending.jsonl", say=lambda msg: None)
    live = tr.client
    tr.client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    assert tr.trial_started("t2", {"distill.tau": 1.0}, {}) is None  # queued: no run yet
    tr.trial_result("t2", _result(0))
    assert len(tr.outbox.queue) == 2 and tr.runs == {}

    tr.client = live  # the store answers again: the next callback after the interval delivers all
    time.sleep(0.25)
    tr.trial_result("t2", _result(1))
    tr.trial_result("t2", _result(1))  # Tune repeats nothing, but a replay after a lost answer may
    tr.trial_ended("t2", "completed", {})
    assert len(tr.outbox.queue) == 0 and tr.outbox.retried == 2 and not (tmp_path / "pending.jsonl").exists()
    run = child_runs(live, "back")["t2"]
    assert steps(live, run.info.run_id) == [0, 1] and run.info.status == "FINISHED"
    assert run.data.params["distill.tau"] == "1.0"


def test_a_write_the_store_refuses_is_dropped_and_said_not_retried_forever(store, tmp_path):
    tr = Tracker(store, "xgd", "refused")
    tr.start_sweep("name: refused\n", {}, {})
    notes: list[str] = []
    tr.keep_pending(tmp_path / "pending.jsonl", say=notes.append)
    tr.set_tags("no-such-run", {"a": 1})  # the store answers: the run does not exist (HTTP 404)
    tr.trial_started("t3", {}, {})
    assert len(tr.outbox.queue) == 0 and tr.outbox.failed_attempts == 0 and "t3" in tr.runs
    assert len(notes) == 1 and "refused a write (tag writes); dropped" in notes[0], notes
    assert "Run with id=no-such-run not found" in notes[0]


def test_a_cut_last_line_is_skipped_and_unknown_kinds_are_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(
        json.dumps({"kind": "metrics", "args": ["t", 0, 0, {"a": 1.0}]})
        + "\n"
        + '{"kind": "trial_en'  # killed mid-write
    )
    q = P.PendingWrites(f)
    assert q.load() == 1 and q.head().kind == "metrics" and q.head().queued
    with pytest.raises(ValueError, match="unknown MLflow write kind 'bogus'"):
        q.add("bogus")
    q.pop()
    q.save()
    assert not f.exists()


# ------------------------------------------------------------------ a real tracking server


class Server:
    """`mlflow server` on 127.0.0.1:<port>: SQLite backend and served artifacts under `root`; it can
    be killed and started again on the same port, as a crashed and restarted server would be."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db, self.artifacts = root / "mlflow.db", root / "artifacts"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> float:
        """Start it and wait until it answers; the seconds that took."""
        from orchestrator.tracking.server import server_env, wait_ready

        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            sqlite_uri(self.db),
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        t0 = time.monotonic()
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env()
            )
        wait_ready(self.url, self.proc, timeout)
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL to its process group: the server is gone at once, mid-request or not."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        from orchestrator.tracking.server import stop

        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server")
    srv.start()
    yield srv
    srv.stop()


SPEC = """
name: served
results: {results}
train:
  data: {{kind: synthetic, num_train: 4, num_val: 2, num_test: 2, image_size: 64, crop: 64, batch_size: 2}}
  model: {{arch: deeplabv3plus, encoder: mobilenet_v2}}
  optim: {{epochs: 2}}
  run: {{device: cpu, max_steps_per_epoch: 2, out_dir: {runs}}}
space:
  optim.lr: {{type: choice, values: [0.01, 0.02]}}
search: {{algorithm: grid}}
early_stopping: {{kind: none}}
resources: {{num_workers: 1, cpus_per_worker: 1, max_concurrent: 2}}
"""


def local_stores(*roots: Path) -> list[Path]:
    """MLflow stores or artifact folders created locally (none may appear: all goes to the server)."""
    names = ("mlruns", "mlartifacts", "mlflow.db")
    return [p for root in roots for name in names for p in root.rglob(name)]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_sweep_report_export_and_ui_through_a_tracking_server(ray_cluster, server, tmp_path, monkeypatch, capsys):
    """A real (tiny) sweep, `report` from another working directory, `export` and `ui`, all against
    http://127.0.0.1:PORT: runs, tables, plots and models go through HTTP into the server's store
    and artifact destination, and nothing lands in a local store."""
    from mlflow import MlflowClient

    from orchestrator.cli import main

    spec = tmp_path / "served.yaml"
    spec.write_text(SPEC.format(results=tmp_path / "results", runs=tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(spec), "--set", f"mlflow.tracking_uri={server.url}"]) == 0
    client = MlflowClient(server.url)
    runs = child_runs(client, "served")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs.values())
    assert all(steps(client, r.info.run_id) == [0, 1] for r in runs.values())
    (parent,) = client.search_runs([client.get_experiment_by_name("xgd").experiment_id], T.equals(T.KIND, T.SWEEP_RUN))
    served = server.artifacts / parent.info.experiment_id / parent.info.run_id / "artifacts"
    assert (served / "sweep.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"  # a fresh working directory: only the server's URI in common
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    capsys.readouterr()
    assert main(["report", "served", "--gallery", "0"]) == 0
    report = elsewhere / "results" / "reports" / "served"
    assert "2/2 trials" in capsys.readouterr().out
    assert (report / "trials.parquet").is_file() and list((report / "plots").glob("*.png"))
    logged = {p.relative_to(served / "report").as_posix() for p in (served / "report").rglob("*") if p.is_file()}
    assert "trials.parquet" in logged and any(p.startswith("plots/") and p.endswith(".png") for p in logged), logged

    assert main(["export", "served", "--top", "1", "--format", "pt"]) == 0
    assert (elsewhere / "results" / "exports" / "served" / "1" / "model.safetensors").is_file()
    versions = client.search_model_versions("name='xgd-served'")
    assert len(versions) >= 1 and versions[0].run_id in {r.info.run_id for r in runs.values()}
    assert list(server.artifacts.rglob("MLmodel")), "the exported student was not logged through the server"

    assert local_stores(tmp_path / "results", tmp_path / "runs", elsewhere) == []
    assert not [p for p in tmp_path.iterdir() if p.name in ("mlruns", "mlartifacts", "mlflow.db")]

    # ui: the tracking server serves its UI; `ui` names it and links each sweep's parent run there
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ui", "--port", str(free_port())],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    link = f"{server.url}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    assert f"MLflow UI: {server.url}" in proc.stdout and f"sweep served: {link}" in proc.stdout, proc.stdout
    with urllib.request.urlopen(f"{server.url}/", timeout=30) as r:
        assert r.status == 200 and "<html" in r.read().decode().lower()
    with urllib.request.urlopen(f"{server.url}/ajax-api/2.0/mlflow/runs/get?run_id={parent.info.run_id}") as r:
        assert json.load(r)["run"]["info"]["run_id"] == parent.info.run_id


def stub_spec(tmp_path: Path, server: Server, name: str, epochs: int, tenths_per_epoch: int):
    """Two stub trials (sweep_stubs: no model, `tenths_per_epoch` / 10 s per epoch) tracked on `server`."""
    from orchestrator.spec.sweep import parse_sweep_spec
    from test_sweep import stub_raw

    raw = stub_raw(
        tmp_path,
        name,
        search={"num_samples": 2},
        early_stopping={"kind": "none"},
        train={"optim": {"epochs": epochs}, "run": {"max_steps_per_epoch": tenths_per_epoch}},
        mlflow={"tracking_uri": server.url},
    )
    return parse_sweep_spec(raw)


def logged_epochs(db: Path) -> int:
    from test_sweep import poll_trials

    return sum(t["epochs"] for t in poll_trials(db).values())


def kill_after_first_epoch(server: Server, restart_after_s: float | None, times: dict) -> threading.Thread:
    """In the background: kill the server once an epoch is logged (read from its database), and start it
    again on the same port `restart_after_s` later (None: leave it down)."""

    def run() -> None:
        deadline = time.monotonic() + 240
        while logged_epochs(server.db) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        server.kill()
        times["killed"] = time.time()
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            times["start_s"] = server.start()
            times["back"] = time.time()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_server_killed_and_restarted_mid_sweep_loses_nothing(ray_cluster, server, tmp_path):
    """The sweep trains on while the server is gone, the driver blocks only briefly per attempt, and
    every epoch, status and the sweep's end are in MLflow after the server is back."""
    from mlflow import MlflowClient
    from rich.console import Console

    import sweep_stubs
    from orchestrator.run.sweep import run_sweep

    spec = stub_spec(tmp_path, server, "outage", epochs=14, tenths_per_epoch=20)  # 28 s per trial
    times: dict = {}
    killer = kill_after_first_epoch(server, restart_after_s=3, times=times)
    out = StringIO()
    t0 = time.monotonic()
    outcome = run_sweep(spec, worker=sweep_stubs.stub_worker, console=Console(file=out, width=250))
    wall = time.monotonic() - t0
    killer.join(timeout=200)
    text = out.getvalue()
    assert "killed" in times and "back" in times, (times, text[-3000:])
    assert sorted(r.state for r in outcome.rows) == ["completed", "completed"], text[-3000:]

    client = MlflowClient(server.url)
    runs = child_runs(client, "outage")
    assert len(runs) == 2
    during = 0
    for run in runs.values():
        assert run.info.status == "FINISHED" and run.data.tags[T.STATUS] == "completed"
        hist = sorted(client.get_metric_history(run.info.run_id, "val_miou"), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(14))  # every epoch once
        # epochs reported while the server was down carry their own time: the trials kept training
        during += sum(times["killed"] * 1000 <= m.timestamp <= times["back"] * 1000 for m in hist)
    assert during >= 2, (during, times)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[T.BEST_TRIAL_ID] in runs

    assert "cannot be reached" in text and "answers again" in text and "NOT logged" not in text, text[-3000:]
    m = re.search(
        r"MLflow: (\d+) write\(s\) waited .* \((\d+) failed attempt\(s\), the longest blocked the driver ([\d.]+) s\)",
        text,
    )
    assert m, text[-3000:]
    retried, attempts, longest = int(m[1]), int(m[2]), float(m[3])
    assert retried >= 2 and longest < 10, m[0]
    assert not Path(spec.results, "mlflow-pending", "outage.jsonl").exists()
    print(
        f"\nserver down {times['back'] - times['killed']:.1f} s (restart took {times['start_s']:.1f} s); "
        f"{retried} writes retried over {attempts} failed attempts, longest {longest:.1f} s; "
        f"{during} epochs reported during the outage; sweep wall {wall:.0f} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_server_down_until_the_end_keeps_the_writes_and_resume_delivers_them(
    ray_cluster, server, tmp_path, monkeypatch, capsys
):
    """The sweep still finishes, says per kind what was not logged and where it is kept; once the
    server is back, `--resume` delivers it and the runs are complete."""
    from mlflow import MlflowClient
    from rich.console import Console

    import sweep_stubs
    from orchestrator.cli import main
    from orchestrator.run.sweep import run_sweep

    monkeypatch.setattr(P, "END_WAIT_S", 3.0)
    spec = stub_spec(tmp_path, server, "down", epochs=4, tenths_per_epoch=10)
    killer = kill_after_first_epoch(server, restart_after_s=None, times={})
    out = StringIO()
    outcome = run_sweep(spec, worker=sweep_stubs.stub_worker, console=Console(file=out, width=250))
    killer.join(timeout=60)
    text = out.getvalue()
    assert sorted(r.state for r in outcome.rows) == ["completed", "completed"], text[-3000:]
    kept = Path(spec.results, "mlflow-pending", "down.jsonl")
    assert kept.is_file(), text[-3000:]
    kinds = {json.loads(ln)["kind"] for ln in kept.read_text().splitlines()}
    assert {"metrics", "trial_ended", "finish_sweep"} <= kinds, kinds
    not_logged = [ln for ln in text.splitlines() if "NOT logged" in ln]
    assert len(not_logged) == len(kinds), (not_logged, kinds)  # one line per kind
    for label in ("epoch metrics of trial(s)", "trial ends (status)", "sweep run end (status"):
        assert any(label in ln for ln in not_logged), (label, not_logged)
    assert f"kept in {kept}" in text and "--resume" in text
    print("\n" + "\n".join(ln for ln in text.splitlines() if "MLflow" in ln))

    server.start()
    # `report` says where the undelivered writes wait and how to deliver them (its own table may fail
    # for want of them: the trials' ends are among them)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    capsys.readouterr()
    main(["report", "down", "--gallery", "0", "--no-log", "--out", str(Path(spec.results, "reports"))])
    said = capsys.readouterr().out
    assert str(kept) in said.replace("\n", "") and "--resume" in said, said
    out = StringIO()
    run_sweep(spec, resume=True, worker=sweep_stubs.stub_worker, console=Console(file=out, width=250))
    assert "delivering" in out.getvalue() and not kept.exists(), out.getvalue()[-3000:]
    client = MlflowClient(server.url)
    runs = child_runs(client, "down")
    assert len(runs) == 2
    for run in runs.values():
        assert run.info.status == "FINISHED" and steps(client, run.info.run_id) == [0, 1, 2, 3]
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
