"""The driver's side of a running sweep: one Tune callback that feeds the live view and MLflow.

Tune pickles its callbacks into the experiment folder and brings them back on resume, so the
callback holds only a key; the live objects (MLflow client, console) sit in `SESSIONS` in the
driver process and are looked up by that key. The callback is also where the driver hears
`stop SWEEP` (a tag on its parent run, read every STOP_POLL_S) and where the sweep's budgets are
applied (orchestrator.run.budgets): it then interrupts itself as Ctrl-C would, so Tune saves the
experiment and the sweep stays resumable.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ray import tune
from rich.markup import escape

from orchestrator.run.budgets import Budgets
from orchestrator.run.failures import fatal_cause, summarize_error
from orchestrator.run.live import SweepView
from orchestrator.run.trial import EPOCHS_DONE, TrialPlan, trial_config
from orchestrator.spec import space as S
from orchestrator.spec.paths import as_uri
from orchestrator.spec.sweep import SweepSpec
from orchestrator.tracking import tags as T
from orchestrator.tracking.pending import pending_path

SESSIONS: dict[str, Session] = {}
STOP_POLL_S = 5.0  # how often the driver reads its parent run for a stop request (one MLflow read)
# Tune internals DriverCallback relies on: it sets trial.max_failures = 0, which Trial.should_recover
# reads at the next failure, and reads trial.error_file; tests/test_ray_internals.py checks them.
RAY_INTERNALS = (
    ("ray.tune.experiment.trial:Trial.should_recover", "reads", ("max_failures",)),
    ("ray.tune.experiment.trial:Trial", "attrs", ("error_file",)),
)


class DriverCallback(tune.Callback):
    """Holds only a key (see the module doc)."""

    def __init__(self, key: str):
        self.key = key

    def _s(self) -> Session | None:
        return SESSIONS.get(self.key)

    def on_step_begin(self, iteration, trials, **info):
        if self._s():
            self._s().adopt(trials)
            self._s().flush()

    def on_experiment_end(self, trials, **info):
        if self._s():  # a resumed sweep with nothing left to run has no steps at all
            self._s().adopt(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._s():
            self._s().started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._s():
            self._s().result(trial, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if self._s():  # a one-process trial's checkpoint (a Train run names its own in the result)
            self._s().checkpointed(trial, checkpoint.path)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failure no retry can fix (NaN loss, CUDA OOM): the retry Tune has just scheduled fails
        at once on the trial's fatal marker (orchestrator.run.trial), and must be the last one, even
        with max_failures -1 (retry forever)."""
        try:
            fatal = fatal_cause(Path(trial.error_file).read_text())
        except (OSError, TypeError):
            fatal = None
        if fatal:
            trial.max_failures = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._s():
            self._s().ended(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._s():
            self._s().ended(trial, error_line(trial))


def pending_file(spec: SweepSpec) -> Path:
    """Where the sweep's MLflow writes wait while the store cannot be reached (see tracking.pending)."""
    return pending_path(spec.results, spec.name)


def error_line(trial) -> str:
    try:
        return summarize_error(Path(trial.error_file).read_text())
    except (OSError, TypeError):
        return "failed (no error file)"


class Session:
    """The driver-side state of one sweep run: view + MLflow, fed by DriverCallback."""

    def __init__(self, spec: SweepSpec, plan: TrialPlan, view: SweepView, tracker, resumed: bool = False, budgets=None):
        self.spec, self.plan, self.view, self.tracker = spec, plan, view, tracker
        self.seen: set[str] = set()
        self.orphans_checked = not resumed
        self.budgets: Budgets = budgets or Budgets(spec.search)
        self.stop_reason: str | None = None  # why this driver stopped the sweep early, if it did
        self.stop_polled = time.monotonic()
        if tracker is not None:  # writes a dead store refused wait on disk; an earlier driver's are delivered
            tracker.keep_pending(pending_file(spec), say=lambda msg: view.note(f"[yellow]{escape(msg)}[/]"))

    def flush(self) -> None:
        """Retry the MLflow writes waiting for the store (at most one short attempt per retry
        interval), stop when the time budget is spent, and look for a stop asked by `stop SWEEP`
        (every STOP_POLL_S)."""
        self._safe("retry", self.tracker and self.tracker.outbox.flush)
        self.halt(self.budgets.clock())
        now = time.monotonic()
        if self.tracker is None or self.stop_reason or now - self.stop_polled < STOP_POLL_S:
            return
        self.stop_polled = now
        try:
            asked = self.tracker.stop_requested()
        except Exception:  # the store is down: the outbox says so; look again later
            return
        if asked:  # tag STOP_REQUESTED: who asked, when
            self.halt(f"stop requested ({asked})")

    def halt(self, reason: str | None) -> None:
        """Stop the sweep for `reason` (once; None: nothing to stop for)."""
        if not reason or self.stop_reason:
            return
        self.stop_reason = reason
        self.view.note(
            f"[yellow]stopping: {escape(reason)}[/]; the trials keep their checkpoints; continue with --resume"
        )
        # what Ctrl-C does: Tune ends its loop, saves the experiment and returns (ray.tune.tune)
        os.kill(os.getpid(), signal.SIGINT)

    def _safe(self, what: str, fn, *args) -> None:
        if self.tracker is None:
            return
        try:
            return fn(*args)
        except Exception as e:  # tracking must not kill a running sweep; say it once per kind
            msg = f"MLflow {what} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if msg not in self.tracker.errors:
                self.tracker.errors.append(msg)
                self.view.note(f"[yellow]{msg}[/]")

    def _epochs(self, trial) -> int:
        return int(trial_config(self.plan, trial.config, trial.trial_id)["optim"]["epochs"])

    def adopt(self, trials) -> None:
        """Trials restored from an earlier driver: show them, and close their MLflow runs (and,
        once, the runs of trials the restored state never heard of: Tracker.close_orphans)."""
        if not self.orphans_checked and trials:
            self.orphans_checked = True
            for tid in (
                self._safe("orphan check", self.tracker and self.tracker.close_orphans, {t.trial_id for t in trials})
                or []
            ):
                self.view.note(f"[yellow]run of trial {tid} closed: it started after the last Tune snapshot[/]")
        for t in trials:
            if t.trial_id in self.seen or t.status not in ("TERMINATED", "ERROR"):
                continue
            self.seen.add(t.trial_id)
            self.view.trial_started(t.trial_id, t.config)
            if t.last_result:
                self.view.trial_result(t.trial_id, t.last_result)
            ckpt = getattr(t, "checkpoint", None)  # a one-process trial's last (a Train run's is in its result)
            if ckpt is not None and not self.view.row(t.trial_id).checkpoint:
                self.view.row(t.trial_id).checkpoint = as_uri(ckpt.path, self.spec.storage_path)
            status = "failed" if t.status == "ERROR" else self._status(t)
            self.view.trial_ended(t.trial_id, status, error_line(t) if status == "failed" else None)
            self._safe("reconcile", self._reconcile, t, status)

    def _reconcile(self, trial, status: str) -> None:
        if self.tracker.known_run(trial.trial_id) not in (None, "RUNNING"):
            return  # closed by the earlier driver
        self.tracker.trial_started(trial.trial_id, self._params(trial), {})
        if trial.last_result:
            self.tracker.trial_result(trial.trial_id, trial.last_result)
        self.tracker.trial_ended(trial.trial_id, status, {T.EPOCHS_DONE: self.view.row(trial.trial_id).epoch})

    def _params(self, trial) -> dict:
        cfg = trial_config(self.plan, trial.config, trial.trial_id)
        params = S.flatten({k: v for k, v in cfg.items() if k != "name"})
        for key in (S.STUDENT, S.LABEL):
            if key in trial.config:
                params[key] = trial.config[key]
        return params

    def _status(self, trial) -> str:
        """completed when every epoch ran (by Tune's last result, the view, or MLflow's history:
        a trial restored from a stale experiment state may report nothing new), else stopped."""
        done = max((trial.last_result or {}).get(EPOCHS_DONE, 0) or 0, self.view.row(trial.trial_id).epoch or 0)
        if self.tracker is not None and trial.trial_id in self.tracker.runs:
            done = max(done, self.tracker.last_step.get(self.tracker.runs[trial.trial_id], -1) + 1)
        return "completed" if done >= self._epochs(trial) else "stopped"

    def started(self, trial) -> None:
        self.budgets.started(trial.trial_id, trial.last_result)
        self.seen.add(trial.trial_id)
        self.view.trial_started(trial.trial_id, trial.config)
        self._safe(
            "trial start",
            self.tracker and self.tracker.trial_started,
            trial.trial_id,
            self._params(trial),
            {T.TRIAL_DIR: as_uri(getattr(trial, "path", None) or trial.local_path, self.spec.storage_path)},
        )

    def result(self, trial, result: dict) -> None:
        if result.get("checkpoint_path"):  # a Train run's checkpoint: a bare bucket path on an object store
            result = {**result, "checkpoint_path": as_uri(result["checkpoint_path"], self.spec.storage_path)}
        self.view.trial_result(trial.trial_id, result)
        self._safe("metrics", self.tracker and self.tracker.trial_result, trial.trial_id, result)
        self.halt(self.budgets.result(trial.trial_id, trial.config, result))

    def checkpointed(self, trial, path: str) -> None:
        path = as_uri(path, self.spec.storage_path)  # Tune's checkpoint path drops the URI's scheme
        self.view.row(trial.trial_id).checkpoint = path
        self._safe("checkpoint tag", self.tracker and self.tracker.trial_checkpoint, trial.trial_id, path)

    def ended(self, trial, error: str | None) -> None:
        status = "failed" if error else self._status(trial)
        self.view.trial_ended(trial.trial_id, status, error)
        row = self.view.row(trial.trial_id)
        tags = {T.EPOCHS_DONE: row.epoch, T.ERROR: error}
        if self.spec.constraints:
            tags[T.FEASIBLE] = str(self.view.feasible(row)).lower()
        self._safe("trial end", self.tracker and self.tracker.trial_ended, trial.trial_id, status, tags)
        if error:
            self.halt(self.budgets.failure())
