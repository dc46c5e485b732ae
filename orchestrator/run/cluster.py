"""Where the sweep runs: an existing Ray cluster (`--address`, RAY_ADDRESS) or an embedded local Ray."""

from __future__ import annotations

import logging
import os

# Ray Train's controller polls its workers every 2 s by default: up to 2 s lost at a Train run's
# start, at its end and on each report. Polling at 0.5 s cut a single-report run's fit() here from
# 13.6 s to 9 s; the polls are cheap RPCs. Set for the embedded Ray (its processes inherit it).
LOCAL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


# Ray's token authentication [RaySec]: a new local Ray (ray.init without an address) turns it on and
# writes a token to ~/.ray/auth_token; joining a cluster uses RAY_AUTH_TOKEN, else the file named by
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, but only with RAY_AUTH_MODE=token when the address is
# explicit (Ray 2.60's ray.init). `use_token_auth` sets that mode whenever a token is there, so every
# command reaches a token cluster with the user's token and no extra variable; RAY_AUTH_MODE set by
# the user (e.g. disabled, on a private machine) is never changed.
AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"


def token_available() -> bool:
    if os.environ.get(TOKEN):
        return True
    path = os.environ.get(TOKEN_PATH) or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


# Ray's own switch: it sets RAY_AUTH_MODE=token and re-reads Ray's config, which this process read
# when it first imported Ray (setting the variable alone left the driver's GCS client without its
# token: a second local sweep failed to start, "Authentication token is missing or incorrect")
RAY_INTERNALS = (("ray._private.authentication.authentication_token_setup:_enable_token_auth", "params", ()),)


def use_token_auth() -> None:
    """Token mode for this process and its children when the user has a Ray token and chose no
    mode; without a token it stays unset (a new local Ray then makes one)."""
    if os.environ.get(AUTH_MODE) is None and token_available():
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()


def is_client(address: str | None) -> bool:
    return bool(address) and address.startswith("ray://")


def connect(address: str | None, verbose: bool) -> bool:
    """Connect or start Ray; True when this call started it (and so must shut it down).

    Without --verbose the workers' logs stay out of the terminal (the live view owns it);
    they are still in the Ray session's log folder.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray Client: the driver runs on the head node and its log is what the user sees
    kw = dict(log_to_driver=verbose or is_client(address), logging_level=logging.INFO if verbose else logging.WARNING)
    # no address: always a fresh embedded Ray, never whatever local cluster happens to be running
    if not address:
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
    use_token_auth()
    ray.init(address=address or "local", **kw)
    return True


def describe(resources: dict[str, float]) -> str:
    cpu, gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    return f"{cpu:g} CPU" + (f" / {gpu:g} GPU" if gpu else " / no GPU")


def on_head():
    """Scheduling strategy that places a task on the head node (where `ray start --head` ran)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next((n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]), None)
    return NodeAffinitySchedulingStrategy(head, soft=True) if head else "DEFAULT"
