"""What a store's sweeps are doing, for `ls`, `status` and `stop`: read from MLflow (any shell on
any node that sees the store, a `mlflow server` included) and, where the sweep's results folder
is visible, from its driver lock (orchestrator.run.lock) and its waiting MLflow writes.

A parent run that is RUNNING while no process holds its driver lock lost its driver (killed, node
lost): shown as `driver gone`, resumable with `--resume` (or `--resume auto`).
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.tracking import tags as T

STATES = {"RUNNING": "running", "FINISHED": "finished", "KILLED": "stopped", "FAILED": "failed"}
TRIAL_STATES = ("running", "completed", "stopped", "interrupted", "failed", "orphaned")


@dataclass
class SweepState:
    name: str
    kind: str  # sweep | ablation | confirmation | compare stage
    state: str  # running | finished | stopped | failed | driver gone
    total: int  # trials the sweep asks for
    trials: dict[str, int] = field(default_factory=dict)  # trial state -> count
    best: float | None = None
    best_trial: str | None = None
    metric: str = "val_miou"
    started: float | None = None  # epoch seconds
    driver: str | None = None
    results: str | None = None
    pending_writes: int | None = None  # None: the results folder is not visible here

    @property
    def done(self) -> int:
        return sum(n for s, n in self.trials.items() if s in ("completed", "stopped", "failed", "orphaned"))

    def eta_s(self, now: float | None = None) -> float | None:
        """Rough: the time per ended trial so far times the trials left (None until one ended)."""
        if self.state != "running" or not self.done or self.started is None:
            return None
        elapsed = (now or time.time()) - self.started
        return elapsed / self.done * max(self.total - self.done, 0)


def kind_of(tags: dict[str, str]) -> str:
    if T.CONFIRM_SOURCE in tags:
        return "confirmation"
    if T.COMPARE in tags:
        return "compare stage"
    if T.ABLATION in tags:
        return "ablation"
    return "sweep"


def objective(params: dict[str, str]) -> tuple[str, str]:
    """(mode, metric) of the parent's `objective` param ("max val_miou, min latency_ms": the first)."""
    first = (params.get("objective") or "max val_miou").split(",")[0].split()
    return (first[0], first[1]) if len(first) == 2 else ("max", "val_miou")


def driver_alive(results: str | None, name: str) -> bool | None:
    """Whether a process holds the sweep's driver lock now; None when its folder is not visible here."""
    from filelock import FileLock, Timeout

    from orchestrator.run.lock import LOCK_NAME

    folder = Path(results or "", "locks", name)
    if not results or not folder.is_dir():
        return None
    lock = FileLock(folder / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def default_results(client) -> str | None:
    """A SQLite store's folder: where a sweep that predates the RESULTS tag kept its results."""
    from orchestrator.tracking.store import sqlite_path

    db = sqlite_path(getattr(client, "tracking_uri", "") or "")
    return str(db.parent) if db is not None else None


def sweep_state(parent, trials: list, results: str | None = None) -> SweepState:
    """One sweep's state from its parent run and trial runs (MLflow entities); `results`: its
    results folder when the parent run does not name it."""
    from orchestrator.tracking.pending import pending_path

    tags, params = parent.data.tags, parent.data.params
    mode, metric = objective(params)
    key = "best_val_miou" if metric == "val_miou" else metric  # a finished trial's val figure (reader)
    counts: dict[str, int] = {}
    best, best_trial = None, None
    for r in trials:
        state = r.data.tags.get(T.STATUS, "running")
        counts[state] = counts.get(state, 0) + 1
        v = r.data.metrics.get(key, r.data.metrics.get(metric))
        if v is not None and (best is None or (v > best if mode == "max" else v < best)):
            best, best_trial = v, r.data.tags.get(T.TRIAL_ID)
    name, results = tags.get(T.SWEEP, "?"), tags.get(T.RESULTS, results)
    state = STATES.get(parent.info.status, parent.info.status.lower())
    if state == "running" and driver_alive(results, name) is False:
        state = "driver gone"
    pending = None
    if results and Path(results).is_dir():
        waiting = pending_path(results, name)
        pending = len(waiting.read_text().splitlines()) if waiting.exists() else 0
    return SweepState(
        name=name,
        kind=kind_of(tags),
        state=state,
        total=int(float(params.get("num_samples", len(trials)) or len(trials))),
        trials=counts,
        best=best,
        best_trial=best_trial,
        metric=metric,
        started=parent.info.start_time / 1000 if parent.info.start_time else None,
        driver=tags.get(T.DRIVER),
        results=results,
        pending_writes=pending,
    )


def all_sweeps(client) -> list[SweepState]:
    """Every sweep in the store (its newest parent run), newest first."""
    from orchestrator.tracking import reader

    seen, out = set(), []
    for parent in reader.search_all(client, T.equals(T.KIND, T.SWEEP_RUN)):
        name = parent.data.tags.get(T.SWEEP)
        if not name or name in seen:
            continue
        seen.add(name)
        out.append(sweep_state(parent, _trial_runs(client, parent), default_results(client)))
    return out


def _find(client, name: str):
    """(newest parent run, its trial runs) of sweep `name`; a sweep with no trial yet (its teacher
    still training) is found too. An unknown name is a one-line error listing the known ones."""
    from orchestrator.tracking import reader

    parents = reader.search_all(client, T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: name}))
    if not parents:
        known = reader.list_sweeps(client)
        raise UserError(
            f"unknown sweep {name!r}; "
            + (f"known sweeps: {', '.join(known[:20])}" if known else "the store has no sweeps")
        )
    return parents[0], _trial_runs(client, parents[0])


def _trial_runs(client, parent) -> list:
    from orchestrator.tracking import reader

    runs = reader.search_all(client, T.equals(T.PARENT, parent.info.run_id), [parent.info.experiment_id])
    return [r for r in runs if r.data.tags.get(T.KIND, T.TRIAL_RUN) == T.TRIAL_RUN]


def one_sweep(client, name: str) -> SweepState:
    return sweep_state(*_find(client, name), default_results(client))


def request_stop(client, name: str) -> tuple[str, SweepState]:
    """Tag the sweep's parent run STOP_REQUESTED for its driver (which polls it); (what was written,
    the state before). A sweep that is not running is a one-line error."""
    parent, trials = _find(client, name)
    state = sweep_state(parent, trials, default_results(client))
    if state.state != "running":
        raise UserError(f"sweep {name!r} is not running (it is {state.state}); nothing to stop")
    asked = f"{getpass.getuser()}@{socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"
    client.set_tag(parent.info.run_id, T.STOP_REQUESTED, asked)
    return asked, state


def as_json(s: SweepState) -> str:
    return json.dumps({**s.__dict__, "done": s.done, "eta_s": s.eta_s()}, default=str)
