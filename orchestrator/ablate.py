"""Ablations: a full-factorial grid (`factors:`) and/or listed cells (`cells:`), each run with
seeds 0..N-1, translated into a grid SweepSpec and run by the sweep machinery (orchestrator.sweep).

Why a translation and not a second runner: resume, cluster addresses, resources, the placement
group reaper, the teacher cache and the MLflow parent/child layout come for free, and `report`
reads an ablation exactly like a sweep. The seed is one more grid entry (`seed`, the trainer's
seed); the grid runs every cell x seed once; early stopping is off unless the spec asks for it.
The parent run carries `xgd.layouts` (which paper tables `report` prints) and `xgd.ablation`.
"""
from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field

from orchestrator import space as S
from orchestrator.specs import SpecError, Strict, read_yaml, validate
from orchestrator.sweep_spec import SweepSpec, apply_sweep_overrides, canonical, parse_sweep_spec

SEED = "seed"  # the grid entry that carries the trainer's seed
# Top-level keys passed to the sweep spec as they are; the rest are the ablation's own.
SWEEP_KEYS = ("name", "results", "storage_path", "train", "teacher", "students", "objective", "early_stopping",
              "resources", "mlflow")
NOT_IN_ABLATIONS = {"space": "an ablation has no search space: use factors: (full factorial) or cells: (listed)",
                    "search": "an ablation always runs its grid once (every cell x seed): remove search:",
                    "tags": "an ablation sets the parent run's tags itself (xgd.layouts from layouts:)"}
DEFAULT_LAYOUTS = ("summary", "per_class")


class AblationPart(Strict):
    """The keys a sweep spec does not have."""

    seeds: int = Field(1, ge=1, le=1000)
    factors: dict[str, list[S.Scalar]] = Field(default_factory=dict)
    cells: Optional[list[dict[str, S.Scalar]]] = None
    layouts: Optional[list[str]] = None


@dataclass
class Ablation:
    sweep: SweepSpec  # what runs
    seeds: int
    factors: dict[str, list]
    cells: Optional[list[dict]]
    layouts: list[str]

    @property
    def kind(self) -> str:
        return "cells" if self.cells is not None else "factorial"

    def cell_points(self) -> list[dict[str, Any]]:
        """Every cell (factor combinations crossed with listed cells), without seeds."""
        space = {k: v for k, v in self.sweep.space.items() if k != SEED}
        points = S.grid_points(space) if space else [{}]
        return [{**c, **p} for c in (self.cells or [{}]) for p in points]


# ------------------------------------------------------------------ loading


def load_ablation(path: str | Path, overrides: Optional[list[str]] = None) -> Ablation:
    raw = apply_ablation_overrides(read_yaml(path), overrides or [])
    return parse_ablation(raw)


