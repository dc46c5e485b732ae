"""The MLflow UI on a store: `mlflow server` in its own process group, bound to 127.0.0.1 unless
told otherwise, with a link per sweep; it runs until Ctrl-C or SIGTERM and takes its workers
down with it. The UI has no login (see the `ui` command's help)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def exposure_warning(host: str, port: int) -> str | None:
    if host in LOOPBACK:
        return None
    return (
        f"WARNING: the MLflow UI has no login and will be reachable by anyone who can reach {host}:{port}; "
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


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer at {url}/health within {timeout:.0f} s")


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
    root = Path(artifacts_root) if artifacts_root else (db.parent if db else Path("results")) / "mlartifacts"
    if not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use; pass another --port")
    warning = exposure_warning(host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    log = (db.parent if db else Path("results")) / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(uri, host, port, str(root.resolve()), workers, allowed_hosts)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
        try:
            print(f"starting mlflow server (pid {proc.pid}) on {uri}; log: {log}", flush=True)
            wait_ready(base, proc, startup_timeout)
            print(f"MLflow UI: {base}", flush=True)
            for line in sweep_links(uri, base):
                print(f"  sweep {line}", flush=True)
            print("Ctrl-C stops it.", flush=True)
            proc.wait()
            return proc.returncode or 0
        except KeyboardInterrupt:
            return 0
        finally:
            stop(proc)
