"""`confirm SWEEP`: rerun a sweep's best configurations and some baselines with the same fresh
seeds, as an ablation (orchestrator.spec.ablation) under one parent run linked to the source sweep.

The source is read from MLflow only: its parent run's `sweep.yaml` (the spec it ran, resolved)
and its trial runs. Trials that finished every epoch (status FINISHED; stopped, failed and
interrupted ones are left out) are ranked by the sweep's first objective, or, with `pareto`, its
Pareto front is taken; the top K distinct configurations become listed cells (`top 1`, `top 2`,
...) holding the active search-space entries of their trial. Each configuration gets its own
baselines (orchestrator.run.confirm_design): `distill.method: <m>` on the configuration's point,
keeping its student, its non-distill settings and the distill settings m reads (a PI baseline
keeps a tuned alpha and tau), so "configuration minus baseline" differs in the method's extra
terms only; an XGD configuration also gets its point with beta = 0. Identical cells run once and
each cell lists what it is compared with (`against`). Every cell runs the same N seeds, drawn
from the confirmation's name (the same name gives the same seeds, so `--resume` continues the
same design) and never the source's own seed. The ablation keeps the sweep's resources, teacher
(its cache), results, storage and objective, and runs without early stopping.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.results.confirm import CONFIG
from orchestrator.results.pareto import pareto_front
from orchestrator.run.confirm_design import BETA, METHOD, Pick, confirmation_ablation, design, fresh_seeds
from orchestrator.spec import space as S
from orchestrator.spec.ablation import SEED, Ablation
from orchestrator.tracking import reader
from orchestrator.tracking import tags as T

__all__ = ["Pick", "Plan", "fresh_seeds", "plan_confirmation", "point_of", "rank", "render", "source_spec"]

SUFFIX = "-confirm"  # default name: <source>-confirm
SPEC_ARTIFACT = "sweep.yaml"  # the spec the sweep ran, on its parent run (orchestrator.tracking.writer)


@dataclass
class Plan:
    ablation: Ablation
    source: str
    source_run: str
    metric: str
    picks: list[Pick]
    seeds: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.ablation.sweep.name


# ------------------------------------------------------------------ the source


def source_spec(client, sweep: reader.Sweep) -> dict[str, Any]:
    """The spec the source sweep ran (its parent run's sweep.yaml), as a raw dict."""
    tags = sweep.parent.data.tags
    if T.ABLATION in tags:
        raise UserError(
            f"{sweep.name!r} is an ablation (or a confirmation): its cells and seeds are already fixed; "
            "confirm reruns the best configurations of a search (a sweep)"
        )
    text = reader.sweep_spec_text(client, sweep)
    if text is None:
        raise UserError(
            f"sweep {sweep.name!r} (run {sweep.parent.info.run_id}): cannot read its {SPEC_ARTIFACT} artifact; "
            "confirm needs the spec the sweep ran"
        )
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict):
        raise UserError(f"sweep {sweep.name!r}: its {SPEC_ARTIFACT} artifact is not a sweep spec")
    return raw


def _objectives(raw: dict) -> list[dict]:
    obj = raw.get("objective") or {"metric": "val_miou", "mode": "max"}
    return obj if isinstance(obj, list) else [obj]


def rank(rows: list[dict], objectives: list[dict], top: int | None, pareto: bool) -> list[dict]:
    """Finished trials holding every objective, best first by the first objective; the top K, or
    with `pareto` the front (its best K when `top` is given)."""
    metrics = [o["metric"] for o in objectives]
    keep = [r for r in rows if r.get("status") == "FINISHED" and all(_finite(r.get(m)) for m in metrics)]
    first = objectives[0]
    keep.sort(key=lambda r: -r[first["metric"]] if first["mode"] == "max" else r[first["metric"]])
    if pareto:
        front = set(pareto_front([[r[m] for m in metrics] for r in keep], [o["mode"] for o in objectives]))
        keep = [r for i, r in enumerate(keep) if i in front]
    return keep if top is None else keep[:top]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def point_of(row: dict, space: dict[str, S.Param]) -> dict[str, Any]:
    """The trial's values of the space's entries that were active for it (its `when`s hold)."""
    point: dict[str, Any] = {}
    for name in S.ordered(space):
        value = row.get(reader.PARAM + name)
        if value is not None and space[name].active(point):
            point[name] = _typed(space[name], value)
    return point


def _typed(param: S.Param, value):
    """A value read back from an MLflow param, as the space wrote it (choice values keep their type)."""
    for v in param.discrete_values() or []:
        if str(v) == str(value) or v == value:
            return v
    return value


