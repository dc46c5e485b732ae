"""The MLflow UI on a store: `mlflow server` in its own process group, bound to 127.0.0.1 unless
told otherwise, with a link per sweep; it runs until Ctrl-C or SIGTERM and takes its workers
down with it. The UI has no login (see the `ui` command's help). optuna-dashboard on a sweep's
persisted Optuna study (`ui --optuna`) runs the same way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.tracking import tags as T
from orchestrator.tracking.store import check_reachable, sqlite_path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_command(
    uri: str, host: str, port: int, artifacts_root: str, workers: int = 1, allowed_hosts: str | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts_root,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def exposure_warning(host: str, port: int, what: str = "the MLflow UI") -> str | None:
    if host in LOOPBACK:
        return None
    return (
        f"WARNING: {what} has no login and will be reachable by anyone who can reach {host}:{port}; "
        "they can read and delete runs. Use --host 127.0.0.1 (the default) with an SSH tunnel unless "
        "this network is trusted."
    )


def server_env() -> dict[str, str]:
    """MLflow 3 starts seven huey job consumers (GenAI scoring, trace archival; ~270 MB each) that
    browsing training runs never uses and that delay shutdown: off unless the user turned them on."""
    return {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
    }


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_ready(
    url: str, proc: subprocess.Popen, timeout: float, what: str = "mlflow server", page: str = "/health"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"{what} exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(f"{url}{page}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"{what} did not answer at {url}{page} within {timeout:.0f} s")


def stop(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """End the server and its workers: they run in their own process group, started here."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def sweep_links(uri: str, base: str) -> list[str]:
    """'name: URL of its parent run' per sweep (empty when the store cannot be read)."""
    try:
        from orchestrator.tracking import reader

        client = reader.open_store(uri)
        out = []
        for run in reader.search_all(client, T.equals(T.KIND, T.SWEEP_RUN)):
            name = run.data.tags.get(T.SWEEP, run.info.run_name)
            out.append(f"{name}: {base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        return out
    except Exception:  # links are a convenience; the server is what matters
        return []


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(
    uri: str,
    host: str,
    port: int,
    artifacts_root: str | None = None,
    workers: int = 1,
    allowed_hosts: str | None = None,
    startup_timeout: float = 120.0,
) -> int:
    """Serve the UI on `uri` until interrupted; the server's exit code (0 after Ctrl-C/SIGTERM)."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {str(db)!r}; run a sweep first or pass --tracking-uri")
    check_reachable(uri)
    if uri.startswith(("http://", "https://")):  # a tracking server serves its own UI; MLflow cannot serve one
        base = uri.rstrip("/")
        print(f"MLflow UI: {base} (served by the tracking server)", flush=True)
        for line in sweep_links(uri, base):
            print(f"  sweep {line}", flush=True)
        return 0
    root = Path(artifacts_root) if artifacts_root else (db.parent if db else Path("results")) / "mlartifacts"
    if not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use; pass another --port")
    warning = exposure_warning(host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    log = (db.parent if db else Path("results")) / "mlflow-ui.log"
    cmd = server_command(uri, host, port, str(root.resolve()), workers, allowed_hosts)
    base = _base_url(host, port)
    return _run_until_stopped(
        cmd,
        log,
        Ready(base, "/health", "mlflow server", startup_timeout),
        lambda: [f"MLflow UI: {base}", *(f"  sweep {line}" for line in sweep_links(uri, base))],
        on=f" on {uri}",
    )


DASHBOARD_EXTRA = "pip install -e .[dashboard]"
# optuna-dashboard's documented entry point, run in a child process like `mlflow server`
DASHBOARD_CODE = "import sys, optuna_dashboard as d; d.run_server(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]))"


def dashboard_command(storage: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-c", DASHBOARD_CODE, str(storage), host, str(port)]


def serve_dashboard(storage: Path, study: str, host: str, port: int, startup_timeout: float = 120.0) -> int:
    """optuna-dashboard on a sweep's journal file until interrupted (0 after Ctrl-C/SIGTERM)."""
    import importlib.util

    if importlib.util.find_spec("optuna_dashboard") is None:
        raise UserError(f"ui --optuna needs optuna-dashboard, an optional extra: {DASHBOARD_EXTRA}")
    if not storage.is_file():
        raise UserError(
            f"no Optuna study of sweep {study!r} at {str(storage)!r}; run the sweep first or pass --results"
        )
    if not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use; pass another --port")
    warning = exposure_warning(host, port, "optuna-dashboard")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    base = _base_url(host, port)
    return _run_until_stopped(
        dashboard_command(storage, host, port),
        storage.parent.parent / "optuna-dashboard.log",  # beside the studies, not among them
        Ready(base, "/api/studies", "optuna-dashboard", startup_timeout),
        lambda: [f"Optuna dashboard of sweep {study}: {base}/dashboard"],
        on=f" on {storage}",
    )


def _base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@dataclass(frozen=True)
class Ready:
    """Where a server answers once it serves: base URL, page, its name in messages, seconds to wait."""

    base: str
    page: str
    what: str
    timeout: float


def _run_until_stopped(cmd: list[str], log: Path, ready: Ready, lines: Callable[[], list[str]], on: str = "") -> int:
    """Run a server in its own process group until Ctrl-C/SIGTERM (then 0, else its exit code);
    print `lines()` once it answers."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
        try:
            print(f"starting {ready.what} (pid {proc.pid}){on}; log: {log}", flush=True)
            wait_ready(ready.base, proc, ready.timeout, ready.what, ready.page)
            for line in lines():
                print(line, flush=True)
            print("Ctrl-C stops it.", flush=True)
            proc.wait()
            return proc.returncode or 0
        except KeyboardInterrupt:
            return 0
        finally:
            stop(proc)
