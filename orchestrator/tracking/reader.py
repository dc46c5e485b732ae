"""Sweeps read back from MLflow, and only from MLflow: a machine with the store but no Ray results
can report and export. One row per trial in a pyarrow Table; params keep their dotted keys under a
`params.` prefix, metrics keep their flat names (MLflow's latest value of each).

Layout contract (the sweep writes it: orchestrator.tracking.tags): a parent run of kind sweep
named by its SWEEP tag; child runs of kind trial under it, with TRIAL_ID and CHECKPOINT.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from orchestrator.errors import UserError
from orchestrator.tracking import tags as T
from orchestrator.tracking.store import check_reachable, default_tracking_uri, open_client, sqlite_path

PARAM = "params."
# Trial statuses `done` keeps (export): every epoch ran (FINISHED) or a scheduler stopped it early
# (KILLED); a FAILED or RUNNING one does not count.
DONE = ("FINISHED", "KILLED")
# The report counts only trials that ran every epoch; a KILLED one (stopped early by ASHA,
# interrupted, orphaned: its `state`) is shown apart with its `epochs_done`.
COMPLETED, STOPPED = "FINISHED", "KILLED"
META = (
    "run_id",
    "run_name",
    "sweep",
    "trial_id",
    "status",
    "state",  # the sweep's word for how the trial ended (tag xgd.status): completed, stopped, ...
    "epochs_done",
    "feasible",  # tag xgd.feasible: False when the trial misses a constraint of its sweep, None without any
    "checkpoint",
    "experiment_id",
    "start_time_ms",
    "wall_time_s",
)


def open_store(uri: str | None = None):
    """An MlflowClient on an existing store; a missing sqlite file is an error, never created."""
    uri = uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {str(db)!r}; run a sweep first or pass --tracking-uri")
    check_reachable(uri)
    return open_client(uri)


# ------------------------------------------------------------------ finding runs


def _experiments(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def search_all(client, filter_string: str, experiment_ids: list[str] | None = None) -> list:
    """All runs matching `filter_string` (pages followed), newest first."""
    ids = experiment_ids or _experiments(client)
    runs, token = [], None
    while ids:
        page = client.search_runs(
            ids, filter_string, max_results=1000, page_token=token, order_by=["attributes.start_time DESC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def list_sweeps(client) -> list[str]:
    """Sweep names in the store, newest parent first (each name once)."""
    names: list[str] = []
    for run in search_all(client, T.equals(T.KIND, T.SWEEP_RUN)):
        name = run.data.tags.get(T.SWEEP)
        if name and name not in names:
            names.append(name)
    return names


@dataclass
class Sweep:
    name: str
    parent: Any  # mlflow.entities.Run
    trials: list  # child runs of `parent`

    @property
    def experiment_id(self) -> str:
        return self.parent.info.experiment_id


def find_sweep(client, name: str) -> Sweep:
    """The newest parent run named `name` and its trial runs; one-line errors when there are none."""
    parents = search_all(client, T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: name}))
    if not parents:
        known = list_sweeps(client)
        hint = f"known sweeps: {', '.join(known[:20])}" if known else "the store has no sweeps"
        raise UserError(f"unknown sweep {name!r}; {hint}")
    parent = parents[0]
    trials = search_all(client, T.equals(T.PARENT, parent.info.run_id), [parent.info.experiment_id])
    trials = [r for r in trials if r.data.tags.get(T.KIND, T.TRIAL_RUN) == T.TRIAL_RUN]
    if not trials:
        raise UserError(f"sweep {name!r} (run {parent.info.run_id}) has no trial runs")
    return Sweep(name, parent, trials)


# ------------------------------------------------------------------ the trials table


def parse_value(text: str | None) -> Any:
    """MLflow stores params as strings: give numbers back as numbers ('None' -> null)."""
    if text is None or text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _column(values: list) -> pa.Array:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


def _best_from_history(client, run_id: str, key: str) -> float | None:
    values = [m.value for m in client.get_metric_history(run_id, key) if math.isfinite(m.value)]
    return max(values) if values else None


def trials_table(client, sweep: Sweep) -> pa.Table:
    """One row per trial: run metadata, `params.<dotted key>` columns, final metric columns."""
    rows: list[dict[str, Any]] = []
    for run in sweep.trials:
        info, data = run.info, run.data
        wall = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else None
        row: dict[str, Any] = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "sweep": sweep.name,
            "trial_id": data.tags.get(T.TRIAL_ID),
            "status": info.status,
            "state": data.tags.get(T.STATUS),
            "epochs_done": parse_value(data.tags.get(T.EPOCHS_DONE)),
            "feasible": {"true": True, "false": False}.get(data.tags.get(T.FEASIBLE, "")),
            "checkpoint": data.tags.get(T.CHECKPOINT),
            "experiment_id": info.experiment_id,
            "start_time_ms": info.start_time,
            "wall_time_s": wall,
        }
        row.update({PARAM + k: parse_value(v) for k, v in data.params.items()})
        row.update({k: float(v) for k, v in data.metrics.items()})
        if "val_miou" in data.metrics and "best_val_miou" not in data.metrics:
            row["best_val_miou"] = _best_from_history(client, info.run_id, "val_miou")
        rows.append(row)
    params = sorted({k for r in rows for k in r if k.startswith(PARAM)})
    metrics = sorted({k for r in rows for k in r if k not in META and not k.startswith(PARAM)})
    rows.sort(key=lambda r: (r["start_time_ms"] or 0, r["run_id"]))
    names = [*META, *params, *metrics]
    return pa.table({n: _column([r.get(n) for r in rows]) for n in names})


def done(table: pa.Table, metric: str | None = None) -> pa.Table:
    """Trials that count: finished (or stopped early) and, if given, holding `metric`."""
    keep = [s in DONE for s in table.column("status").to_pylist()]
    if metric is not None:
        vals = table.column(metric).to_pylist() if metric in table.column_names else [None] * len(table)
        keep = [k and v is not None and math.isfinite(v) for k, v in zip(keep, vals)]
    return table.filter(pa.array(keep, pa.bool_()))


def completed(table: pa.Table, metric: str) -> pa.Table:
    """Trials that ran every epoch (FINISHED) and hold a finite `metric`: what tables, importances,
    plots and Pareto fronts count."""
    return _status_is(done(table, metric), COMPLETED)


def misses(row: dict) -> bool:
    """Whether a trial row misses a constraint of its sweep (its `feasible` is false, or 0 once the
    column went through a numeric cast); None: the sweep has none."""
    f = row.get("feasible")
    return f is not None and not f


def infeasible(table: pa.Table) -> pa.Table:
    """The trials that miss their sweep's constraints (none when it has none)."""
    if "feasible" not in table.column_names:
        return table.slice(0, 0)
    return table.filter(pa.array([misses({"feasible": f}) for f in table.column("feasible").to_pylist()], pa.bool_()))


