"""The ablation spec: a full-factorial grid (`factors:`) and/or listed cells (`cells:`), each run
with seeds 0..N-1, translated into a grid SweepSpec and run by the sweep machinery (orchestrator.run).

Why a translation and not a second runner: resume, cluster addresses, resources, the placement
group reaper, the teacher cache and the MLflow parent/child layout come for free, and `report`
reads an ablation exactly like a sweep. The seed is one more grid entry (`seed`, the trainer's
seed); the grid runs every cell x seed once; early stopping is off unless the spec asks for it.
The parent run carries `xgd.layouts` (which paper tables `report` prints) and `xgd.ablation`.
The layout names are the report's (orchestrator.results.tables), so the caller passes them in:
orchestrator.run.ablate loads an ablation against them.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import Field

from orchestrator.errors import SpecError
from orchestrator.spec import space as S
from orchestrator.spec.load import Strict, canonical, validate
from orchestrator.spec.sweep import SweepSpec, apply_sweep_overrides, parse_sweep_spec
from orchestrator.tracking import tags as T

SEED = "seed"  # the grid entry that carries the trainer's seed
# Top-level keys passed to the sweep spec as they are; the rest are the ablation's own.
SWEEP_KEYS = (
    "name",
    "results",
    "storage_path",
    "train",
    "teacher",
    "students",
    "objective",
    "early_stopping",
    "resources",
    "mlflow",
)
NOT_IN_ABLATIONS = {
    "space": "an ablation has no search space: use factors: (full factorial) or cells: (listed)",
    "search": "an ablation always runs its grid once (every cell x seed): remove search:",
    "tags": f"an ablation sets the parent run's tags itself ({T.LAYOUTS} from layouts:)",
}
DEFAULT_LAYOUTS = ("summary", "per_class")


class AblationPart(Strict):
    """The keys a sweep spec does not have."""

    seeds: int = Field(1, ge=1, le=1000)
    factors: dict[str, list[S.Scalar]] = Field(default_factory=dict)
    cells: list[dict[str, S.Scalar]] | None = None
    layouts: list[str] | None = None


@dataclass
class Ablation:
    sweep: SweepSpec  # what runs
    seeds: int
    factors: dict[str, list]
    cells: list[dict] | None
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
                factors[key[len("factors.") :]] = yaml.safe_load(value)
            except yaml.YAMLError:
                raise SpecError(
                    f"--set {item!r}: the value is not YAML; give a list like [gradcam, layercam]"
                ) from None
        else:
            rest.append(item)
    return apply_sweep_overrides(raw, rest)


def parse_ablation_spec(raw: dict[str, Any], known_layouts: Collection[str]) -> Ablation:
    """The ablation and the grid sweep that runs it; `known_layouts`: the report tables `layouts:` may name."""
    raw = copy.deepcopy(raw)
    _check_keys(raw)
    part = validate(AblationPart, {k: raw.pop(k) for k in list(AblationPart.model_fields) if k in raw})
    _check_factors(part)
    if not part.factors and part.cells is None:
        raise SpecError(
            "factors: an ablation needs factors: {key: [values]} (full factorial) and/or "
            "cells: [{key: value, ...}, ...] (listed cells), e.g. factors: {distill.cam: [gradcam, layercam]}"
        )
    train = raw.get("train")
    if isinstance(train, dict) and SEED in train:
        raise SpecError("train.seed: an ablation runs seeds 0..N-1 in every cell; set seeds: N instead")
    layouts = part.layouts if part.layouts is not None else _default_layouts(part)
    _check_layouts(layouts, known_layouts)
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
    out["tags"] = {
        T.LAYOUTS: ",".join(layouts),
        T.ABLATION: "cells" if part.cells is not None else "factorial",
        T.SEEDS: str(part.seeds),
    }
    labels = [c[S.LABEL] for c in part.cells or [] if S.LABEL in c]
    if labels:  # the report's row order
        out["tags"][T.LABELS] = json.dumps(labels)
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


def _check_layouts(layouts: list[str], known: Collection[str]) -> None:
    if not layouts:
        raise SpecError(f"layouts: give at least one of {', '.join(known)}")
    for name in layouts:
        if name not in known:
            raise SpecError(f"layouts: {name!r} is not a report layout; allowed: {', '.join(known)}")


def _ablation_words(msg: str) -> str:
    """Sweep-spec errors about the generated space, in the ablation's own keys."""
    if msg.startswith(f"space.{SEED}"):
        return "seeds" + msg[len(f"space.{SEED}") :]
    if msg.startswith("space."):
        return "factors." + msg[len("space.") :]
    if msg.startswith("space:"):
        return "factors:" + msg[len("space:") :]
    return msg
