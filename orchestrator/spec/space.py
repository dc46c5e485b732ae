"""Search spaces: typed parameter entries, their Optuna define-by-run translation, grids, and the
merge of one sampled point into a full trainer config.

A space maps a dotted TrainSpec path (``distill.alpha``) or the special key ``student`` (a name from
the sweep's ``students:``) to a distribution. ``when`` makes an entry exist only for some values of
other entries, so the space is sampled define-by-run (Optuna) in dependency order; a trial's config
holds only the entries that were active for it.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Union

from pydantic import Field, model_validator

from orchestrator.spec.load import Strict

STUDENT = "student"  # space key that picks a named student architecture
LABEL = "label"  # a listed cell's row name in report tables (ablations); never reaches the trainer
GRID_KEY = "grid_index"  # the one parameter Optuna's GridSampler walks; never reaches the trainer
MAX_GRID = 100_000

Scalar = Union[bool, int, float, str, None]  # noqa: UP007 (a runtime alias: py3.10 isinstance needs Union)


class Param(Strict):
    """One search-space entry. Ranges are inclusive; ``q`` is the step of the quantised kinds."""

    type: Literal["uniform", "loguniform", "quniform", "randint", "qrandint", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    q: float | None = Field(None, gt=0)
    values: list[Scalar] | None = None
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"type {self.type} needs a non-empty 'values' list")
            if self.low is not None or self.high is not None or self.q is not None:
                raise ValueError(f"type {self.type} takes 'values', not low/high/q")
            return self
        if self.values is not None:
            raise ValueError(f"type {self.type} takes low/high, not 'values'")
        if self.low is None or self.high is None:
            raise ValueError(f"type {self.type} needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must be <= high ({self.high:g})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {self.low:g})")
        if self.type in ("quniform", "qrandint") and self.q is None:
            raise ValueError(f"type {self.type} needs 'q' (the step)")
        if self.type in ("uniform", "loguniform", "randint") and self.q is not None:
            raise ValueError(f"type {self.type} takes no 'q'; use q{self.type.removeprefix('log')}")
        if self.type in ("randint", "qrandint"):
            for k in ("low", "high", "q"):
                v = getattr(self, k)
                if v is not None and v != int(v):
                    raise ValueError(f"type {self.type} needs integer {k} (got {v:g})")
        if self.q is not None:
            steps = (self.high - self.low) / self.q
            if abs(steps - round(steps)) > 1e-6:
                raise ValueError(f"high - low ({self.high - self.low:g}) must be a multiple of q ({self.q:g})")
        return self

    # -------------------------------------------------------------- views

    def discrete_values(self) -> list[Scalar] | None:
        """Every value this entry can take, or None for a continuous range."""
        if self.values is not None:
            return list(self.values)
        if self.type == "randint":
            return list(range(int(self.low), int(self.high) + 1))
        if self.type == "qrandint":
            return list(range(int(self.low), int(self.high) + 1, int(self.q)))
        if self.type == "quniform":
            n = int(round((self.high - self.low) / self.q))
            return [_clean(self.low + i * self.q) for i in range(n + 1)]
        return None

    def probes(self) -> list[Scalar]:
        """Values that bound what sampling can produce: checked against TrainSpec up front."""
        values = self.discrete_values()
        if values is not None and self.values is not None:
            return values
        if self.type in ("randint", "qrandint"):
            return [int(self.low), int(values[-1])]
        return [self.low, self.high]

    def describe(self) -> str:
        if self.values is not None:
            return ", ".join(map(str, self.values))
        step = f" step {self.q:g}" if self.q is not None else ""
        return f"[{self.low:g}, {self.high:g}]{step}"

    def admits(self, value: Any) -> bool:
        """Whether `value` is a point of this entry (an initial point's value, say)."""
        listed = self.discrete_values()
        if listed is not None:
            return any(value == v and type(value) is not bool for v in listed) or value in (self.values or [])
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def active(self, point: dict[str, Any]) -> bool:
        """Whether the entry exists for a (partial) point: every `when` condition holds."""
        for key, want in self.when.items():
            allowed = want if isinstance(want, list) else [want]
            if key not in point or point[key] not in allowed:
                return False
        return True

    def suggest(self, trial, name: str) -> Scalar:
        """Draw the value with an Optuna trial (define-by-run)."""
        if self.values is not None:
            return trial.suggest_categorical(name, list(self.values))
        if self.type == "uniform":
            return trial.suggest_float(name, self.low, self.high)
        if self.type == "loguniform":
            return trial.suggest_float(name, self.low, self.high, log=True)
        if self.type == "quniform":
            return _clean(trial.suggest_float(name, self.low, self.high, step=self.q))
        return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.q or 1))


