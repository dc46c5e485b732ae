"""MLflow for sweeps, written only by the driver (one writer: no "database is locked").

Layout (read back by orchestrator.tracking.reader; tag names in orchestrator.tracking.tags):
  parent run  params = the fixed settings and the space; artifact sweep.yaml; tags for git
              commit, dataset, teacher; best trial at the end.
  child run   params = the trial's full trainer config flattened (distill.alpha, ...); metrics per
              epoch with step=epoch; status FINISHED, KILLED (stopped early), FAILED.
  teacher run a recipe the sweep trained.
Runs are found again by their tags, so re-running or resuming never creates a second copy and
never logs an epoch twice.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from typing import Any

from orchestrator.tracking import tags as T
from orchestrator.tracking.store import artifact_root

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
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
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
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_id = run.info.run_id
        self._log_params(run, params)
        self.set_tags(self.parent_id, tags)
        return self.parent_id

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(run_id, tags=items)

    def finish_sweep(self, status: str, tags: dict[str, Any], metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        self.set_tags(self.parent_id, tags)
        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(self.parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        self.client.set_terminated(self.parent_id, status=STATUS.get(status, status))

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
                self.set_tags(
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

    def trial_started(self, trial_id: str, params: dict[str, Any], tags: dict[str, Any]) -> str:
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
            self.set_tags(run.info.run_id, {T.STATUS: "running"})
            hist = self.client.get_metric_history(run.info.run_id, "epoch")
            self.last_step[run.info.run_id] = max((m.step for m in hist), default=-1)
        self.runs[trial_id] = run.info.run_id
        self._log_params(run, params)
        self.set_tags(run.info.run_id, tags)
        return run.info.run_id

    def trial_result(self, trial_id: str, result: dict) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(trial_id)
        if run_id is None or not isinstance(result.get("epoch"), (int, float)):
            return
        step = int(result["epoch"])
        if step <= self.last_step.get(run_id, -1):
            return  # already logged (a resumed trial repeats nothing, but be sure)
        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in metrics_of(result).items()]
        self.client.log_batch(run_id, metrics=ms)
        self.last_step[run_id] = step
        self.trial_checkpoint(trial_id, result.get("checkpoint_path"))

    def trial_checkpoint(self, trial_id: str, checkpoint_path: str | None) -> None:
        ckpt, run_id = best_checkpoint(checkpoint_path), self.runs.get(trial_id)
        if ckpt and run_id is not None:
            self.set_tags(run_id, {T.CHECKPOINT: ckpt})

    def trial_ended(self, trial_id: str, status: str, tags: dict[str, Any]) -> None:
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        self.set_tags(run_id, {**tags, T.STATUS: status})
        self.client.set_terminated(run_id, status=STATUS[status])
