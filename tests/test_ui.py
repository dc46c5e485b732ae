"""`ui`: the real MLflow UI served by `python -m orchestrator ui` on a store holding a sweep, read
by headless Chromium (Debian's `chromium`: `apt-get install -y chromium`) with --dump-dom; the
pages must show the sweep's run names and a metric value. Plus the quick checks around it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.cli import main
from test_report import build_store, final_miou

ROOT = Path(__file__).resolve().parents[1]
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=30000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium")
    return exe


def page_text(url: str, profile: Path, expect: str, tries: int = 3) -> str:
    """The rendered page as plain text (scripts and tags stripped); retried while `expect` is absent
    (the single-page app fills the DOM from the REST API after the first paint)."""
    text = ""
    for i in range(tries):
        out = subprocess.run(
            [_chromium(), *CHROME_FLAGS, f"--user-data-dir={profile}-{i}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
        html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", out.stdout, flags=re.S)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
        if expect in text:
            break
    return text


def start_ui(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`python -m orchestrator ui ARGS` in its own session (stopped by SIGTERM), output as text lines."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ui", *args],
        cwd=ROOT,
        env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """stdout lines up to `marker` (a reader thread: select() misses lines already buffered)."""
    lines: list[str] = []

    def pump() -> None:
        for ln in proc.stdout:
            lines.append(ln.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(marker in ln for ln in lines):
            return list(lines)
        time.sleep(0.2)
    raise AssertionError(f"`ui` did not print {marker!r} within {timeout} s; output: {lines}")


def _down(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=2)
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_ui_serves_the_sweeps_runs_to_a_real_browser(tmp_path):
    _chromium()
    store = build_store(tmp_path / "store", checkpoints=False)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = start_ui(["--tracking-uri", store["uri"], "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        lines = _read_until(proc, "Ctrl-C", timeout=240)
        assert f"MLflow UI: {base}" in lines and not any("WARNING" in ln for ln in lines)
        link = next(ln.split("sweep demo: ", 1)[1] for ln in lines if "sweep demo: " in ln)
        assert link.endswith(f"/runs/{store['parent']}")

        # the sweep's parent run page lists every trial by name
        text = page_text(link, tmp_path / "chrome-parent", "demo_pi_a0.5_s0")
        names = [r.info.run_name for r in (store["client"].get_run(i) for i in store["trials"])]
        missing = [n for n in names + ["demo_failed"] if n not in text]
        assert not missing, f"run names missing from the page: {missing}; page: {text[:1500]}"

        # a trial's page shows its metrics
        best = next(i for i, n in zip(store["trials"], names) if n == "demo_xgd_a1.0_s1")
        text = page_text(
            f"{base}/#/experiments/{store['experiment_id']}/runs/{best}", tmp_path / "chrome-run", "val_miou"
        )
        m = re.search(r"val_miou (\d\.\d+)", text)
        assert m, f"no val_miou value on the run page: {text[:1500]}"
        assert float(m.group(1)) == pytest.approx(final_miou("xgd", 1.0, 1))
    finally:
        proc.send_signal(signal.SIGTERM)  # `ui` stops its server on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert _down(base), "the MLflow server outlived `ui`"


def test_ui_defaults_to_loopback_and_warns_when_exposed():
    from orchestrator.cli import build_parser
    from orchestrator.tracking.server import exposure_warning, server_command

    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    cmd = server_command("sqlite:////x/mlflow.db", args.host, args.port, "/x/mlartifacts")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--backend-store-uri") + 1].endswith(
        "mlflow.db"
    )
    assert exposure_warning("127.0.0.1", 5000) is None and exposure_warning("localhost", 5000) is None
    assert "WARNING" in exposure_warning("0.0.0.0", 5000) and "0.0.0.0:5000" in exposure_warning("0.0.0.0", 5000)


def test_ui_refuses_missing_store_and_busy_port(tmp_path, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    assert main(["ui", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not missing.exists()
    db = tmp_path / "mlflow.db"
    db.touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"port {port}" in err and "in use" in err
