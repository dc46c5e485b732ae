"""`search.algorithm` as Optuna's own samplers, one registry: the Optuna class of each name, what the
spec sets on it, and what it does with the space it is given.

- Every sampler is seeded from `search.seed`; `search.sampler_options` go to its constructor
  unchanged, checked against the constructor's own parameters (an unknown one is a one-line
  error listing them). The spec's choices are defaults the options can override.
- TPE: `constant_liar` when trials run concurrently (`resources.max_concurrent` > 1: the liar keeps
  it from proposing one point to two running trials), `multivariate` and `group` when the space
  has `when:` entries (group splits it into the sub-spaces that occur together).
- `search.n_startup_trials` reaches the samplers with a random start-up phase (TPE, GP, CMA-ES).
- What a sampler cannot model it hands to its independent sampler (Optuna's own fall-back):
  CMA-ES and QMC for categorical and conditional keys, GP for conditional ones. `notes` says so,
  and the dry run prints it.
- `auto`: several objectives -> NSGA-II; a space with categorical or conditional keys -> TPE;
  otherwise (numeric keys only) -> GP.
- `constraints:` reach the samplers that take a `constraints_func` (TPE, GP, NSGA-II/III) as
  `Feasibility`, which reads the constrained metrics the searcher stores on each Optuna trial as
  user attributes (orchestrator.run.tuner); the others refuse them.
- `grid` is not here: it walks the grid points (orchestrator.spec.space.grid_sampler).
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import SpecError

CLASSES = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "qmc": "QMCSampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
}
ALGORITHMS = ("tpe", "random", "grid", "qmc", "gp", "cmaes", "nsga2", "nsga3", "auto")
SET_BY_SPEC = ("seed", "constraints_func")  # search.seed; `constraints:` (callables have no YAML form)
CONSTRAINTS_ATTR = "constraints"  # the system attribute Optuna keeps a trial's constraint values in
STARTUP = "n_startup_trials"
# what each one hands to its independent sampler: categorical keys, keys under `when:`
FALLS_BACK = {"cmaes": ("categorical", "conditional"), "qmc": ("categorical", "conditional"), "gp": ("conditional",)}


@dataclass
class Plan:
    algorithm: str  # the one that runs (auto resolved)
    cls: str  # optuna.samplers.<cls>
    kwargs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.cls}({args})"

    def build(self):
        import warnings

        import optuna

        with warnings.catch_warnings():  # QMC, NSGA-III and TPE's `group` are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            cls = getattr(optuna.samplers, self.cls)
            sampler = cls(**self.kwargs)
            if any(isinstance(v, _LOCK) for v in vars(sampler).values()):
                sampler = picklable_class(cls)(**self.kwargs)
        return sampler


_LOCK = type(threading.Lock())


class _DropsLocks:
    """Mixed into a sampler that holds a thread lock (Optuna's NSGA-II/III do): Tune saves its
    searcher, sampler included, with pickle, which cannot take a lock; the lock is left out of the
    pickle and made anew on load."""

    __slots__ = ()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_locks_dropped"] = [k for k, v in state.items() if isinstance(v, _LOCK)]
        for k in state["_locks_dropped"]:
            del state[k]
        return state

    def __setstate__(self, state):
        for k in state.pop("_locks_dropped", []):
            state[k] = threading.Lock()
        self.__dict__.update(state)


_PICKLABLE: dict[type, type] = {}


def picklable_class(cls: type) -> type:
    """`cls` with _DropsLocks mixed in, under the same name in this module (where pickle finds it)."""
    if cls not in _PICKLABLE:
        _PICKLABLE[cls] = type(cls.__name__, (_DropsLocks, cls), {"__module__": __name__, "__slots__": ()})
        globals()[cls.__name__] = _PICKLABLE[cls]
    return _PICKLABLE[cls]


@dataclass(frozen=True)
class Feasibility:
    """Optuna's constraints_func for the spec's `constraints:` (<= 0 feasible), from the metrics
    stored on the trial as user attributes; a metric the trial never reported counts as infeasible.
    Plain data, so Tune can pickle it with the sampler."""

    bounds: tuple[tuple[str, float | None, float | None], ...]  # (metric, max, min)

    @classmethod
    def of(cls, constraints) -> Feasibility:
        return cls(tuple((c.metric, c.max, c.min) for c in constraints))

    @property
    def metrics(self) -> list[str]:
        return [m for m, _, _ in self.bounds]

    def values(self, metrics: dict) -> list[float]:
        from orchestrator.spec.search import violation

        return [violation(metrics.get(metric), hi, lo) for metric, hi, lo in self.bounds]

    def __call__(self, trial) -> list[float]:
        return self.values(trial.user_attrs)

    def __repr__(self) -> str:
        return (
            "Feasibility("
            + ", ".join(
                f"{m} {'<=' if hi is not None else '>='} {hi if hi is not None else lo:g}" for m, hi, lo in self.bounds
            )
            + ")"
        )


def own_options(cls: str) -> list[str]:
    import optuna

    return [p for p in inspect.signature(getattr(optuna.samplers, cls)).parameters if p not in SET_BY_SPEC]


def auto(space: dict, n_objectives: int) -> tuple[str, str]:
    """(algorithm, why) for `auto`: the rule in the module doc."""
    if n_objectives > 1:
        return "nsga2", f"{n_objectives} objectives"
    categorical = [k for k, p in space.items() if p.values is not None]
    conditional = [k for k, p in space.items() if p.when]
    if categorical or conditional:
        return "tpe", "categorical or conditional keys (" + ", ".join(dict.fromkeys(categorical + conditional)) + ")"
    return "gp", "numeric keys only"


def plan(
    algorithm: str,
    seed: int,
    space: dict,
    options: dict[str, Any] | None = None,
    concurrent: int = 1,
    n_objectives: int = 1,
    n_startup_trials: int | None = None,
    constraints=(),
) -> Plan:
    """The sampler a sweep of `space` runs with (see the module doc); SpecError naming the key when
    an option or the start-up count does not fit the sampler."""
    notes: list[str] = []
    if algorithm == "auto":
        algorithm, why = auto(space, n_objectives)
        notes.append(f"auto: {algorithm} ({why})")
    if algorithm not in CLASSES:
        raise SpecError(f"search.algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    cls = CLASSES[algorithm]
    allowed = own_options(cls)
    options = dict(options or {})
    for key in options:
        if key not in allowed:
            raise SpecError(f"search.sampler_options.{key}: not an option of optuna's {cls} ({', '.join(allowed)})")
    kwargs: dict[str, Any] = {"seed": seed}
    if n_startup_trials is not None:
        if STARTUP not in allowed:
            raise SpecError(
                f"search.n_startup_trials: {algorithm} ({cls}) has no random start-up phase; remove it "
                "(tpe, gp and cmaes have one)"
            )
        kwargs[STARTUP] = n_startup_trials
    if constraints:
        import optuna

        if "constraints_func" not in inspect.signature(getattr(optuna.samplers, cls)).parameters:
            raise SpecError(
                f"constraints: search.algorithm {algorithm} ({cls}) takes no constraints; use tpe, gp, nsga2 "
                "or nsga3, or leave constraints out"
            )
        kwargs["constraints_func"] = Feasibility.of(constraints)
    conditional = any(p.when for p in space.values())
    if algorithm == "tpe":
        if concurrent > 1:
            kwargs["constant_liar"] = True
        if conditional:
            kwargs.update(multivariate=True, group=True)
    kwargs.update(options)
    if n_objectives > 1 and algorithm == "cmaes":
        raise SpecError(
            f"search.algorithm {algorithm}: Optuna's {cls} optimises one objective; this sweep has "
            f"{n_objectives} (use nsga2, nsga3, tpe, gp, qmc or random)"
        )
    categorical = [k for k, p in space.items() if p.values is not None]
    falls = FALLS_BACK.get(algorithm, ())
    handed = [k for k in categorical if "categorical" in falls]
    handed += [k for k, p in space.items() if p.when and "conditional" in falls and k not in handed]
    if handed:
        notes.append(
            f"{algorithm}: {', '.join(handed)} drawn by its independent sampler (random), as Optuna's {cls} "
            "does for keys it cannot model"
        )
    return Plan(algorithm, cls, kwargs, notes)


def sampler_plan(spec) -> Plan:
    """The Optuna sampler a (non-grid) sweep runs with, and what it hands to its fall-back."""
    s = spec.search
    return plan(
        s.algorithm,
        s.seed,
        spec.space,
        s.sampler_options,
        spec.resources.max_concurrent,
        len(spec.objectives),
        s.n_startup_trials,
        spec.constraints,
    )


def check_search(spec) -> None:
    """The sampler's options, start-up count and constraints fit it (orchestrator.spec.samplers),
    and each initial point names active space keys with values inside the space."""
    search, space = spec.search, spec.space
    if search.algorithm == "grid":
        for key in ("sampler_options", "initial_points", "warm_start_from"):
            if getattr(search, key):
                raise SpecError(f"search.{key}: a grid runs its own points; use it with another search.algorithm")
        if spec.constraints:
            raise SpecError("constraints: a grid runs every point whatever they say; use tpe, gp, nsga2 or nsga3")
    else:
        sampler_plan(spec)
    if search.warm_start_from == spec.name:
        raise SpecError(
            f"search.warm_start_from: {spec.name!r} is this sweep; name an earlier one (resume this one with --resume)"
        )
    for i, point in enumerate(search.initial_points):
        problem = outside(space, point)
        if problem:
            raise SpecError(f"search.initial_points[{i}].{problem}")


def outside(space: dict, point: dict) -> str | None:
    """Why `point` is not a point of `space` ("<key>: <reason>"), or None when it is one."""
    for key, value in point.items():
        if key not in space:
            return f"{key}: not a key of the space ({', '.join(space)})"
        p = space[key]
        if not p.active(point):
            return f"{key}: inactive at this point (its when: {p.when}); leave it out"
        if not p.admits(value):
            return f"{key}: {value!r} is outside the space ({p.type} {p.describe()})"
    return None


def __getattr__(name: str):
    """Pickle finds a picklable sampler class by name here, in a process that has not built one
    yet (a resumed sweep's driver loading Tune's saved searcher)."""
    import optuna

    if name.endswith("Sampler") and hasattr(optuna.samplers, name):
        return picklable_class(getattr(optuna.samplers, name))
    raise AttributeError(name)
