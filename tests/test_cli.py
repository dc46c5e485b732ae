"""The command line starts fast and says its version.

`--help` of the CLI and of every command (fastest of 3 runs each) is timed against a bare
interpreter start (`python -c pass`, run before each of them) and must stay within a small
multiple of it: a ratio, so the test means the same on a fast and a slow machine. Building
the parser must not import the heavy modules (each command imports them in `run`)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time

import pytest

from orchestrator.cli import COMMANDS, DISTRIBUTION, main

ROUNDS = 3
MAX_RATIO = 4.0  # --help may cost at most this many bare interpreter starts
HEAVY = ("torch", "ray", "mlflow", "optuna", "pyarrow", "matplotlib", "pydantic", "trainables")


def seconds(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def test_help_costs_a_few_interpreter_starts():
    cases = {"--help": ["--help"], **{f"{c} --help": [c, "--help"] for c in COMMANDS}}
    bare, runs = [], {name: [] for name in cases}
    for _ in range(ROUNDS):  # interleaved, so a burst of load on this machine hits both sides
        for name, args in cases.items():
            bare.append(seconds([sys.executable, "-c", "pass"]))
            runs[name].append(seconds([sys.executable, "-m", "orchestrator", *args]))
    floor = min(bare)
    ratios = {name: min(ts) / floor for name, ts in runs.items()}
    print(
        f"python -c pass: {floor * 1000:.0f} ms (fastest of {len(bare)}); python -m orchestrator ... as a "
        f"multiple of it (fastest of {ROUNDS}):"
    )
    for name, r in ratios.items():
        print(f"  {name:18s} {r:.2f}x ({r * floor * 1000:.0f} ms)")
    slow = {name: round(r, 2) for name, r in ratios.items() if r > MAX_RATIO}
    assert not slow, f"--help slower than {MAX_RATIO}x python start-up: {slow}"


def test_building_the_parser_imports_no_heavy_module():
    code = (
        "import sys; from orchestrator.cli import build_parser; build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "", f"building the CLI parser imported {out}"


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"{DISTRIBUTION} {importlib.metadata.version(DISTRIBUTION)}"


def test_version_without_an_installed_distribution_says_unknown(monkeypatch, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"{DISTRIBUTION} unknown"


@pytest.mark.parametrize("verbose", [False, True])
def test_tune_slow_callback_warnings_are_raised_to_5s_unless_verbose(monkeypatch, capsys, verbose):
    """Without --verbose the live view owns the terminal: Tune's 0.5 s slow-callback warning threshold
    (read from the environment when ray.tune is imported) is raised; --verbose keeps Ray's default."""
    import os

    monkeypatch.setenv("TUNE_WARN_THRESHOLD_S", "0")  # recorded, so the value main sets is undone afterwards
    monkeypatch.delenv("TUNE_WARN_THRESHOLD_S")
    args = ["sweep", "search_spaces/quickstart.yaml", "--dry-run"] + (["--verbose"] if verbose else [])
    assert main(args) == 0
    assert os.environ.get("TUNE_WARN_THRESHOLD_S") == (None if verbose else "5")
