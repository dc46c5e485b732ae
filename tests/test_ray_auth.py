"""Ray's token authentication stays on: the shared test Ray (as the CLI's embedded Ray) runs with a
token, and a client without the right one is refused by it. `use_token_auth` turns the mode on for
a user who has a token and chose no mode, and never overrides a mode the user set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator.run import cluster

CONNECT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('CONNECTED', flush=True)"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_client_without_the_token_is_refused_by_the_sweeps_cluster(ray_cluster, tmp_path):
    assert os.environ["RAY_AUTH_MODE"] == "token"  # what every test's Ray runs with (conftest)
    gcs = ray_cluster.get_runtime_context().gcs_address
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    clients = {
        "wrong token": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-clusters-token"},
        "no token": {**base, "HOME": str(tmp_path)},  # no ~/.ray/auth_token, no variable
        "the token": dict(os.environ),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", CONNECT, gcs], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, env in clients.items()
    }  # together: a refused connect retries for about 20 s
    out = {name: p.communicate(timeout=200)[0] for name, p in procs.items()}
    assert procs["the token"].returncode == 0 and "CONNECTED" in out["the token"], out["the token"][-2000:]
    for name in ("wrong token", "no token"):
        assert procs[name].returncode != 0 and "CONNECTED" not in out[name], out[name][-2000:]
        assert "Authentication token is missing or incorrect" in out[name], out[name][-2000:]


def test_a_token_turns_the_mode_on_and_a_chosen_mode_is_kept(tmp_path, monkeypatch):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cluster.use_token_auth()
    assert "RAY_AUTH_MODE" not in os.environ  # no token: a new local Ray makes one itself
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t")
    cluster.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a private machine's choice
    cluster.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / ".ray" / "auth_token"))
    cluster.use_token_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_the_project_never_turns_token_auth_off():
    """The opt-out is the user's (docs/guide/clusters.md): no module, script or deploy file sets it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    opt_out = re.compile(r"""RAY_AUTH_MODE["']?\s*[:=,]\s*["']?disabled""")
    files = [p for d in ("orchestrator", "trainables", "scripts", "deploy") for p in (root / d).rglob("*.*")]
    said = [str(p) for p in files if p.suffix != ".pyc" and opt_out.search(p.read_text(errors="ignore"))]
    assert not said, said
    assert opt_out.search('os.environ.setdefault("RAY_AUTH_MODE", "disabled")')  # what it would catch
    assert opt_out.search("export RAY_AUTH_MODE=disabled")


SECOND_LOCAL_SWEEP = """
import ray, ray.tune  # Ray's config is read here, before the command connects (as in the CLI)
from orchestrator.run import cluster
cluster.connect(None, verbose=False)
print("RESULT", ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_ray_starts_with_the_token_a_first_one_left(tmp_path):
    """The first local Ray writes ~/.ray/auth_token; the next command, with no mode set, finds it and
    must start its own local Ray with it (it failed to, before use_token_auth re-read Ray's config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["HOME"] = str(tmp_path)
    for attempt in ("first", "second"):
        r = subprocess.run(
            [sys.executable, "-c", SECOND_LOCAL_SWEEP], env=env, capture_output=True, text=True, timeout=240
        )
        assert r.returncode == 0 and "RESULT 42" in r.stdout, (attempt, (r.stdout + r.stderr)[-3000:])
        assert (tmp_path / ".ray" / "auth_token").is_file()
