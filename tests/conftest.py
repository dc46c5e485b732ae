"""Shared test setup: one local Ray per test session (starting Ray costs 7-8 s here).

Environment first, before anything imports Ray: no token auth for the local cluster, no Tune
default loggers (the sweep tracks results itself).
"""
import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU local Ray shared by every test that asks for it; shut down after the session."""
    import ray

    started = False
    from orchestrator.cluster import LOCAL_ENV

    if not ray.is_initialized():
        for k, v in LOCAL_ENV.items():  # what the CLI's embedded Ray runs with
            os.environ.setdefault(k, v)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
