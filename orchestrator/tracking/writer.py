"""MLflow for sweeps, written only by the driver (one writer: no "database is locked").

Layout (read back by orchestrator.tracking.reader; tag names in orchestrator.tracking.tags):
  parent run  params = the fixed settings and the space; artifact sweep.yaml; tags for git
              commit, dataset, teacher; best trial at the end.
  child run   params = the trial's full trainer config flattened (distill.alpha, ...); metrics per
              epoch with step=epoch; status FINISHED, KILLED (stopped early), FAILED; artifact
              test_confusion.npz (per-image test confusion counts, copied from the trial's last
              checkpoint folder when it ran every epoch: TRIAL_FILES).
  teacher run a recipe the sweep trained.
Runs are found again by their tags, so re-running or resuming never creates a second copy and
never logs an epoch twice.

A store that goes away mid-sweep (a tracking server stopped or restarted) does not stop or stall
the sweep: every write during the sweep goes through a queue (orchestrator.tracking.pending) that
is delivered in order with short HTTP retries (HTTP_RETRIES), retried at later callbacks at
growing intervals (RETRY_S up to RETRY_MAX_S) and at the sweep's end (END_WAIT_S). A write is
replayed whole and is idempotent: runs are found by tags before one is created, metrics carry the
time they were reported, and an epoch already logged is skipped. What is still pending at the end
is printed, one line per kind, and kept in a JSONL file that `--resume` replays.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.tracking import tags as T
from orchestrator.tracking.environment import log_environment
from orchestrator.tracking.pending import TRIAL_KINDS, Outbox, Write, short_http
from orchestrator.tracking.store import artifact_root
from trainables.reporting import FILES

SKIP_KEYS = {
    "done",
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "time_since_restore",
    "iterations_since_restore",
    "timesteps_total",
    "episodes_total",
    "timestamp",
    "pid",
    "trial_id",
    "experiment_tag",
    "should_checkpoint",
    "timesteps_since_restore",
    "epochs_done",
}
STATUS = {
    "completed": "FINISHED",
    "stopped": "KILLED",
    "failed": "FAILED",
    "running": "RUNNING",
    "interrupted": "KILLED",
}
MAX_PARAM = 6000
TRIAL_FILES = tuple(FILES.values())  # files a trial leaves in its last checkpoint, logged as artifacts


def git_info(cwd: str | None = None) -> dict[str, str]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {T.MLFLOW_GIT_COMMIT: commit, T.GIT_COMMIT: commit, T.GIT_DIRTY: str(dirty).lower()} if commit else {}


def metrics_of(result: dict) -> dict[str, float]:
    """The trainer's numeric metrics in a Tune result (Tune's own bookkeeping left out)."""
    out = {}
    for k, v in result.items():
        if k in SKIP_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def best_checkpoint(checkpoint_path: str | None) -> str | None:
    """The best-so-far model file inside a reported checkpoint folder (best.pt), else the folder."""
    if not checkpoint_path:
        return None
    best = checkpoint_path.rstrip("/") + "/best.pt"
    if "://" in checkpoint_path or os.path.exists(best):
        return best
    return checkpoint_path


class Tracker:
    def __init__(self, uri: str, experiment: str, sweep: str):
        from orchestrator.tracking.store import open_client

        self.client = open_client(uri)
        self.uri, self.sweep = uri, sweep
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            exp.experiment_id
            if exp
            else self.client.create_experiment(experiment, artifact_location=artifact_root(uri))
        )
        self.parent_id: str | None = None
        self.runs: dict[str, str] = {}  # trial id -> run id
        self.last_step: dict[str, int] = {}  # run id -> last epoch logged
        self.errors: list[str] = []
        self.outbox = Outbox(self._deliver, uri)  # the sweep's writes, delivered in order (see the module doc)
        self.placed: dict[str, dict] = {}  # trial id -> placement tags set
        self.folders: dict[str, str] = {}  # trial id -> its last reported checkpoint folder

    # -------------------------------------------------------------- finding runs

    def _find(self, tags: dict[str, str]):
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=T.matching(tags), max_results=2, order_by=["attributes.start_time ASC"]
        )
        return runs[0] if runs else None

    def _create(self, name: str, tags: dict[str, str]):
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags)

    def _log_params(self, run, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        have = run.data.params if hasattr(run, "data") else {}
        todo = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(params.items()) if k not in have]
        for i in range(0, len(todo), 100):
            self.client.log_batch(run.info.run_id, params=todo[i : i + 100])

    # -------------------------------------------------------------- sweep (parent)

    def start_sweep(self, spec_text: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self._find({T.KIND: T.SWEEP_RUN, T.SWEEP: self.sweep})
        if run is None:
            run = self._create(f"sweep:{self.sweep}", {T.KIND: T.SWEEP_RUN, T.SWEEP: self.sweep})
            self.client.log_text(run.info.run_id, spec_text, "sweep.yaml")
            log_environment(self.client, run.info.run_id)  # provenance (orchestrator.tracking.environment)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            log_environment(
                self.client, run.info.run_id, f"environment/resumed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            )
        self.parent_id = run.info.run_id
        self._log_params(run, params)
        self._tags(self.parent_id, tags)
        self.client.set_tag(self.parent_id, T.DRIVER, driver_line())  # `status` names it
        for tag in (T.STOP_REQUESTED, T.STOP_REASON):  # an earlier driver's stop is done with
            if tag in run.data.tags:
                self.client.delete_tag(self.parent_id, tag)
        return self.parent_id

    def stop_requested(self) -> str | None:
        """The parent run's STOP_REQUESTED tag (set by `stop SWEEP`), or None; one short read of the
        run (the outbox's HTTP limits), none while the store is known to be down (MLflow's own
        retries of a dead server would stall the driver for minutes)."""
        if self.parent_id is None or self.outbox.down is not None:
            return None
        with short_http():
            return self.client.get_run(self.parent_id).data.tags.get(T.STOP_REQUESTED)

    def _tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(run_id, tags=items)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.outbox.put("tags", run_id, strings(tags))

    def finish_sweep(self, status: str, tags: dict[str, Any], metrics: dict[str, float]) -> None:
        """Queue the parent run's end, deliver everything still pending (retrying up to END_WAIT_S)
        and say what happened to the writes that had to wait, and what is still not logged."""
        self.outbox.put("finish_sweep", STATUS.get(status, status), strings(tags), metrics, now_ms())
        self.outbox.drain()
        for line in self.outbox.report():
            self.outbox.say(line)

    def _finish_sweep(self, status: str, tags: dict[str, str], metrics: dict[str, float], at: int) -> None:
        from mlflow.entities import Metric

        self._tags(self.parent_id, tags)
        if metrics:
            self.client.log_batch(self.parent_id, metrics=[Metric(k, v, at, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_id, status=status)

    def teacher_run(self, recipe_hash: str, params: dict[str, Any], metrics: dict[str, Any], checkpoint: str) -> str:
        from mlflow.entities import Metric

        run = self._find({T.KIND: T.TEACHER_RUN, T.TEACHER_HASH: recipe_hash})
        if run is not None:
            return run.info.run_id
        run = self._create(
            f"teacher:{recipe_hash}", {T.KIND: T.TEACHER_RUN, T.TEACHER_HASH: recipe_hash, T.CHECKPOINT: checkpoint}
        )
        self._log_params(run, params)
        now = int(time.time() * 1000)
        ms = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if ms:
            self.client.log_batch(run.info.run_id, metrics=ms)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    # -------------------------------------------------------------- trials (children)

    def known_run(self, trial_id: str) -> str | None:
        """Status of the trial's run if one exists (and remember it), else None."""
        run = self._find({T.SWEEP: self.sweep, T.TRIAL_ID: trial_id})
        if run is None:
            return None
        self.runs[trial_id] = run.info.run_id
        hist = self.client.get_metric_history(run.info.run_id, "epoch")
        self.last_step[run.info.run_id] = max((m.step for m in hist), default=-1)
        return run.info.status

    def close_orphans(self, known: set[str]) -> list[str]:
        """After a resume: runs still RUNNING whose trial the restored Tune state does not hold.
        The killed driver started them after its last experiment snapshot (Tune saves it every
        10 s or more), so Tune runs a new sample in their place; close them as KILLED, tagged."""
        flt = T.matching({T.SWEEP: self.sweep, T.KIND: T.TRIAL_RUN}) + " and attributes.status = 'RUNNING'"
        closed = []
        for run in self.client.search_runs([self.experiment_id], filter_string=flt, max_results=5000):
            tid = run.data.tags.get(T.TRIAL_ID)
            if tid and tid not in known:
                self._tags(
                    run.info.run_id,
                    {
                        T.STATUS: "orphaned",
                        T.ERROR: (
                            "started after the interrupted driver's last Tune snapshot; the resumed sweep sampled anew"
                        ),
                    },
                )
                self.client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(tid)
        return closed

    # the writes of a running sweep go through the outbox; _<kind> delivers a write of that kind

    def _deliver(self, w: Write) -> None:
        if w.kind in TRIAL_KINDS and w.kind != "trial_started" and w.args[0] not in self.runs:
            self.known_run(w.args[0])  # queued by an earlier driver of this sweep: find the trial's run
        getattr(self, f"_{w.kind}")(*w.args)

    def trial_started(self, trial_id: str, params: dict[str, Any], tags: dict[str, Any]) -> str | None:
        """The trial's run id (None while the store cannot be reached: the start is queued)."""
        self.outbox.put("trial_started", trial_id, params, strings(tags))
        return self.runs.get(trial_id)

    def _trial_started(self, trial_id: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        run = self._find({T.SWEEP: self.sweep, T.TRIAL_ID: trial_id})
        if run is None:
            run = self._create(
                f"{self.sweep}/{trial_id}",
                {
                    T.PARENT: self.parent_id,
                    T.KIND: T.TRIAL_RUN,
                    T.SWEEP: self.sweep,
                    T.TRIAL_ID: trial_id,
                    T.STATUS: "running",
                },
            )
            self.last_step[run.info.run_id] = -1
        else:  # resumed: continue the same run after its last logged epoch
            self.client.update_run(run.info.run_id, status="RUNNING")
            self._tags(run.info.run_id, {T.STATUS: "running"})
            hist = self.client.get_metric_history(run.info.run_id, "epoch")
            self.last_step[run.info.run_id] = max((m.step for m in hist), default=-1)
        self.runs[trial_id] = run.info.run_id
        self._log_params(run, params)
        self._tags(run.info.run_id, tags)

    def trial_result(self, trial_id: str, result: dict) -> None:
        if not isinstance(result.get("epoch"), (int, float)):
            return
        self.outbox.put("metrics", trial_id, int(result["epoch"]), now_ms(), metrics_of(result))
        where = {tag: result[key] for key, tag in T.PLACEMENT.items() if isinstance(result.get(key), str)}
        if where and self.placed.get(trial_id) != where:  # the node and device the trial reported
            self.outbox.put("trial_tags", trial_id, where)
            self.placed[trial_id] = where
        self.trial_checkpoint(trial_id, result.get("checkpoint_path"))

    def _metrics(self, trial_id: str, step: int, at: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(trial_id)
        if run_id is None or step <= self.last_step.get(run_id, -1):
            return  # no run, or already logged (a resumed trial repeats nothing, but be sure)
        self.client.log_batch(run_id, metrics=[Metric(k, v, at, step) for k, v in metrics.items()])
        self.last_step[run_id] = step

    def trial_checkpoint(self, trial_id: str, checkpoint_path: str | None) -> None:
        if checkpoint_path:
            self.folders[trial_id] = checkpoint_path
        ckpt = best_checkpoint(checkpoint_path)
        if ckpt:
            self.outbox.put("checkpoint", trial_id, ckpt)

    def _checkpoint(self, trial_id: str, ckpt: str) -> None:
        self._trial_tags(trial_id, {T.CHECKPOINT: ckpt})

    def _trial_tags(self, trial_id: str, tags: dict[str, str]) -> None:
        if trial_id in self.runs:
            self._tags(self.runs[trial_id], tags)

    def trial_ended(self, trial_id: str, status: str, tags: dict[str, Any]) -> None:
        folder = self.folders.get(trial_id)
        if status == "completed" and folder:  # the last checkpoint holds what the last epoch wrote
            for name in TRIAL_FILES:
                self.outbox.put("artifact", trial_id, f"{folder.rstrip('/')}/{name}")
        self.outbox.put("trial_ended", trial_id, status, strings(tags))

    def _artifact(self, trial_id: str, path: str) -> None:
        """Log a file of the trial's checkpoint folder (local or on an object store) as an artifact
        of its run; a file that is not there (no test split, an older trainer) is skipped."""
        import tempfile

        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        if "://" not in path:
            if Path(path).is_file():
                self.client.log_artifact(run_id, path)
            return
        import pyarrow.fs as pafs  # an object-store checkpoint (the URI form orchestrator.spec.paths.as_uri gives)

        fs, key = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(key).type != pafs.FileType.File:
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, key.rsplit("/", 1)[-1])
            pafs.copy_files(key, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            self.client.log_artifact(run_id, str(local))

    def _trial_ended(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        self._tags(run_id, {**tags, T.STATUS: status})
        self.client.set_terminated(run_id, status=STATUS[status])

    def keep_pending(self, path: str | Path, say: Callable[[str], None] | None = None) -> None:
        """Keep undelivered writes in `path` (JSONL) and deliver the writes an earlier driver of this
        sweep left there (its store went away before they landed); `say` prints the outbox's notes."""
        self.outbox.say = say or self.outbox.say
        self.outbox.queue.path = Path(path)
        n = self.outbox.queue.load()
        if n:
            self.outbox.say(f"MLflow: delivering {n} write(s) an earlier driver of this sweep kept in {path}")
            self.outbox.flush(force=True)


def driver_line() -> str:
    """This driver as `status` shows it: host, pid and since when (UTC)."""
    import socket

    return f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC"


def strings(tags: dict[str, Any]) -> dict[str, str]:
    """Tag values as MLflow stores them (None: no tag)."""
    return {k: str(v) for k, v in tags.items() if v is not None}


def now_ms() -> int:
    return int(time.time() * 1000)
