"""`compare`: distillation methods raced at equal budget (orchestrator.run.compare).

A sweep spec's optional `compare:` block (or the command's flags) names the methods and the
budget's currency. Each method gets its own sweep: the spec with `train.distill.method` fixed to
it and the space cut to the keys that method reads (trainables.losses.methods.READS: alpha and tau
for every method with pixel-wise KD, beta and the CAM settings for XGD; shared keys such as the
student or the learning rate stay for all). `iterations` gives every method the same trials,
epochs, early-stopping rule and sampler seed; `time` gives every method the same trainer seconds
per trial: its epochs are the spec's scaled by the cheapest method's measured step cost over its
own (a method whose step costs 1.2x gets 1/1.2 of the epochs) [CanonKD].
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, field_validator

from orchestrator.errors import SpecError
from orchestrator.spec.budget import BUDGETS
from orchestrator.spec.load import Strict

METHOD_KEY = "distill.method"
CONFIRM = "confirm"  # the confirmation stage's name suffix: <compare>-confirm


class CompareSpec(Strict):
    methods: list[str] = Field(default_factory=list)
    budget: Literal[BUDGETS] = "iterations"
    seeds: int = Field(3, ge=2, le=1000)  # fresh seeds of the confirmation (2 at least: a paired test)
    cost_iters: int = Field(6, ge=1)  # timed steps per method for the `time` budget

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        from trainables.losses.methods import METHODS

        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; allowed: {', '.join(METHODS)}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"a method is listed twice in {methods}")
        return methods


def check_methods(methods: list[str]) -> None:
    if len(methods) < 2:
        raise SpecError(
            f"compare.methods: give two or more methods to compare (got {methods or 'none'}), "
            "e.g. --methods pi xgd or compare: {methods: [none, pi, xgd]}"
        )


def stage_name(compare: str, method: str) -> str:
    """The sweep of one method (MLflow and Tune names allow '+': xgd+cwd)."""
    return f"{compare}-{method.replace('+', '-')}"


def method_space(space: dict[str, dict], method: str) -> dict[str, dict]:
    """The raw space entries a sweep of `method` searches: no `distill.method`, no distill key the
    method never reads, and `when: {distill.method: ...}` resolved (kept without it when it holds,
    dropped when it does not)."""
    from trainables.losses.methods import ignored_keys

    ignored = {f"distill.{k}" for k in ignored_keys(method)}
    out: dict[str, dict] = {}
    for name, entry in space.items():
        if name == METHOD_KEY or name in ignored:
            continue
        entry = copy.deepcopy(entry)
        when = dict(entry.get("when") or {})
        if METHOD_KEY in when:
            allowed = when.pop(METHOD_KEY)
            if method not in (allowed if isinstance(allowed, list) else [allowed]):
                continue
            entry["when"] = when
            if not when:
                entry.pop("when")
        out[name] = entry
    return out


def method_raw(raw: dict[str, Any], method: str, name: str, epochs: int | None, tags: dict[str, str]) -> dict:
    """The raw sweep spec of one method's search (validated by the caller with parse_sweep_spec).
    A method with nothing to search runs one trial (a one-value grid): its trials would be copies."""
    out = copy.deepcopy({k: v for k, v in raw.items() if k != "compare"})
    out["name"] = name
    train = out.setdefault("train", {})
    train.setdefault("distill", {})["method"] = method
    if epochs is not None:
        train.setdefault("optim", {})["epochs"] = epochs
        es = out.get("early_stopping") or {}
        if es.get("grace_period") and es["grace_period"] > epochs:
            out["early_stopping"] = {**es, "grace_period": epochs}
        if es.get("max_t"):
            out["early_stopping"] = {**out["early_stopping"], "max_t": min(es["max_t"], epochs)}
    space = method_space(raw.get("space") or {}, method)
    if not space:
        space = {METHOD_KEY: {"type": "grid", "values": [method]}}
        out["search"] = {**(out.get("search") or {}), "algorithm": "grid"}
        out["search"].pop("num_samples", None)
        out["search"].pop("n_startup_trials", None)
    out["space"] = space
    out["tags"] = {**(out.get("tags") or {}), **tags}
    return out


def time_epochs(epochs: int, costs: dict[str, float]) -> dict[str, int]:
    """Each method's epochs at equal trainer time: the cheapest method keeps `epochs`, a method
    whose step costs r times as much gets round(epochs / r) (at least 1)."""
    cheapest = min(costs.values())
    return {m: max(1, round(epochs * cheapest / c)) for m, c in costs.items()}
