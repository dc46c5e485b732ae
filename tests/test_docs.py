"""The docs: README.md is a front page (at most 150 lines) that links every page of the docs site,
every page under docs/ is in mkdocs.yml's nav, and what the README and the pages show is real:
every `python -m orchestrator ... --dry-run` example in their fenced code blocks runs with exit 0,
and every file of this repo they name (`search_spaces/*.yaml`, `tests/*.py`, ...) exists.
Links and anchors between the pages are checked by `make docs` (`mkdocs build --strict`), which .ci/run
runs beside the README's test command."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 150
# a file of this repo named in the text, e.g. `search_spaces/quickstart.yaml`, `tests/test_export.py`
REPO_FILE = re.compile(
    r"\b(?:orchestrator|trainables|tests|scripts|deploy|search_spaces)/[\w./-]+\.(?:py|yaml|sbatch)\b"
)


def pages() -> list[str]:
    """Every page of the site, relative to docs/."""
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def texts() -> dict[str, str]:
    return {"README.md": README.read_text(), **{f"docs/{p}": (DOCS / p).read_text() for p in pages()}}


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node] if node.endswith(".md") else []
    if isinstance(node, dict):
        return [p for v in node.values() for p in nav_pages(v)]
    if isinstance(node, list):
        return [p for v in node for p in nav_pages(v)]
    return []


def code_lines(text: str):
    """(line number, line) of every line inside a fenced code block, continuation lines joined."""
    fence, pending, start = None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = marker if fence is None else (None if marker == fence else fence)
            continue
        if fence is None:
            continue
        start = start or n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending, start = "", 0


def orchestrator_args(line: str) -> list[str] | None:
    """The arguments after `python -m orchestrator` (any python: `.venv/bin/python`, ...), comments cut."""
    try:
        tokens = shlex.split(line.removeprefix("$ "), comments=True)
    except ValueError:  # not shell (an unbalanced quote in a table or a prose line)
        return None
    for i in range(len(tokens) - 2):
        if tokens[i].endswith("python") and tokens[i + 1 : i + 3] == ["-m", "orchestrator"]:
            return tokens[i + 3 :]
    return None


def dry_run_examples() -> list[tuple[str, list[str]]]:
    """(where it is shown, arguments) of each distinct example; one shown in several places runs once."""
    found: dict[tuple[str, ...], list[str]] = {}
    for name, text in texts().items():
        for n, line in code_lines(text):
            args = orchestrator_args(line)
            if args and "--dry-run" in args:
                found.setdefault(tuple(args), []).append(f"{name}:{n}")
    return [(", ".join(where), list(args)) for args, where in found.items()]


EXAMPLES = dry_run_examples()


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    nav = nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), f"a page is twice in the nav: {nav}"
    assert set(nav) == set(pages()), {
        "not in the nav": set(pages()) - set(nav),
        "no such page": set(nav) - set(pages()),
    }


def test_the_readme_is_a_front_page_that_links_every_page():
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move the detail to a page under docs/"
    linked = {m.split("#")[0] for m in re.findall(r"\]\((docs/[^)\s]+)\)", text)}
    missing = sorted(f"docs/{p}" for p in pages() if f"docs/{p}" not in linked)
    assert not missing, f"README.md does not link {missing}"
    assert not [p for p in linked if not (ROOT / p).is_file()], "README.md links a page that does not exist"


def test_ci_builds_the_docs_and_runs_the_readmes_test_command():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make docs" in ci and "make test" in ci
    assert "make test " in README.read_text()  # the set-up block: `make test   # ... the whole test suite`


def test_every_repo_file_the_docs_name_exists():
    named = {(name, path) for name, text in texts().items() for path in REPO_FILE.findall(text)}
    assert any(path.startswith("search_spaces/") for _, path in named)  # the pattern finds the specs
    missing = sorted(f"{name}: {path}" for name, path in named if not (ROOT / path).exists())
    assert not missing, f"the docs name files that do not exist: {missing}"


def test_the_docs_have_dry_run_examples_of_the_spec_commands():
    commands = {args[0] for _, args in EXAMPLES}
    assert {"sweep", "ablate", "confirm", "compare"} <= commands, EXAMPLES


def store_with_sweep(root: Path, name: str) -> str:
    """An MLflow store holding a finished sweep called `name` (as tests/test_confirm.py lays one out),
    for the `confirm NAME --dry-run` examples, which read their source sweep from the store."""
    from mlflow import MlflowClient

    from orchestrator.spec.sweep import parse_sweep_spec
    from test_confirm import _sweep, source_raw

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=(root / "artifacts").as_uri())
    _sweep(client, exp, parse_sweep_spec(source_raw(root, name)), {})
    return uri


@pytest.mark.slow  # each a fresh interpreter importing torch, Ray, MLflow: 6-8 s here at low load, up to 39 s at load 7
@pytest.mark.parametrize("where, args", EXAMPLES, ids=[w.split(",")[0] for w, _ in EXAMPLES])
def test_dry_run_example_runs(tmp_path, where, args):
    """The command exactly as the docs show it, from the repo root, on an MLflow store of its own
    (the environment's MLFLOW_TRACKING_URI, as a user's would be; the repo's results/ is not written)."""
    if args[0] == "confirm":
        uri = store_with_sweep(tmp_path, args[1])
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{where}: python -m orchestrator {shlex.join(args)}\n{done.stdout}\n{done.stderr}"
    assert "dry run" in done.stdout, done.stdout
