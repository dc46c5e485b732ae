"""What a sweep leaves behind: the outcome (rows, best trial, Pareto front), the parent MLflow
run's params/tags, and the closing summary."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Optional

from rich.console import Console

from orchestrator import space as S
from orchestrator.live import Row, SweepView
from orchestrator.sweep_spec import SweepSpec


@dataclass
class SweepOutcome:
    name: str
    experiment_dir: str
    parent_run_id: Optional[str]
    rows: list[Row]
    best: Optional[Row]
    pareto: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    leaks_fixed: int = 0
    status: str = "completed"


def parent_params(spec: SweepSpec) -> dict:
    return S.flatten({
        "train": {k: v for k, v in spec.train.model_dump().items() if k != "teacher"},
        "space": {k: f"{p.type} {p.describe()}" + (f" when {p.when}" if p.when else "") for k, p in spec.space.items()},
        "students": {k: f"{m.arch}/{m.encoder}" for k, m in spec.students.items()},
        "objective": ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives),
        "search": spec.search.model_dump(), "early_stopping": spec.early_stopping.model_dump(),
        "resources": spec.resources.model_dump(), "num_samples": spec.num_samples,
    })


def parent_tags(spec: SweepSpec, teacher) -> dict:
    from orchestrator.tracking import git_info
    from trainables.data import class_names

    data = spec.train.data
    return {**git_info(), "xgd.dataset": data.kind, "xgd.data_root": data.root,
            "xgd.classes": ",".join(class_names(data.model_dump())), "xgd.experiment_dir": spec.experiment_dir,
            "xgd.teacher_checkpoint": teacher.checkpoint if teacher else None,
            "xgd.teacher_hash": teacher.recipe_hash if teacher else None,
            "xgd.teacher_run": getattr(teacher, "run_id", None) if teacher else None}


def pareto_front(rows: list[Row], objectives) -> list[str]:
    """Trials no other trial beats on every objective (last reported values)."""
    pts = {}
    for r in rows:
        vals = [r.result.get(o.metric) for o in objectives]
        if r.state != "failed" and all(isinstance(v, (int, float)) for v in vals):
            pts[r.trial_id] = [v if o.mode == "min" else -v for v, o in zip(vals, objectives)]
    return [t for t, p in pts.items()
            if not any(all(a <= b for a, b in zip(q, p)) and q != p for u, q in pts.items() if u != t)]


def finish(spec, view: SweepView, tracker, parent, status, fixed, t0) -> SweepOutcome:
    for r in list(view.rows.values()):
        if r.state in ("pending", "running"):  # Ctrl-C: Tune saved the experiment; --resume continues it
            view.trial_ended(r.trial_id, "interrupted")
            if tracker is not None:
                try:
                    tracker.trial_ended(r.trial_id, "interrupted", {"xgd.epochs_done": r.epoch})
                except Exception:
                    pass
    rows = list(view.rows.values())
    ended = [r for r in rows if r.state in ("completed", "stopped", "failed")]
    if status == "completed" and len(ended) < spec.num_samples:
        status = "interrupted"
    best = view.best_row()
    multi = len(spec.objectives) > 1
    pareto = pareto_front(rows, spec.objectives) if multi else []
    if rows and all(r.state == "failed" for r in rows):
        status = "failed"
    if tracker is not None and parent is not None:
        from orchestrator.tracking import best_checkpoint

        tags = {"xgd.leaked_pgs_released": fixed}
        metrics = {}
        if best is not None:
            tags.update({"xgd.best_trial_id": best.trial_id, "xgd.best_run_id": tracker.runs.get(best.trial_id),
                         "xgd.best_checkpoint": best_checkpoint(best.checkpoint),
                         "xgd.best_params": json.dumps(_point(best), sort_keys=True)})
            metrics[f"best_{view.metric}"] = float(best.best)
        if pareto:
            tags["xgd.pareto_trials"] = ",".join(pareto)
            for t in pareto:
                if t in tracker.runs:
                    tracker.set_tags(tracker.runs[t], {"xgd.pareto": "true"})
        try:
            tracker.finish_sweep(status, tags, metrics)
        except Exception as e:
            view.console.print(f"[yellow]MLflow: could not close the sweep run: {e}[/]")
    return SweepOutcome(spec.name, spec.experiment_dir, parent, rows, best, pareto,
                        time.monotonic() - t0, fixed, status)


def print_best(console: Console, outcome: SweepOutcome, metric: str) -> None:
    from orchestrator.tracking import best_checkpoint

    b = outcome.best
    if b is None:
        console.print("[red]no trial reported a result[/]")
        return
    console.print(f"[bold]best[/]: {b.trial_id} {metric} {b.best:.4f}  {json.dumps(_point(b), sort_keys=True)}")
    console.print(f"best checkpoint: {best_checkpoint(b.checkpoint)}")
    if outcome.pareto:
        console.print(f"Pareto front: {', '.join(outcome.pareto)}")
    if outcome.status == "interrupted":
        console.print("[yellow]interrupted[/]: continue with the same command and --resume")
    console.print(f"wall time {outcome.wall_s:.0f} s; MLflow parent run {outcome.parent_run_id}; "
                  f"results in {outcome.experiment_dir}")


def _point(row: Row) -> dict:
    """The sampled settings of a trial (the grid's bookkeeping index left out)."""
    return {k: v for k, v in row.point.items() if k != S.GRID_KEY}