# ------------------------------------------------------------------ the plan


def plan_confirmation(
    client,
    source: str,
    *,
    uri: str,
    top: int | None = 1,
    seeds: int = 5,
    baselines: list[str] | None = None,
    pareto: bool = False,
    overrides: list[str] | None = None,
    beta0: bool = True,
) -> Plan:
    """The ablation that confirms `source`: cells, seeds and tags; starts nothing."""
    sweep = reader.find_sweep(client, source)
    raw_spec = source_spec(client, sweep)
    objectives = _objectives(raw_spec)
    if pareto and len(objectives) < 2:
        raise UserError(f"--pareto: sweep {source!r} has one objective ({objectives[0]['metric']}); drop --pareto")
    space = {k: S.Param.model_validate(v) for k, v in raw_spec["space"].items()}
    table = reader.trials_table(client, sweep)
    rows = rank(table.to_pylist(), objectives, None, pareto)  # top K after duplicates are merged
    metric = objectives[0]["metric"]
    if not rows:
        raise UserError(
            f"sweep {source!r} has no trial that finished every epoch with {metric!r} "
            "(stopped, failed and interrupted trials are left out)"
        )
    configs, notes = _configs(rows, space, top, metric)
    picks, pairs, more = design(configs, baselines or [], beta0=beta0, defaults=_distill_defaults(raw_spec))
    exclude = {int(raw_spec.get("train", {}).get("seed", 0))}
    exclude |= {int(v) for v in (space[SEED].discrete_values() or [])} if SEED in space else set()
    tags = {T.CONFIRM_SOURCE: source, T.CONFIRM_SOURCE_RUN: sweep.parent.info.run_id}
    built = confirmation_ablation(
        raw_spec,
        f"{source}{SUFFIX}",
        picks,
        pairs,
        uri=uri,
        seeds=seeds,
        exclude=exclude,
        overrides=overrides or [],
        tags=tags,
    )
    notes += more + built.notes
    return Plan(built.ablation, source, sweep.parent.info.run_id, metric, built.picks, built.seeds, notes)


def _distill_defaults(raw_spec: dict) -> dict[str, Any]:
    """distill.method and distill.beta of a point that does not set them: the sweep's train:, else the trainer's."""
    from orchestrator.spec.train import DistillSpec

    distill = (raw_spec.get("train") or {}).get("distill") or {}
    return {
        key: distill.get(key.split(".")[1], DistillSpec.model_fields[key.split(".")[1]].default)
        for key in (METHOD, BETA)
    }


def _configs(rows: list[dict], space: dict[str, S.Param], top: int | None, metric: str):
    picks: list[Pick] = []
    seen: set[str] = set()
    for r in rows:
        point = point_of(r, space)
        key = json.dumps(point, sort_keys=True, default=str)
        if key in seen:  # the searcher proposed the same configuration twice: confirm it once
            continue
        seen.add(key)
        picks.append(Pick(f"top {len(picks) + 1}", CONFIG, point, r.get("trial_id"), r.get(metric)))
        if top is not None and len(picks) == top:
            break
    notes = []
    if top is not None and len(picks) < top:
        notes.append(f"--top {top}: the sweep has {len(picks)} distinct finished configuration(s); confirming those")
    return picks, notes


# ------------------------------------------------------------------ dry run


def render(plan: Plan):
    """What the confirmation runs: its cells, seeds and the sweep's resources; starts nothing."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from orchestrator.run.dry_run import render as render_sweep

    spec = plan.ablation.sweep
    cells = Table(title=f"confirm {plan.source} -> {plan.name}", title_justify="left")
    for col in ("cell", "role", "source trial", plan.metric, "against", "settings"):
        cells.add_column(col, overflow="fold")
    for p in plan.picks:
        value = "" if p.value is None else f"{p.value:.4f}"
        settings = ", ".join(f"{k}={v}" for k, v in p.point.items())
        cells.add_row(escape(p.label), p.role, p.trial or "", value, escape("; ".join(p.against)), escape(settings))
    title = Text(
        f"{len(plan.picks)} cells x {len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) "
        f"= {spec.num_samples} trials; against: the cells each one is compared with (it minus each). "
        "A baseline keeps its configuration's student, non-distill settings and the distill settings "
        "its method reads; every cell takes the rest from the sweep's train: settings",
        style="bold",
    )
    info = render_sweep(spec).renderables[1]
    notes = [Text(n, style="yellow") for n in plan.notes]
    return Group(cells, title, *notes, info, Text("dry run: nothing was started", style="bold green"))
