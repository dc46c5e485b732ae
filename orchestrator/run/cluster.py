"""Where the sweep runs: an existing Ray cluster (`--address`, RAY_ADDRESS) or an embedded local Ray."""

from __future__ import annotations

import logging
import os

# Ray Train's controller polls its workers every 2 s by default: up to 2 s lost at a Train run's
# start, at its end and on each report. Polling at 0.5 s cut a single-report run's fit() here from
# 13.6 s to 9 s; the polls are cheap RPCs. Set for the embedded Ray (its processes inherit it).
LOCAL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


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