def _clean(x: float) -> float:
    """Round away float noise from quantised steps (0.1 * 3 -> 0.3)."""
    return float(f"{x:.12g}")


# ------------------------------------------------------------------ ordering and checks


def ordered(space: dict[str, Param]) -> list[str]:
    """Names in dependency order (an entry after every entry its `when` reads); stable otherwise."""
    for name, p in space.items():
        for dep, want in p.when.items():
            if dep not in space:
                raise ValueError(
                    f"space.{name}.when: {dep!r} is not an entry of the space; entries: {', '.join(space)}"
                )
            if dep == name:
                raise ValueError(f"space.{name}.when refers to itself")
            values = space[dep].discrete_values()
            wanted = want if isinstance(want, list) else [want]
            if values is not None:
                bad = [w for w in wanted if w not in values]
                if bad:
                    raise ValueError(
                        f"space.{name}.when: {dep} can never be {bad[0]!r}; its values: {', '.join(map(str, values))}"
                    )
    done: list[str] = []
    pending = list(space)
    while pending:
        ready = [n for n in pending if all(d in done for d in space[n].when)]
        if not ready:
            raise ValueError(f"space: 'when' conditions form a cycle among {', '.join(pending)}")
        for n in ready:
            done.append(n)
            pending.remove(n)
    return done


# ------------------------------------------------------------------ samplers


class DefineByRun:
    """The Optuna define-by-run function: draws the active entries in dependency order.
    A class, not a closure: Tune saves the searcher with plain pickle."""

    def __init__(self, space: dict[str, Param]):
        self.space, self.order = dict(space), ordered(space)

    def __call__(self, trial) -> None:
        point: dict[str, Any] = {}
        for name in self.order:
            if self.space[name].active(point):
                point[name] = self.space[name].suggest(trial, name)
        return None


def grid_points(space: dict[str, Param]) -> list[dict[str, Any]]:
    """Every combination of the active entries (conditionals branch only where they exist)."""
    points: list[dict[str, Any]] = [{}]
    for name in ordered(space):
        values = space[name].discrete_values()
        if values is None:
            raise ValueError(
                f"space.{name}: a grid needs discrete values; {space[name].type} is continuous "
                f"(use choice, grid, quniform, randint or qrandint)"
            )
        nxt = []
        for p in points:
            if space[name].active(p):
                nxt.extend({**p, name: v} for v in values)
            else:
                nxt.append(p)
        if len(nxt) > MAX_GRID:
            raise ValueError(f"space: the grid has more than {MAX_GRID} points; narrow it or use tpe/random")
        points = nxt
    return points


class GridDefine:
    """Optuna's GridSampler walks one index; the point it names comes back as constants."""

    def __init__(self, points: list[dict[str, Any]]):
        self.points = points

    def __call__(self, trial) -> dict[str, Any]:
        return dict(self.points[trial.suggest_categorical(GRID_KEY, list(range(len(self.points))))])


def grid_sampler(points: list[dict[str, Any]], seed: int):
    """(Optuna GridSampler, define-by-run fn) that run each of `points` once."""
    import optuna

    return optuna.samplers.GridSampler({GRID_KEY: list(range(len(points)))}, seed=seed), GridDefine(points)


def space_sampler(algorithm: str, seed: int, space: dict[str, Param], n_startup_trials: int | None = None):
    """(optuna sampler, define-by-run fn, grid size or None) for tpe | random | grid over `space`."""
    import optuna

    if algorithm == "grid":
        points = grid_points(space)
        return (*grid_sampler(points, seed), len(points))
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed), DefineByRun(space), None
    kw = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
    return optuna.samplers.TPESampler(seed=seed, **kw), DefineByRun(space), None


# ------------------------------------------------------------------ points -> trainer configs


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def resolve(base: dict, point: dict[str, Any], students: dict[str, dict]) -> dict:
    """Base trainer config + one sampled point: `student` swaps in a named model spec, every
    other key sets its dotted path; the grid index is bookkeeping and is dropped."""
    cfg = copy.deepcopy(base)
    if STUDENT in point:
        cfg["model"] = copy.deepcopy(students[point[STUDENT]])
    for key, value in point.items():
        if key not in (STUDENT, GRID_KEY, LABEL):
            set_dotted(cfg, key, value)
    return cfg


def probe_points(space: dict[str, Param]) -> list[tuple[str, Scalar, dict[str, Any]]]:
    """(entry, value, point) for every bound of every entry, with its `when` conditions met, so
    TrainSpec validation of these points checks what any sampled config can hold."""
    out = []
    for name, p in space.items():
        cond = {k: (v[0] if isinstance(v, list) else v) for k, v in p.when.items()}
        for value in p.probes():
            out.append((name, value, {**cond, name: value}))
    return out


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (lists and scalars are leaves)."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
