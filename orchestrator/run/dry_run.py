"""`sweep --dry-run`: the resolved sweep as tables; starts nothing (no Ray, no MLflow, no training)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

from orchestrator.run.budgets import Budgets
from orchestrator.spec import space as S
from orchestrator.spec.sweep import SweepSpec


def render(spec: SweepSpec) -> Group:
    space = Table(title=f"sweep {spec.name}: search space (sampled in this order)", title_justify="left")
    for col in ("key", "type", "range / values", "only when"):
        space.add_column(col, overflow="fold")
    for name in S.ordered(spec.space):
        p = spec.space[name]
        space.add_row(name, p.type, p.describe(), ", ".join(f"{k}={v}" for k, v in p.when.items()) or "-")

    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    r = spec.resources
    per = r.per_trial
    gpu = f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
    rows = [
        (
            "objective",
            ", ".join(f"{o.mode} {o.metric}" for o in spec.objectives)
            + (" (Pareto front)" if len(spec.objectives) > 1 else ""),
        ),
        ("search", f"{spec.search.algorithm} (Optuna, seed {spec.search.seed}), {spec.num_samples} trials"),
        ("sampler", _sampler(spec)),
        ("constraints", "; ".join(c.describe() for c in spec.constraints) or "none"),
        ("budgets", "; ".join(Budgets(spec.search).lines()) or f"none: the sweep runs its {spec.num_samples} trials"),
        ("early stopping", _early(spec)),
        (
            "executor",
            "Ray Train: each trial fits a Ray Train run"
            if r.use_train
            else "one process: each trial runs the loop in its own reused Tune process",
        ),
        ("per trial", _per_trial(r, gpu, per)),
        (
            "concurrency",
            f"up to {r.max_concurrent} trials (capped by what the cluster holds); "
            f"{r.max_failures} retr{'y' if r.max_failures == 1 else 'ies'} per failed trial",
        ),
        ("epochs", f"up to {spec.max_epochs} per trial"),
        ("dataset", _data(spec)),
        ("teacher", _teacher(spec)),
        ("teacher outputs", _outputs(spec)),
        (
            "students",
            ", ".join(f"{k}={m.arch}/{m.encoder}" for k, m in spec.students.items())
            or f"{spec.train.model.arch}/{spec.train.model.encoder} (train.model)",
        ),
        ("storage", spec.experiment_dir),
        ("MLflow", f"{spec.mlflow.tracking_uri} (experiment {spec.mlflow.experiment!r})"),
    ]
    for k, v in rows:
        info.add_row(k, v)
    example = S.resolve(spec.base_config(), _first_point(spec), {k: m.model_dump() for k, m in spec.students.items()})
    return Group(
        space,
        info,
        Text(f"first point's trainer config: model {example['model']}, distill {example['distill']}", style="dim"),
        Text("dry run: nothing was started", style="bold green"),
    )


def _early(spec: SweepSpec) -> str:
    es = spec.early_stopping
    if es.kind == "none":
        return "none (every trial runs all its epochs)"
    return (
        f"ASHA on {spec.objectives[0].metric}: grace {es.grace_period} epoch(s), reduction factor "
        f"{es.reduction_factor:g}, max_t {es.max_t or spec.max_epochs}"
    )


def _data(spec: SweepSpec) -> str:
    d = spec.train.data
    if d.kind == "synthetic":
        return f"synthetic scenes ({d.num_train} train / {d.num_val} val, {d.image_size}px, crop {d.crop})"
    state = "present" if d.root and Path(d.root).is_dir() else "MISSING"
    return f"{d.kind} at {d.root} ({state}), crop {d.crop}, batch {d.batch_size}"


def _teacher(spec: SweepSpec) -> str:
    if spec.teacher is None:
        return "none (trials train without distillation)"
    if spec.teacher.checkpoint:
        return spec.teacher.checkpoint
    from orchestrator.run import teachers

    hit = teachers.cached(spec)
    key = teachers.recipe_hash(spec.teacher.recipe)
    m = spec.teacher.recipe.get("model", {})
    where = f"cached at {hit.checkpoint}" if hit else f"trained first, then cached under {spec.results}/teachers/{key}"
    return f"recipe {key} ({m.get('arch', 'deeplabv3plus')}/{m.get('encoder', 'resnet18')}): {where}"


def _outputs(spec: SweepSpec) -> str:
    from orchestrator.run.teacher_plan import describe, teacher_cache

    return describe(spec, teacher_cache(spec))


def _first_point(spec: SweepSpec) -> dict:
    point: dict = {}
    for name in S.ordered(spec.space):
        p = spec.space[name]
        if p.active(point):
            point[name] = p.probes()[0]
    return point


def _per_trial(r, gpu: str, per: dict) -> str:
    total = f"{per['CPU']:g} CPU, {per['GPU']:g} GPU"
    if not r.use_train:
        return f"1 process x ({r.cpus_per_worker:g} CPU{gpu}) = {total}, held by the Tune trial"
    return (
        f"{r.num_workers} Ray Train worker(s) x ({r.cpus_per_worker:g} CPU{gpu}) = {total}; the Tune trial "
        "itself reserves no CPU" + ("; DDP over the workers" if r.num_workers > 1 else "")
    )


def _sampler(spec) -> str:
    """The Optuna sampler with its options, what it hands to its fall-back, and the points enqueued first."""
    if spec.search.algorithm == "grid":
        return f"GridSampler over {spec.num_samples} grid points"
    from orchestrator.spec.samplers import sampler_plan

    plan = sampler_plan(spec)
    text = "; ".join([plan.line(), *plan.notes])
    n = len(spec.search.initial_points)
    text += f"; {n} initial point(s) run first" if n else ""
    warm = spec.search.warm_start_from
    return text + (f"; starts from the finished trials of sweep {warm!r}" if warm else "")
