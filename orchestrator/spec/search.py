"""The `search:` section and `constraints:` of a sweep spec: the sampler, its warm starts, the
budgets that stop a sweep early, and the feasibility constraints on reported metrics; and the
names of the metrics a trial reports, which objectives, constraints and stop rules may read.

Budgets (orchestrator.run.budgets applies them in the driver): `time_budget` is the wall time of
one driver run (a `--resume` gets its own), `stop_when` fires on a result reported in this
driver run, `max_failed_trials` counts the trials that failed in this driver run. A resumed
sweep may change them (orchestrator.run.storage.saved_spec): they never mislead the sampler.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from orchestrator.spec import space as S
from orchestrator.spec.load import Strict

# Metrics the trainer reports (trainables.loop); per-class IoUs and per-term losses by prefix.
METRICS = (
    "val_miou",
    "best_val_miou",
    "val_pixel_acc",
    "train_loss",
    "lr",
    "params",
    "gflops",
    "latency_ms",
    "step_time_s",
    "saliency_time_s",
    "epoch_time_s",
)
METRIC_PREFIXES = ("val_iou_", "train_")
# Reported once, at the end of a finished trial, for the tables; never something to select on.
HELD_OUT_PREFIX = "test_"
BUDGET_KEYS = ("time_budget", "stop_when", "max_failed_trials")  # may change on --resume


def check_metric(metric: str, what: str) -> None:
    """ValueError unless `metric` is reported by every trial while it trains (not a held-out one)."""
    if metric.startswith(HELD_OUT_PREFIX):
        raise ValueError(
            f"{what} metric {metric!r} is measured on the held-out test split, which search "
            f"and early stopping never see; select on val (e.g. {'val_' + metric[5:]!r})"
        )
    if metric not in METRICS and not metric.startswith(METRIC_PREFIXES):
        close = difflib.get_close_matches(metric, METRICS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(METRICS)}, val_iou_<c>, train_<term>"
        raise ValueError(f"{what} metric {metric!r} is not reported by the trainer; {hint}")


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def seconds(text: str | float) -> float:
    """`12h`, `1h30m`, `90s`, `2d` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION.match(str(text).strip().replace(" ", ""))
        if not m or not any(m.groups()):
            raise ValueError(f"{text!r} is not a duration; write e.g. 12h, 1h30m, 45m, 90s or a number of seconds")
        value = sum(float(g) * u for g, u in zip(m.groups(), _UNITS.values()) if g)
    if value <= 0:
        raise ValueError(f"{text!r}: a time budget must be longer than 0 s")
    return value


def real(value: Any) -> bool:
    """A reported value one can compare: a number, not a bool, not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def violation(value: Any, at_most: float | None, at_least: float | None) -> float:
    """Optuna's constraint convention: <= 0 feasible, > 0 by how much not; a value never reported is
    infeasible (inf)."""
    if not real(value):
        return float("inf")
    return float(value - at_most) if at_most is not None else float(at_least - value)


class StopWhen(Strict):
    """Stop the sweep once a trial reports `metric` at or past the bound: `{metric: val_miou, ">=": 0.6}`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    metric: str
    at_least: float | None = Field(None, alias=">=")
    at_most: float | None = Field(None, alias="<=")

    @model_validator(mode="after")
    def _check(self):
        check_metric(self.metric, "search.stop_when")
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError(f"give one bound: {{metric: {self.metric}, '>=': X}} or {{metric: ..., '<=': X}}")
        return self

    def met(self, value: Any) -> bool:
        if not real(value):
            return False
        return value >= self.at_least if self.at_least is not None else value <= self.at_most

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.at_least is not None else '<='} {self.bound:g}"

    @property
    def bound(self) -> float:
        return self.at_least if self.at_least is not None else self.at_most


class Constraint(Strict):
    """A feasibility bound on a reported metric, e.g. `{metric: latency_ms, max: 15}`."""

    metric: str
    max: float | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _check(self):
        check_metric(self.metric, "constraints")
        if (self.max is None) == (self.min is None):
            raise ValueError(f"give one bound: {{metric: {self.metric}, max: X}} or {{metric: {self.metric}, min: X}}")
        return self

    def violation(self, value: Any) -> float:
        return violation(value, self.max, self.min)

    def describe(self) -> str:
        bound = self.max if self.max is not None else self.min
        return f"{self.metric} {'<=' if self.max is not None else '>='} {bound:g}"


class SearchSpec(Strict):
    # Optuna's samplers (orchestrator.spec.samplers); grid walks the space's grid
    algorithm: Literal["tpe", "random", "grid", "qmc", "gp", "cmaes", "nsga2", "nsga3", "auto"] = "tpe"
    num_samples: int | None = Field(None, ge=1)  # default 10; grid: the grid size
    seed: int = 0
    n_startup_trials: int | None = Field(None, ge=1)  # random start-up of tpe, gp, cmaes (Optuna's defaults)
    sampler_options: dict[str, Any] = Field(default_factory=dict)  # passed to the Optuna sampler, checked
    # points the study runs first (enqueued before the sampler's own), each a {space key: value}
    initial_points: list[dict[str, S.Scalar]] = Field(default_factory=list)
    # an earlier sweep in this results folder whose finished trials the new study starts from
    warm_start_from: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # budgets: no new trials after this wall time of the driver (e.g. 12h, 45m, 90s)
    time_budget: str | float | None = None
    stop_when: StopWhen | None = None
    max_failed_trials: int | None = Field(None, ge=1)

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, v):
        if v is not None:
            seconds(v)
        return v

    @property
    def time_budget_s(self) -> float | None:
        return None if self.time_budget is None else seconds(self.time_budget)
