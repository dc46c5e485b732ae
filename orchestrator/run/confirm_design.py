"""The cells of a confirmation, what each is compared with, and the ablation that runs them.

A baseline isolates what a configuration's method adds only if everything else is held, so a
baseline cell takes from the configuration it serves its student, every non-distill setting of
its point (optim.lr if it was searched, ...) and every distill setting the baseline's method
reads; the distill settings it does not read are left out, so baselines of configurations that
differ only there are one cell. What a method reads (trainables.losses.methods): the keys READS
names for its terms, each term's own distill.weights entry, and the baselines' hyperparameters
(distill.weights.<baseline>_...) when it has that baseline's terms. A configuration whose method
has the saliency term `sa` (xgd, xgd+*) also gets its own point with distill.beta = 0, the term's
own ablation: a term of weight 0 is not active (trainables.losses.registry.active_terms), so no
CAM is computed and the teacher runs without a graph (trainables.step).

Identical points run once. Pairs are explicit: `against` of a cell lists the labels it is compared
with (this cell minus each), in the parent run's CONFIRM_CELLS tag. `confirmation_ablation` builds
the ablation from any cells and pairs (confirm's top K and their baselines, or one best per method).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.errors import UserError
from orchestrator.results.confirm import BASELINE
from orchestrator.run.ablate import parse_ablation
from orchestrator.spec import space as S
from orchestrator.spec.ablation import SEED, Ablation, apply_ablation_overrides
from orchestrator.tracking import tags as T

DISTILL = "distill."
METHOD = "distill.method"
BETA = "distill.beta"
SALIENCY = "sa"  # the term XGD adds; its weight is distill.beta
# What the ablation takes from the source spec (not: space, search, early stopping, cells, tags).
KEPT = ("results", "storage_path", "train", "teacher", "students", "objective", "resources", "mlflow")
NOT_SET = {"seeds": "--seeds N", "cells": "--top K and --baseline", "factors": "--top K and --baseline"}
SEED_RANGE = (1, 100_000)
MAX_TAG = 8000  # MLflow's longest tag value
TAG_CORE = ("label", "role", "trial", "against", "model")  # what the tag keeps when the points do not fit


@dataclass
class Pick:
    label: str  # the report row
    role: str  # config | baseline
    point: dict[str, Any]  # the cell's settings (dotted trainer keys, `student`)
    trial: str | None = None  # the source trial it came from
    value: float | None = None  # its objective value in the source sweep
    against: list[str] = field(default_factory=list)  # labels this cell is compared with (this minus each)


@dataclass
class Built:
    ablation: Ablation
    picks: list[Pick]  # the cells, each with its `against`
    seeds: list[int]
    notes: list[str]


def fresh_seeds(name: str, n: int, exclude: Collection[int] = frozenset()) -> list[int]:
    """n distinct trainer seeds drawn from `name` (the same name, the same seeds; the first n of
    n + 1 are the n), none of them in `exclude`."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"xgd confirm {name}".encode()).digest()[:8], "big"))
    seeds: list[int] = []
    while len(seeds) < n:
        s = rng.randrange(*SEED_RANGE)
        if s not in exclude and s not in seeds:
            seeds.append(s)
    return seeds


def key_of(point: Mapping[str, Any]) -> str:
    """Two cells with the same key are the same cell (the label is not a setting)."""
    return json.dumps({k: v for k, v in point.items() if k != S.LABEL}, sort_keys=True, default=str)


# ------------------------------------------------------------------ what a method reads


def reads(method: str, key: str) -> bool:
    """Whether `method` reads the distill key `key` (dotted, without `distill.`); a key this
    cannot place (an unknown distill.weights entry) counts as read, so it is kept."""
    from trainables.losses.hyperparams import HYPERPARAMS
    from trainables.losses.methods import BASELINES, METHODS, READS, XGD

    terms = set(METHODS[method])
    known = {k for keys in READS.values() for k in keys}
    if key in known:
        return any(key in READS.get(t, ()) for t in terms)
    head, _, name = key.partition(".")
    if head != "weights" or not name:
        return True
    if name in {t for ts in METHODS.values() for t in ts}:
        return name in terms
    if name in HYPERPARAMS:
        owners = [b for b in BASELINES if name.startswith(b + "_")]
        if owners:
            own = set(BASELINES[max(owners, key=len)]) - set(XGD["xgd"])
            return bool(own & terms)
    return True


def baseline_point(point: Mapping[str, Any], method: str) -> dict[str, Any]:
    """`method` on the configuration `point`: its student and non-distill settings, and the
    distill settings `method` reads."""
    out = {k: v for k, v in point.items() if k not in (METHOD, S.LABEL)}
    out = {k: v for k, v in out.items() if not k.startswith(DISTILL) or reads(method, k[len(DISTILL) :])}
    return {**out, METHOD: method}


def has_saliency(method: str) -> bool:
    from trainables.losses.methods import METHODS

    return SALIENCY in METHODS.get(method, ())