def apply_ablation_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set factors.<dotted key>=[...]` replaces one factor's values; everything else as for
    sweeps (trainer sections such as data.root=... go to train:)."""
    rest = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.startswith("factors.") and len(key) > len("factors."):
            factors = raw.setdefault("factors", {})
            if not isinstance(factors, dict):
                raise SpecError(f"--set {item!r}: 'factors' is not a mapping")
            try:
                factors[key[len("factors."):]] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise SpecError(f"--set {item!r}: the value is not YAML; give a list like [gradcam, layercam]") from None
        else:
            rest.append(item)
    return apply_sweep_overrides(raw, rest)


def parse_ablation(raw: dict[str, Any]) -> Ablation:
    raw = copy.deepcopy(raw)
    _check_keys(raw)
    part = validate(AblationPart, {k: raw.pop(k) for k in list(AblationPart.model_fields) if k in raw})
    _check_factors(part)
    if not part.factors and part.cells is None:
        raise SpecError("factors: an ablation needs factors: {key: [values]} (full factorial) and/or "
                        "cells: [{key: value, ...}, ...] (listed cells), e.g. factors: {distill.cam: [gradcam, layercam]}")
    train = raw.get("train")
    if isinstance(train, dict) and SEED in train:
        raise SpecError(f"train.seed: an ablation runs seeds 0..N-1 in every cell; set seeds: N instead")
    layouts = part.layouts if part.layouts is not None else _default_layouts(part)
    _check_layouts(layouts)
    sweep_raw = to_sweep_raw(raw, part, layouts)
    try:
        spec = parse_sweep_spec(sweep_raw)
    except SpecError as e:
        raise SpecError(_ablation_words(str(e))) from None
    return Ablation(spec, part.seeds, dict(part.factors), part.cells, layouts)


def to_sweep_raw(raw: dict[str, Any], part: AblationPart, layouts: list[str]) -> dict[str, Any]:
    """The grid sweep spec (as a raw dict) that runs this ablation."""
    out = {k: copy.deepcopy(raw[k]) for k in SWEEP_KEYS if k in raw}
    out["space"] = {k: {"type": "grid", "values": list(v)} for k, v in part.factors.items()}
    out["space"][SEED] = {"type": "grid", "values": list(range(part.seeds))}
    out["cells"] = copy.deepcopy(part.cells)
    out["search"] = {"algorithm": "grid", "seed": 0}
    out.setdefault("early_stopping", {"kind": "none"})
    out["tags"] = {"xgd.layouts": ",".join(layouts), "xgd.ablation": "cells" if part.cells is not None else "factorial",
                   "xgd.seeds": str(part.seeds)}
    labels = [c[S.LABEL] for c in part.cells or [] if S.LABEL in c]
    if labels:  # the report's row order
        out["tags"]["xgd.labels"] = json.dumps(labels)
    return out


def _check_keys(raw: dict[str, Any]) -> None:
    for key in raw:
        if key in NOT_IN_ABLATIONS:
            raise SpecError(f"{key}: {NOT_IN_ABLATIONS[key]}")
        allowed = [*SWEEP_KEYS, *AblationPart.model_fields]
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            raise SpecError(f"unknown key {key!r}; {hint}")


def _check_factors(part: AblationPart) -> None:
    for key, values in part.factors.items():
        if key == SEED:
            raise SpecError("factors.seed: seeds are set with seeds: N (values 0..N-1)")
        if not values:
            raise SpecError(f"factors.{key}: give at least one value")
        if len({canonical(v) for v in values}) != len(values):
            raise SpecError(f"factors.{key}: a value is listed twice in {values}")
    for i, cell in enumerate(part.cells or []):
        if SEED in cell:
            raise SpecError(f"cells[{i}].seed: seeds are set with seeds: N (values 0..N-1)")
        for key in cell:
            if key in part.factors:
                raise SpecError(f"cells[{i}].{key}: also a factor; a key is either listed per cell or a factor")


def _default_layouts(part: AblationPart) -> list[str]:
    keys = set(part.factors) | {k for c in part.cells or [] for k in c}
    return [*DEFAULT_LAYOUTS, "timing"] if "distill.cam" in keys else list(DEFAULT_LAYOUTS)


def _check_layouts(layouts: list[str]) -> None:
    from orchestrator.tables import LAYOUTS

    if not layouts:
        raise SpecError(f"layouts: give at least one of {', '.join(LAYOUTS)}")
    for name in layouts:
        if name not in LAYOUTS:
            raise SpecError(f"layouts: {name!r} is not a report layout; allowed: {', '.join(LAYOUTS)}")


def _ablation_words(msg: str) -> str:
    """Sweep-spec errors about the generated space, in the ablation's own keys."""
    if msg.startswith(f"space.{SEED}"):
        return "seeds" + msg[len(f"space.{SEED}"):]
    if msg.startswith("space."):
        return "factors." + msg[len("space."):]
    if msg.startswith("space:"):
        return "factors:" + msg[len("space:"):]
    return msg


# ------------------------------------------------------------------ dry run


def render(ab: Ablation):
    """The cells, seeds and the sweep's resources/teacher/storage; starts nothing."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    from orchestrator.dry_run import render as render_sweep

    spec = ab.sweep
    points = ab.cell_points()
    keys = list(dict.fromkeys(k for p in points for k in p))
    base = spec.base_config()
    cells = Table()
    cells.add_column("#", justify="right")
    for k in keys:
        cells.add_column(k, overflow="fold")
    for i, p in enumerate(points):
        cells.add_row(str(i), *(escape(str(p[k])) if k in p else f"[dim]{escape(_base_value(base, k))}[/]"
                                for k in keys))
    title = Text(f"ablation {spec.name} ({ab.kind}): {len(points)} cells x {ab.seeds} seed(s) "
                 f"(0..{ab.seeds - 1}, the trainer's seed) = {spec.num_samples} trials", style="bold")
    notes = Text(f"dim: the value from train:, not set by the cell; report layouts: {', '.join(ab.layouts)}")
    info = render_sweep(spec).renderables[1]  # the sweep's objective/resources/teacher/storage rows
    students = {k: m.model_dump() for k, m in spec.students.items()}
    first = S.resolve(spec.base_config(), points[0], students)
    return Group(title, cells, notes, info, Text(f"first cell's trainer config: model {first['model']}, distill {first['distill']}", style="dim"),
                 Text("dry run: nothing was started", style="bold green"))


def _base_value(base: dict, key: str) -> str:
    if key == S.STUDENT:
        return "train.model"
    if key == S.LABEL:
        return "-"
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node)
