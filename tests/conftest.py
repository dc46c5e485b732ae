"""Shared test setup: one local Ray per test session (starting Ray costs 7-8 s here), a guard for
commands that must stop before Ray, and one torch thread for CPU-heavy modules.

Environment first, before anything imports Ray: Ray's token authentication on, with a token of
this test session's own (RAY_AUTH_TOKEN_PATH, inherited by every process a test starts: the shared
Ray, `ray start` heads, sweeps in subprocesses), so no test reads or writes ~/.ray/auth_token; no
Tune default loggers (the sweep tracks results itself).
"""

import atexit
import os
import secrets
import shutil
import tempfile

import pytest


def _session_token() -> None:
    folder = tempfile.mkdtemp(prefix="xgd-test-ray-token-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = os.path.join(folder, "auth_token")
    with open(path, "w") as f:
        f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    os.environ.pop("RAY_AUTH_TOKEN", None)


_session_token()
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(autouse=True)
def _tracking_uri_not_leaked():
    """A test (or the code it runs) that leaves MLFLOW_TRACKING_URI changed points every later test,
    and every process they start, at its store (mlflow.set_tracking_uri exports the variable): put
    it back and fail that test, which is where the leak is."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    after = os.environ.get("MLFLOW_TRACKING_URI")
    if after != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        pytest.fail(f"the test left MLFLOW_TRACKING_URI changed: {before!r} -> {after!r}")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder for one module's shared fixtures, removed when the module ends (tmp_path's folders go
    when their test passes: pyproject's tmp_path_retention_policy), so a run's disk use stays that of
    one module, not the sum of all (a full run wrote 11 GB of checkpoints and stores)."""
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU local Ray shared by every test that asks for it; shut down after the session."""
    import ray

    started = False
    from orchestrator.run.cluster import LOCAL_ENV

    if not ray.is_initialized():
        for k, v in LOCAL_ENV.items():  # what the CLI's embedded Ray runs with
            os.environ.setdefault(k, v)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


class ReachedRay(Exception):
    """Raised instead of starting Ray: the command passed every check that comes before Ray."""


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray raises ReachedRay (returned, for `pytest.raises`): a command that must stop
    before Ray fails its test with this exception if it gets that far."""
    import orchestrator.run.cluster

    def reached(*a, **k):
        raise ReachedRay("the command reached Ray: it passed every check that comes before Ray")

    monkeypatch.setattr(orchestrator.run.cluster, "connect", reached)
    return ReachedRay


@pytest.fixture(scope="module")
def one_thread():
    """The machine's CPUs are shared; one intra-op thread avoids spin-wait thrashing. Restored after.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