def stopped(table: pa.Table) -> pa.Table:
    """Trials that ended before their last epoch (KILLED: stopped by the scheduler, interrupted, orphaned)."""
    return _status_is(table, STOPPED)


def _status_is(table: pa.Table, status: str) -> pa.Table:
    return table.filter(pa.array([s == status for s in table.column("status").to_pylist()], pa.bool_()))


def histories(client, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of `key` per run, in step order: one get_metric_history call per run."""
    out = {}
    for rid in run_ids:
        points = {m.step: m.value for m in client.get_metric_history(rid, key) if math.isfinite(m.value)}
        out[rid] = sorted(points.items())
    return out


def sweep_spec_text(client, sweep: Sweep) -> str | None:
    """The sweep's spec as the driver saved it on the parent run (artifact sweep.yaml), if readable."""
    import os
    import tempfile

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(sweep.parent.info.run_id, "sweep.yaml", tmp)).read_text()
    except Exception:  # no artifact (a store built by hand, an older sweep) or an unreachable artifact store
        return None
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def metric_columns(table: pa.Table) -> list[str]:
    return [n for n in table.column_names if n not in META and not n.startswith(PARAM)]


# ------------------------------------------------------------------ names read from a store


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def safe_name(name: str) -> str:
    """A single path component from a name read out of a store: no separators, no '..'."""
    clean = _UNSAFE.sub("_", str(name)).strip("._") or "unnamed"
    return clean[:120]


def safe_join(root: str | Path, *names: str) -> Path:
    """root/<safe names...>, checked to stay under root."""
    base = Path(root).resolve()
    path = base.joinpath(*(safe_name(n) for n in names)).resolve()
    if not path.is_relative_to(base):
        raise UserError(f"refusing to write outside {str(base)!r}: {names!r}")
    return path
