"""`confirm SWEEP`: rerun a sweep's best configurations and some baselines with the same fresh
seeds, as an ablation (orchestrator.spec.ablation) under one parent run linked to the source sweep.

The source is read from MLflow only: its parent run's `sweep.yaml` (the spec it ran, resolved)
and its trial runs. Trials that finished every epoch (status FINISHED; stopped, failed and
interrupted ones are left out) are ranked by the sweep's first objective, or, with `pareto`, its
Pareto front is taken; the top K distinct configurations become listed cells (`top 1`, `top 2`,
...) holding the active search-space entries of their trial. Each baseline is one more cell,
`distill.method: <m>` on the best configuration's student with the sweep's `train:` settings
(so every configuration is compared with the same baseline trials). Every cell runs the same N
seeds, drawn from the confirmation's name (the same name gives the same seeds, so `--resume`
continues the same design) and never the source's own seed. The ablation keeps the sweep's
resources, teacher (its cache), results, storage and objective, and runs without early stopping.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import UserError
from orchestrator.results.confirm import BASELINE, CONFIG
from orchestrator.results.pareto import pareto_front
from orchestrator.run.ablate import parse_ablation
from orchestrator.spec import space as S
from orchestrator.spec.ablation import SEED, Ablation, apply_ablation_overrides
from orchestrator.tracking import reader
from orchestrator.tracking import tags as T

SUFFIX = "-confirm"  # default name: <source>-confirm
SPEC_ARTIFACT = "sweep.yaml"  # the spec the sweep ran, on its parent run (orchestrator.tracking.writer)
# What the confirmation takes from the source spec (not: space, search, early stopping, cells, tags).
KEPT = ("results", "storage_path", "train", "teacher", "students", "objective", "resources", "mlflow")
NOT_SET = {"seeds": "--seeds N", "cells": "--top K and --baseline", "factors": "--top K and --baseline"}
SEED_RANGE = (1, 100_000)
MAX_TAG = 8000  # MLflow's longest tag value


@dataclass
class Pick:
    label: str  # the report row
    role: str  # config | baseline
    point: dict[str, Any]  # the cell's settings (dotted trainer keys, `student`)
    trial: str | None = None  # the source trial it came from
    value: float | None = None  # its objective value in the source sweep


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


def fresh_seeds(name: str, n: int, exclude: set[int] = frozenset()) -> list[int]:
    """n distinct trainer seeds drawn from `name` (the same name, the same seeds; the first n of
    n + 1 are the n), none of them in `exclude`."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"xgd confirm {name}".encode()).digest()[:8], "big"))
    seeds: list[int] = []
    while len(seeds) < n:
        s = rng.randrange(*SEED_RANGE)
        if s not in exclude and s not in seeds:
            seeds.append(s)
    return seeds


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
    picks, notes = _configs(rows, space, top, metric)
    picks += _baselines(baselines or [], picks[0].point)
    raw = _ablation_raw(raw_spec, source, uri, picks, overrides or [])
    exclude = {int(raw_spec.get("train", {}).get("seed", 0))}
    exclude |= {int(v) for v in (space[SEED].discrete_values() or [])} if SEED in space else set()
    ab = parse_ablation(raw)
    chosen = fresh_seeds(ab.sweep.name, seeds, exclude)
    tags = {
        T.SEEDS: str(seeds),
        T.CONFIRM_SOURCE: source,
        T.CONFIRM_SOURCE_RUN: sweep.parent.info.run_id,
        T.CONFIRM_SEEDS: ",".join(map(str, chosen)),
        T.CONFIRM_CELLS: _cells_tag(picks),
    }
    ab.sweep = ab.sweep.model_copy(
        update={
            "space": {**ab.sweep.space, SEED: S.Param(type="grid", values=chosen)},
            "tags": {**ab.sweep.tags, **tags},
        }
    )
    ab.seeds = seeds
    return Plan(ab, source, sweep.parent.info.run_id, metric, picks, chosen, notes)


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


def _baselines(methods: list[str], best: dict[str, Any]) -> list[Pick]:
    from trainables.losses.methods import METHODS

    out = []
    for m in dict.fromkeys(methods):
        if m not in METHODS:
            raise UserError(f"--baseline {m!r} is not a distillation method; allowed: {', '.join(METHODS)}")
        point = {"distill.method": m}
        if S.STUDENT in best:
            point = {S.STUDENT: best[S.STUDENT], **point}
        out.append(Pick(f"{m} baseline", BASELINE, point))
    return out


def _ablation_raw(spec: dict, source: str, uri: str, picks: list[Pick], overrides: list[str]) -> dict:
    raw = {k: spec[k] for k in KEPT if spec.get(k) is not None}
    raw["name"] = f"{source}{SUFFIX}"
    raw["train"] = {k: v for k, v in (raw.get("train") or {}).items() if k not in (SEED, "name", "teacher")}
    raw["mlflow"] = {**(raw.get("mlflow") or {}), "tracking_uri": uri}  # the store the source was read from
    raw["seeds"] = 1  # the seeds are set after parsing (fresh ones, not 0..N-1)
    raw["cells"] = [{S.LABEL: p.label, **p.point} for p in picks]
    raw["layouts"] = ["summary"]
    for item in overrides:
        key = item.partition("=")[0].split(".")[0]
        if key in NOT_SET:
            raise UserError(f"--set {item!r}: confirm sets {key} itself; use {NOT_SET[key]}")
    return apply_ablation_overrides(raw, overrides)


def _cells_tag(picks: list[Pick]) -> str:
    cells = [{"label": p.label, "role": p.role, "trial": p.trial, "value": p.value, "point": p.point} for p in picks]
    text = json.dumps(cells, default=str)
    if len(text) > MAX_TAG:  # many configurations: the settings stay in the trials' params
        text = json.dumps([{k: c[k] for k in ("label", "role", "trial")} for c in cells])
    return text


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
    for col in ("cell", "role", "source trial", plan.metric, "settings"):
        cells.add_column(col, overflow="fold")
    for p in plan.picks:
        value = "" if p.value is None else f"{p.value:.4f}"
        settings = ", ".join(f"{k}={v}" for k, v in p.point.items())
        cells.add_row(escape(p.label), p.role, p.trial or "", value, escape(settings))
    title = Text(
        f"{len(plan.picks)} cells x {len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) "
        f"= {spec.num_samples} trials; baselines use the sweep's train: settings",
        style="bold",
    )
    info = render_sweep(spec).renderables[1]
    notes = [Text(n, style="yellow") for n in plan.notes]
    return Group(cells, title, *notes, info, Text("dry run: nothing was started", style="bold green"))
