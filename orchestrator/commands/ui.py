"""`ui`: the MLflow UI on the project's store (sqlite:///<abs>/results/mlflow.db unless told
otherwise), bound to 127.0.0.1. It prints the URL and a link per sweep, and runs until Ctrl-C.

The UI has no login: anyone who can reach the port can read and delete runs. Bind to another
interface (--host 0.0.0.0) only on a network you trust; MLflow then also checks the Host header
against --allowed-hosts (default: localhost and private addresses).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

from orchestrator.cli import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI on the project's store (127.0.0.1 by default)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None, help="backend store (default: $MLFLOW_TRACKING_URI or "
                                                        "sqlite:///<abs>/results/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--artifacts-root", default=None, help="artifact root for experiments created from the UI "
                                                          "(default: mlartifacts/ beside the sqlite store)")
    p.add_argument("--allowed-hosts", default=None, help="passed to mlflow server (Host headers it accepts)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.set_defaults(run=run)


def server_command(uri: str, host: str, port: int, artifacts_root: str, workers: int = 1,
                   allowed_hosts: Optional[str] = None) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", artifacts_root, "--host", host, "--port", str(port), "--workers", str(workers)]
    return cmd + (["--allowed-hosts", allowed_hosts] if allowed_hosts else [])


def exposure_warning(host: str, port: int) -> Optional[str]:
    if host in LOOPBACK:
        return None
    return (f"WARNING: the MLflow UI has no login and will be reachable by anyone who can reach {host}:{port}; "
            "they can read and delete runs. Use --host 127.0.0.1 (the default) with an SSH tunnel unless "
            "this network is trusted.")


def server_env() -> dict[str, str]:
    """MLflow 3 starts seven huey job consumers (GenAI scoring, trace archival; ~270 MB each) that
    browsing training runs never uses and that delay shutdown: off unless the user turned them on."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}


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
        from orchestrator import aggregate as agg

        client = agg.open_store(uri)
        out = []
        for run in agg.search_all(client, "tags.`xgd.kind` = 'sweep'"):
            name = run.data.tags.get("xgd.sweep", run.info.run_name)
            out.append(f"{name}: {base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        return out
    except Exception:  # links are a convenience; the server is what matters
        return []


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    from orchestrator import aggregate as agg

    uri = args.tracking_uri or agg.default_tracking_uri()
    db = agg.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {str(db)!r}; run a sweep first or pass --tracking-uri")
    root = Path(args.artifacts_root) if args.artifacts_root else (db.parent if db else Path("results")) / "mlartifacts"
    if not port_free(args.host, args.port):
        raise UserError(f"port {args.port} on {args.host} is in use; pass another --port")
    warning = exposure_warning(args.host, args.port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    log = (db.parent if db else Path("results")) / "mlflow-ui.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = server_command(uri, args.host, args.port, str(root.resolve()), args.workers, args.allowed_hosts)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://[{shown}]:{args.port}" if ":" in shown else f"http://{shown}:{args.port}"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=server_env())
        try:
            print(f"starting mlflow server (pid {proc.pid}) on {uri}; log: {log}", flush=True)
            wait_ready(base, proc, args.startup_timeout)
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
