"""`ui --optuna SWEEP`: optuna-dashboard on a sweep's persisted Optuna study (the journal file
orchestrator.run.study writes), read by headless Chromium like the MLflow UI in test_ui.py; and the
one-line errors around it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import optuna
import pytest

from orchestrator.cli import main
from orchestrator.run import study
from test_ui import _chromium, _free_port, _read_until, page_text, start_ui

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "dash-sweep-7q"


def write_study(results: Path, name: str, n: int = 3) -> None:
    """A study as the sweep's searcher leaves it: same journal file, same study name, told trials."""
    storage = study.open_storage(study.study_path(str(results), name))
    s = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    for i in range(n):
        t = s.ask()
        alpha = t.suggest_float("distill.alpha", 0.1, 2.0)
        s.tell(t, [alpha / 2, 1000.0 + i])


def _serving(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/studies", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ui_optuna_serves_the_sweeps_study_to_a_real_browser(tmp_path):
    _chromium()
    results = tmp_path / "results"
    write_study(results, SWEEP)
    port = _free_port()
    proc = start_ui(["--optuna", SWEEP, "--results", str(results), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        lines = _read_until(proc, "Ctrl-C", timeout=240)
        assert f"Optuna dashboard of sweep {SWEEP}: {base}/dashboard" in lines, lines
        assert not any("WARNING" in ln for ln in lines), lines
        text = page_text(f"{base}/dashboard", tmp_path / "chrome", SWEEP)
        assert SWEEP in text, f"the study is not listed on the dashboard: {text[:1500]}"
    finally:
        proc.send_signal(signal.SIGTERM)  # `ui` stops its server on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert not _serving(base), "optuna-dashboard outlived `ui`"
    assert study.only_study(str(results)) == SWEEP  # its log is kept beside the studies, not among them


def test_ui_optuna_errors_are_one_line(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    assert main(["ui", "--optuna", "--results", str(results)]) == 2
    assert "ui --optuna: name the sweep (no study under" in capsys.readouterr().err
    write_study(results, "a", 1)
    write_study(results, "b", 1)
    assert main(["ui", "--optuna", "--results", str(results)]) == 2
    assert "ui --optuna: name the sweep (studies: a, b)" in capsys.readouterr().err
    assert main(["ui", "--optuna", "nope", "--results", str(results)]) == 2
    assert "no Optuna study of sweep 'nope'" in capsys.readouterr().err

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna_dashboard" else real(name, *a)
    )
    assert main(["ui", "--optuna", "a", "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("optuna-dashboard, an optional extra: pip install -e .[dashboard]"), err
