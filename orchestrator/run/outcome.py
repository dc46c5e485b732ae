"""What a sweep leaves behind: the outcome (rows, best trial, Pareto front), the parent MLflow
run's params/tags, and the closing summary."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

from orchestrator.results.pareto import pareto_front
from orchestrator.run.live import Row, SweepView
from orchestrator.spec import space as S
from orchestrator.spec.sweep import SweepSpec
from orchestrator.tracking import tags as T

ENDED = ("completed", "stopped", "failed")  # trial states that count toward the planned num_samples


@dataclass
class SweepOutcome:
    name: str
    experiment_dir: str
    parent_run_id: str | None
    rows: list[Row]
    best: Row | None
    pareto: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    leaks_fixed: int = 0
    status: str = "completed"
    stop_reason: str | None = None  # why it stopped before its last trial (a budget, `stop`)
    teacher: dict = field(default_factory=dict)  # tags.TEACHER_COUNTS summed over every trial's epochs


def teacher_totals(rows: list[Row]) -> dict:
    """The frozen teacher's forwards and its output cache's hits, misses and bytes over the sweep."""
    return {k: sum(r.teacher.get(k, 0) for r in rows) for k in T.TEACHER_COUNTS if any(k in r.teacher for r in rows)}


def parent_params(spec: SweepSpec) -> dict:
    return S.flatten(
        {
            "train": {k: v for k, v in spec.train.model_dump().items() if k != "teacher"},
            "space": {
                k: f"{p.type} {p.describe()}" + (f" when {p.when}" if p.when else "") for k, p in spec.space.items()
            },
            "students": {k: f"{m.arch}/{m.encoder}" for k, m in spec.students.items()},
            "objective": ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives),
            "search": spec.search.model_dump(),
            "constraints": "; ".join(c.describe() for c in spec.constraints) or None,
            "early_stopping": spec.early_stopping.model_dump(),
            "resources": spec.resources.model_dump(),
            "num_samples": spec.num_samples,
        }
    )


def parent_tags(spec: SweepSpec, teacher) -> dict:
    from orchestrator.tracking.writer import git_info
    from trainables.data import class_names

    data = spec.train.data
    return {
        **git_info(),
        T.RESULTS: spec.results,
        T.DATASET: data.kind,
        T.DATA_ROOT: data.root,
        T.CLASSES: ",".join(class_names(data.model_dump())),
        T.EXPERIMENT_DIR: spec.experiment_dir,
        T.TEACHER_CHECKPOINT: teacher.checkpoint if teacher else None,
        T.TEACHER_HASH: teacher.recipe_hash if teacher else None,
        T.TEACHER_RUN_ID: getattr(teacher, "run_id", None) if teacher else None,
    }


def pareto_trials(rows: list[Row], objectives, feasible=lambda r: True) -> list[str]:
    """Trials no other trial beats on every objective (last reported values; failed trials, trials
    missing an objective, trials that miss a constraint and trials stopped early are left out: a
    stopped trial reports its static costs with every epoch, but its val metrics are of fewer
    epochs than the others')."""
    kept = [
        r
        for r in rows
        if r.state not in ("failed", "stopped")
        and feasible(r)
        and all(isinstance(r.result.get(o.metric), (int, float)) for o in objectives)
    ]
    front = pareto_front([[r.result[o.metric] for o in objectives] for r in kept], [o.mode for o in objectives])
    return [kept[i].trial_id for i in front]


def finish(spec, view: SweepView, tracker, parent, status, fixed, t0, stop_reason=None) -> SweepOutcome:
    for r in list(view.rows.values()):
        if r.state in ("pending", "running"):  # Ctrl-C: Tune saved the experiment; --resume continues it
            view.trial_ended(r.trial_id, "interrupted")
            if tracker is not None:
                try:
                    tracker.trial_ended(r.trial_id, "interrupted", {T.EPOCHS_DONE: r.epoch})
                except Exception:
                    pass
    rows = list(view.rows.values())
    ended = [r for r in rows if r.state in ENDED]
    if status == "completed" and len(ended) < spec.num_samples:
        status = "interrupted"
    best = view.best_row()
    multi = len(spec.objectives) > 1
    pareto = pareto_trials(rows, spec.objectives, view.feasible) if multi else []
    if rows and all(r.state == "failed" for r in rows) and not stop_reason:  # stopped early: resumable
        status = "failed"
    if tracker is not None and parent is not None:
        from orchestrator.tracking.writer import best_checkpoint

        tags = {T.LEAKED_PGS_RELEASED: fixed, T.STOP_REASON: stop_reason}
        if spec.constraints:
            tags[T.CONSTRAINTS] = "; ".join(c.describe() for c in spec.constraints)
        metrics = {k: float(v) for k, v in teacher_totals(rows).items()}
        if best is not None:
            tags.update(
                {
                    T.BEST_TRIAL_ID: best.trial_id,
                    T.BEST_RUN_ID: tracker.runs.get(best.trial_id),
                    T.BEST_CHECKPOINT: best_checkpoint(best.checkpoint),
                    T.BEST_PARAMS: json.dumps(_point(best), sort_keys=True),
                }
            )
            metrics[f"best_{view.metric}"] = float(best.best)
        if pareto:
            tags[T.PARETO_TRIALS] = ",".join(pareto)
            for t in pareto:
                if t in tracker.runs:
                    tracker.set_tags(tracker.runs[t], {T.PARETO: "true"})
        try:
            tracker.finish_sweep(status, tags, metrics)
        except Exception as e:
            view.console.print(f"[yellow]MLflow: could not close the sweep run: {e}[/]")
    return SweepOutcome(
        spec.name,
        spec.experiment_dir,
        parent,
        rows,
        best,
        pareto,
        time.monotonic() - t0,
        fixed,
        status,
        stop_reason,
        teacher_totals(rows),
    )


def print_best(console: Console, outcome: SweepOutcome, metric: str) -> None:
    from orchestrator.tracking.writer import best_checkpoint

    b = outcome.best
    say = functools.partial(console.print, soft_wrap=True)  # a log file gets whole lines, never folded
    if outcome.stop_reason:
        say(f"[yellow]stopped[/]: {escape(outcome.stop_reason)}", highlight=False)
    if b is None:
        say(
            "[red]no trial reported a result[/]"
            if not any(r.result for r in outcome.rows)
            else "[red]no trial meets the constraints[/]"
        )
        if outcome.status == "interrupted":
            say("[yellow]interrupted[/]: continue with the same command and --resume")
        return
    say(f"[bold]best[/]: {b.trial_id} {metric} {b.best:.4f}  {json.dumps(_point(b), sort_keys=True)}")
    say(f"best checkpoint: {best_checkpoint(b.checkpoint)}", highlight=False)
    if outcome.pareto:
        say(f"Pareto front: {', '.join(outcome.pareto)}")
    t = outcome.teacher
    if t.get("teacher_forwards") is not None:
        say(
            f"teacher: {t['teacher_forwards']:.0f} item forwards; output cache "
            f"{t.get('teacher_cache_hits', 0):.0f} hits, {t.get('teacher_cache_misses', 0):.0f} misses, "
            f"{t.get('teacher_cache_bytes', 0) / 1e6:.1f} MB written",
            highlight=False,
        )
    if outcome.status == "interrupted":
        say("[yellow]interrupted[/]: continue with the same command and --resume")
    say(
        f"wall time {outcome.wall_s:.0f} s; MLflow parent run {outcome.parent_run_id}; "
        f"results in {outcome.experiment_dir}",
        highlight=False,
    )


def _point(row: Row) -> dict:
    """The sampled settings of a trial (the grid's bookkeeping index left out)."""
    return {k: v for k, v in row.point.items() if k != S.GRID_KEY}
