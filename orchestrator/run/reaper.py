"""Release the Ray Train placement groups of Tune trials that were stopped from outside.

Why: a Tune trial that runs a TorchTrainer creates a Train controller actor, which creates the
worker placement group (PG). When ASHA stops the trial, Tune kills the trial actor; the controller
and workers die with it (actor fate-sharing) but the PG belongs to the job, so its CPUs/GPUs stay
reserved until the sweep's driver exits. On a small machine the next trial's workers then wait for
resources forever (ray-project/ray#54305). Ray 2.60 ships a cleaner for this, but it asks the
dashboard's state API whether the controller lives, and without the dashboard it never decides.

How: every Train run gets `PlacementGroupLink` (a Train controller/worker-group callback) that
registers (controller handle, PG) with this sweep's `Reaper`, a zero-CPU actor owned by the
driver. The reaper pings each registered controller about once a second; when a ping fails with
"actor dead", it removes that controller's PG if it still exists. After the sweep the driver calls
`release_all()`, which removes whatever is still registered (nothing should be left by then).
Only PGs registered by this sweep's own trials are ever touched, so sharing a cluster is safe.
"""

from __future__ import annotations

import logging
import threading
import uuid

import ray

log = logging.getLogger(__name__)
NAMESPACE = "xgd"
PING_TIMEOUT_S = 5.0


class Reaper:
    """Ray actor (num_cpus=0, threaded): registry of (trial, controller, PG) and the watcher."""

    def __init__(self, interval_s: float = 1.0):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, object, object]] = {}  # pg id -> (trial id, controller, pg)
        self._removed: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._interval = interval_s
        threading.Thread(target=self._watch, daemon=True, name="pg-reaper").start()

    def register(self, trial_id: str, controller, pg) -> None:
        with self._lock:
            self._entries[pg.id.hex()] = (trial_id, controller, pg)

    def reap(self) -> int:
        """Remove the PGs of dead controllers; returns how many were removed."""
        with self._lock:
            items = list(self._entries.items())
        n = 0
        for key, (_, controller, _) in items:
            if not _alive(controller):
                n += self._remove(key)
        return n

    def release_all(self) -> list[tuple[str, str]]:
        """After the sweep: remove every registered PG still holding resources."""
        with self._lock:
            keys = list(self._entries)
        for key in keys:
            self._remove(key)
        return list(self._removed)

    def removed(self) -> list[tuple[str, str]]:
        """(trial id, PG id) of every PG this reaper had to remove (a leak it fixed)."""
        return list(self._removed)

    def stop(self) -> None:
        self._stop.set()

    def _remove(self, key: str) -> int:
        from ray.util.placement_group import placement_group_table, remove_placement_group

        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return 0
        trial_id, _, pg = entry
        try:
            if placement_group_table(pg).get("state", "REMOVED") == "REMOVED":
                return 0  # the Train run shut down cleanly and removed it
            remove_placement_group(pg)
        except Exception as e:  # already gone, GCS hiccup: nothing more to do for this PG
            log.warning("could not remove placement group %s of trial %s: %s", key, trial_id, e)
            return 0
        self._removed.append((trial_id, key))
        return 1

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.reap()
            except Exception:  # keep watching; one bad round must not end the watcher
                log.exception("placement group reaper round failed")


def _alive(actor) -> bool:
    """A controller is dead only when Ray says so; a slow answer means it is alive but busy."""
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=PING_TIMEOUT_S)
        return True
    except ray.exceptions.GetTimeoutError:
        return True
    except ray.exceptions.RayActorError:
        return False
    except Exception:
        return True


def start_reaper() -> tuple[str, ray.actor.ActorHandle]:
    """A fresh reaper for one sweep (a unique name, so concurrent sweeps never share one)."""
    name = f"pg-reaper-{uuid.uuid4().hex[:12]}"
    handle = (
        ray.remote(num_cpus=0, max_concurrency=8)(Reaper)
        .options(name=name, namespace=NAMESPACE, max_restarts=0)
        .remote()
    )
    ray.get(handle.__ray_ready__.remote())
    return name, handle


_EXEC = "ray.train.v2._internal.execution"
# Ray Train internals PlacementGroupLink subclasses and reads ("module:attribute", "params" = its
# parameter names | "attrs" = attributes/fields it must have); tests/test_ray_internals.py checks them.
RAY_INTERNALS = (
    (f"{_EXEC}.callback:ControllerCallback.after_controller_start", "params", ("self", "train_run_context")),
    (f"{_EXEC}.callback:WorkerGroupCallback.after_worker_group_start", "params", ("self", "worker_group")),
    (f"{_EXEC}.worker_group.worker_group:WorkerGroup.get_worker_group_state", "params", ("self",)),
    (f"{_EXEC}.worker_group.state:WorkerGroupState", "attrs", ("placement_group_handle",)),
    (f"{_EXEC}.worker_group.placement_group_handle:PlacementGroupHandle", "attrs", ("placement_group",)),
)


def make_link(trial_id: str, reaper_name: str | None):
    """The Train callback that registers a run's PG, or None when Ray's internals moved on
    (then Ray's own cleaner is all there is; the sweep still checks for leaks at the end)."""
    if reaper_name is None:
        return None
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
    except ImportError:  # pragma: no cover - a Ray without Train V2 internals
        log.warning("Ray Train internals changed: stopped trials' placement groups are not tracked")
        return None

    class PlacementGroupLink(ControllerCallback, WorkerGroupCallback):
        """Runs inside the Train controller: registers each new worker group's PG."""

        def __init__(self, trial_id: str, reaper_name: str):
            self.trial_id, self.reaper_name = trial_id, reaper_name
            self._controller = None

        def after_controller_start(self, train_run_context) -> None:
            self._controller = ray.get_runtime_context().current_actor

        def after_worker_group_start(self, worker_group) -> None:
            try:
                pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
                reaper = ray.get_actor(self.reaper_name, namespace=NAMESPACE)
                ray.get(reaper.register.remote(self.trial_id, self._controller, pg), timeout=30)
            except Exception as e:  # never fail training over bookkeeping
                log.warning("trial %s: placement group not registered with the reaper: %s", self.trial_id, e)

    return PlacementGroupLink(trial_id, reaper_name)
