"""Which trials an export ships and the students they hold: the top K by a metric or the Pareto
front against a cost (trials that ran every epoch only), each trial's best checkpoint (a file, a Ray
checkpoint folder, an object-store URI or an MLflow artifact), rebuilt from weights only."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from torch import nn

from orchestrator.errors import UserError
from orchestrator.results.figures import finished
from orchestrator.results.pareto import pareto_front
from orchestrator.spec.paths import fetch, is_uri, join
from orchestrator.tracking import reader


@dataclass
class Choice:
    rank: int
    row: dict[str, Any]  # one row of the trials table


def choose(
    table: pa.Table, metric: str, maximize: bool = True, top: int = 1, pareto_cost: str | None = None
) -> list[Choice]:
    """Ranked trials: the top `top` by `metric`, or the Pareto front against `pareto_cost`, among the
    trials that ran every epoch (a trial ASHA stopped is a partly trained model; the report keeps it
    out of its fronts and tables too) and meet the sweep's constraints (tag xgd.feasible). A val
    metric ranks by its best-on-val epoch's value (`figures.finished`: val_miou -> best_val_miou),
    the epoch of the exported best.pt."""
    metric = finished(metric, table.column_names)
    counted = reader.completed(table, metric)
    if not len(counted):
        raise UserError(
            f"no trial that ran every epoch holds metric {metric!r} to export "
            f"({len(table)} trial runs; statuses: {', '.join(sorted(set(table.column('status').to_pylist())))})"
        )
    rows = [r for r in counted.to_pylist() if not reader.misses(r)]
    if not rows:
        raise UserError(
            f"none of the {len(counted)} trials that ran every epoch meets the sweep's constraints "
            "(MLflow tag xgd.feasible=false on each): nothing to export; see the report's infeasible.csv"
        )
    sign = -1.0 if maximize else 1.0
    if pareto_cost:
        if pareto_cost not in counted.column_names:
            raise UserError(
                f"--pareto needs cost metric {pareto_cost!r}, which no trial logged; "
                f"logged: {', '.join(reader.metric_columns(counted))}"
            )
        rows = [r for r in rows if r[pareto_cost] is not None and math.isfinite(r[pareto_cost])]
        front = pareto_front([(r[metric], r[pareto_cost]) for r in rows], ("max" if maximize else "min", "min"))
        rows = sorted((rows[i] for i in front), key=lambda r: sign * r[metric])  # best first
    else:
        rows = sorted(rows, key=lambda r: (sign * r[metric], r["start_time_ms"] or 0))[:top]
    return [Choice(i + 1, r) for i, r in enumerate(rows)]


def checkpoint_file(row: dict, client=None, scratch: Path | None = None) -> Path:
    """The trial's best checkpoint: tag xgd.checkpoint (a file, or a Ray checkpoint dir holding
    best.pt / checkpoint.pt; on an object store it is downloaded into `scratch`), else a best.pt /
    checkpoint.pt among the run's MLflow artifacts."""
    tag = row.get("checkpoint")
    if tag and is_uri(tag):
        try:
            for cand in (tag, join(tag, "best.pt"), join(tag, "checkpoint.pt")):
                got = fetch(cand, scratch or _downloads())
                if got is not None:
                    return got
        except (OSError, ValueError) as e:
            raise UserError(
                f"trial {row['run_name']}: checkpoint {tag!r} cannot be read: {str(e).splitlines()[0]}"
            ) from None
    elif tag:
        p = Path(tag)
        for cand in (p / "best.pt", p / "checkpoint.pt") if p.is_dir() else (p,):
            if cand.is_file():
                return cand
    if client is not None and scratch is not None:
        found = _artifact_checkpoint(client, row["run_id"])
        if found:
            return Path(client.download_artifacts(row["run_id"], found, str(scratch)))
    raise UserError(
        f"trial {row['run_name']} (run {row['run_id']}): checkpoint {tag!r} does not exist and the run "
        "has no best.pt/checkpoint.pt artifact"
    )


_DOWNLOADS: list[tempfile.TemporaryDirectory] = []  # object-store checkpoints read without a scratch folder


def _downloads() -> Path:
    if not _DOWNLOADS:
        _DOWNLOADS.append(tempfile.TemporaryDirectory(prefix="xgd-checkpoints-"))  # removed at exit
    return Path(_DOWNLOADS[0].name)


def _artifact_checkpoint(client, run_id: str, path: str = "", depth: int = 2) -> str | None:
    try:
        items = client.list_artifacts(run_id, path or None)
    except Exception:  # an unreachable artifact store reads as "no artifact"
        return None
    files = {Path(i.path).name: i.path for i in items if not i.is_dir}
    for name in ("best.pt", "checkpoint.pt"):
        if name in files:
            return files[name]
    for i in items:
        if i.is_dir and depth > 0:
            found = _artifact_checkpoint(client, run_id, i.path, depth - 1)
            if found:
                return found
    return None


def load_student(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the student from a weights-only checkpoint (no pickled code runs)."""
    from trainables.checkpoint import CheckpointError, load
    from trainables.models import model_from_config

    try:
        state = load(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    except Exception as e:  # torch's weights-only unpickler fails on some non-checkpoints with IndexError etc.
        raise UserError(
            f"checkpoint {str(path)!r} is not a readable weights-only checkpoint: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    missing = [k for k in ("model", "model_cfg", "classes") if k not in state]
    if missing:
        raise UserError(
            f"checkpoint {str(path)!r} lacks {', '.join(missing)} (expected a student checkpoint written by this tool)"
        )
    cfg = {**state["model_cfg"], "encoder_weights": None}  # weights come from the checkpoint, never a hub
    try:
        model = model_from_config(cfg, len(state["classes"]))
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError) as e:
        raise UserError(
            f"checkpoint {str(path)!r} does not fit model {cfg['arch']}/{cfg['encoder']}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), state


def selection(metric: str, maximize: bool, top: int, pareto_cost: str | None) -> dict[str, Any]:
    mode = "max" if maximize else "min"
    text = (
        f"Pareto front of {metric} ({mode}) against {pareto_cost} (min)"
        if pareto_cost
        else f"top {top} by {metric} ({mode})"
    )
    return {
        "metric": metric,
        "mode": mode,
        "top": None if pareto_cost else top,
        "pareto_cost": pareto_cost,
        "text": text,
    }