def beta0_point(point: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The point with the saliency term off (distill.beta = 0); None when its method has no
    saliency term or its beta is 0 already. `defaults`: distill.method and distill.beta of a
    point that does not set them (the sweep's train: settings)."""
    method, beta = (point.get(k, (defaults or {}).get(k)) for k in (METHOD, BETA))
    if not has_saliency(str(method)) or beta in (0, 0.0):
        return None
    return {**{k: v for k, v in point.items() if k != S.LABEL}, BETA: 0.0}


# ------------------------------------------------------------------ cells and pairs


def design(
    configs: Sequence[Pick], baselines: Sequence[str], *, beta0: bool = True, defaults: Mapping[str, Any] | None = None
) -> tuple[list[Pick], list[tuple[str, str]], list[str]]:
    """Configurations, their beta = 0 cells and their baselines: (cells, pairs (cell, against), notes).
    `defaults`: distill.method and distill.beta of a point that does not set them."""
    from trainables.losses.methods import METHODS

    for m in baselines:
        if m not in METHODS:
            raise UserError(f"--baseline {m!r} is not a distillation method; allowed: {', '.join(METHODS)}")
    defaults = defaults or {}

    def key(point: Mapping[str, Any]) -> str:  # the settings that train: those its method reads
        m = point.get(METHOD, defaults.get(METHOD))
        return key_of(baseline_point(point, str(m)) if m in METHODS else point)

    configs = [replace(c, against=[]) for c in configs]
    cells = list(configs)
    by_key: dict[str, Pick] = {}
    for c in cells:
        by_key.setdefault(key(c.point), c)
    served: dict[int, list[str]] = {}  # id of a baseline cell made here -> the configurations it serves
    pairs: list[tuple[Pick, Pick]] = []
    notes: list[str] = []

    def add(cfg: Pick, point: dict, label: str, what: str, baseline: bool) -> None:
        other = by_key.get(key(point))
        if other is cfg:
            notes.append(f"{cfg.label}: its {what} is the configuration itself; no pair")
            return
        if other is None:
            other = by_key[key(point)] = Pick(label, BASELINE, point)
            cells.append(other)
            if baseline:
                served[id(other)] = []
        served.get(id(other), []).append(cfg.label)
        pairs.append((cfg, other))

    for cfg in configs:
        p = beta0_point(cfg.point, defaults) if beta0 else None
        if p is not None:
            add(cfg, p, f"{cfg.label}, beta=0", "beta = 0 cell", False)
    for m in dict.fromkeys(baselines):
        for cfg in configs:
            add(cfg, baseline_point(cfg.point, m), f"{m} baseline", f"{m} baseline", True)
    for cell in cells:  # a baseline is labelled by the configurations it serves
        if served.get(id(cell)):
            cell.label = f"{cell.label} ({', '.join(served[id(cell)])})"
    return cells, [(a.label, b.label) for a, b in pairs], notes


# ------------------------------------------------------------------ the ablation


def confirmation_ablation(
    spec: Mapping[str, Any],
    name: str,
    picks: Sequence[Pick],
    pairs: Sequence[tuple[str, str]],
    *,
    uri: str,
    seeds: int,
    exclude: Collection[int] = (),
    overrides: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
) -> Built:
    """The ablation running every cell of `picks` on the same `seeds` fresh seeds (drawn from its
    name, none in `exclude`), with `spec`'s KEPT settings (a raw sweep spec), named `name` unless
    --set name= says otherwise; `pairs` (cell, against) become the cells' `against`. A pair whose
    cells resolve to different student models is noted and stays visible in the tag's `model`."""

    labels = [p.label for p in picks]
    against: dict[str, list[str]] = {label: [] for label in labels}
    for a, b in pairs:
        if a not in against or b not in against or a == b:
            raise UserError(f"pair ({a!r}, {b!r}): give two different cells of {labels}")
        if b not in against[a]:
            against[a].append(b)
    picks = [replace(p, point=dict(p.point), against=against[p.label]) for p in picks]
    raw = _ablation_raw(spec, name, uri, picks, list(overrides))
    ab = parse_ablation(raw)
    models = _models(ab, picks)
    notes = [
        f"{a} vs {b}: different students ({_model_text(models[a])} vs {_model_text(models[b])})"
        for a, bs in against.items()
        for b in bs
        if models[a] != models[b]
    ]
    chosen = fresh_seeds(ab.sweep.name, seeds, set(exclude))
    tags = {
        **(tags or {}),
        T.SEEDS: str(seeds),
        T.CONFIRM_SEEDS: ",".join(map(str, chosen)),
        T.CONFIRM_CELLS: cells_tag(picks, models),
    }
    ab.sweep = ab.sweep.model_copy(
        update={
            "space": {**ab.sweep.space, SEED: S.Param(type="grid", values=chosen)},
            "tags": {**ab.sweep.tags, **tags},
        }
    )
    ab.seeds = seeds
    return Built(ab, picks, chosen, notes)


def _ablation_raw(spec: Mapping, name: str, uri: str, picks: Sequence[Pick], overrides: list[str]) -> dict:
    raw = {k: spec[k] for k in KEPT if spec.get(k) is not None}
    raw["name"] = name
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


def _models(ab: Ablation, picks: Sequence[Pick]) -> dict[str, dict]:
    """Each cell's student model as it will train (after --set)."""
    base, students = ab.sweep.base_config(), {k: m.model_dump() for k, m in ab.sweep.students.items()}
    return {p.label: S.resolve(base, p.point, students)["model"] for p in picks}


def _model_text(model: Mapping) -> str:
    return "/".join(str(model.get(k)) for k in ("arch", "encoder", "encoder_weights") if model.get(k) is not None)


def cells_tag(picks: Sequence[Pick], models: Mapping[str, Mapping]) -> str:
    """CONFIRM_CELLS: label, role, source trial and value, against, model and point of every cell;
    without the points when that would not fit in a tag (the settings stay in the trials' params)."""
    cells = [
        {
            "label": p.label,
            "role": p.role,
            "trial": p.trial,
            "value": p.value,
            "against": p.against,
            "model": _model_text(models[p.label]),
            "point": p.point,
        }
        for p in picks
    ]
    text = json.dumps(cells, default=str)
    if len(text) > MAX_TAG:
        text = json.dumps([{k: c[k] for k in TAG_CORE} for c in cells])
    return text
