"""The sweep's search space read back, and an in-memory Optuna study rebuilt from the trials table
for importances and Optuna's own plots.

The space comes from the spec the driver saved on the parent run (sweep.yaml): its `when:`
conditions say which params a trial really had (a PI trial has no CAM and no beta, though its
trainer config holds their defaults), and its entries give the study its distributions. A store
without that artifact falls back to distributions inferred from the values, every param active.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa

from orchestrator.spec import space as S
from orchestrator.tracking.reader import PARAM


def space_from_text(text: str | None) -> dict[str, S.Param]:
    """The `space:` of a saved sweep spec ({} when absent or unreadable)."""
    import yaml

    try:
        raw = (yaml.safe_load(text or "") or {}).get("space") or {}
        return {k: S.Param.model_validate(v) for k, v in raw.items()}
    except Exception:  # an older or hand-made spec: no conditions known
        return {}


def _as_choice(value: Any, choices: list | None) -> Any:
    """A table value (MLflow gives params back as text) as the space's own value when one matches."""
    for c in choices or []:
        if str(c) == str(value) or c == value:
            return c
    return value


def _point(row: dict[str, Any], space: dict[str, S.Param]) -> dict[str, Any]:
    return {
        k: _as_choice(row[PARAM + k], p.discrete_values()) for k, p in space.items() if row.get(PARAM + k) is not None
    }


def mask_inactive(t: pa.Table, space: dict[str, S.Param]) -> pa.Table:
    """`t` with each conditional param set to null in the trials where its `when:` does not hold."""
    conditional = [k for k, p in space.items() if p.when and PARAM + k in t.column_names]
    if not conditional:
        return t
    rows = t.to_pylist()
    active = [{k: space[k].active(_point(r, space)) for k in conditional} for r in rows]
    for k in conditional:
        col = PARAM + k
        values = [r[col] if a[k] else None for r, a in zip(rows, active)]
        t = t.set_column(t.column_names.index(col), col, pa.array(values, t.schema.field(col).type))
    return t


def mask_unused(t: pa.Table) -> pa.Table:
    """`t` with each distill key set to null in the trials whose method reads none of it (a PI cell
    of an ablation or confirmation holds train:'s beta and CAM, which PI never uses)."""
    from trainables.losses.methods import ignored_keys

    method_col = PARAM + "distill.method"
    if method_col not in t.column_names:
        return t
    methods = t.column(method_col).to_pylist()
    for key in sorted({k for m in set(methods) for k in ignored_keys(str(m))}):
        col = PARAM + "distill." + key
        if col not in t.column_names:
            continue
        values = [None if key in ignored_keys(str(m)) else v for m, v in zip(methods, t.column(col).to_pylist())]
        t = t.set_column(t.column_names.index(col), col, pa.array(values, t.schema.field(col).type))
    return t


def conditions(space: dict[str, S.Param]) -> dict[str, dict]:
    """Distinct `when:` conditions of the space, by a readable name ('distill.method=xgd')."""
    out: dict[str, dict] = {}
    for p in space.values():
        if p.when:
            name = " ".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in p.when.items())
            out.setdefault(name, dict(p.when))
    return out


def holds(t: pa.Table, when: dict, space: dict[str, S.Param]) -> pa.Table:
    """The trials in which a `when:` condition holds."""
    probe = S.Param(type="choice", values=[0], when=when)
    return t.filter(pa.array([probe.active(_point(r, space)) for r in t.to_pylist()], pa.bool_()))


# ------------------------------------------------------------------ the study


def _distribution(p: S.Param):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.values is not None:
        return CategoricalDistribution(list(dict.fromkeys(p.values)))
    if p.type in ("randint", "qrandint"):
        return IntDistribution(int(p.low), int(p.high), step=int(p.q or 1))
    step = p.q if p.type == "quniform" else None
    return FloatDistribution(p.low, p.high, log=p.type == "loguniform", step=step)


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _inferred(values: list):
    """A distribution that holds every value (a param the saved space does not describe)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if _numbers(values) and len(set(values)) > 1:
        lo, hi = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(lo), int(hi))
        return FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 10)
    return CategoricalDistribution(sorted({str(v) for v in values}))


def _fits(dist, values: list) -> list | None:
    """`values` in the distribution's own terms, or None when one falls outside it."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        out = [_as_choice(v, list(dist.choices)) for v in values]
        return out if all(v in dist.choices for v in out) else None
    if not _numbers(values):
        return None
    kind = int if isinstance(dist, IntDistribution) else float
    out = [kind(v) for v in values]
    ok = all(a == b and dist._contains(dist.to_internal_repr(b)) for a, b in zip(values, out))
    return out if ok else None


def study_from_table(
    t: pa.Table,
    metric: str,
    keys: list[str],
    maximize: bool = True,
    space=None,
    scale: float = 1.0,
    stopped: pa.Table | None = None,
):
    """An Optuna study whose COMPLETE trials are the rows of `t` holding `metric` (times `scale`:
    mIoU in % as the tables show it), and whose PRUNED trials are the rows of `stopped` (trials
    stopped early: Optuna's importances and plots of values leave them out), in the order they
    started. Each trial has the params of `keys` (trials-table columns) it holds (a null is an
    inactive param, left out of that trial), with the space's distributions where the space
    describes them. None with fewer than 2 complete trials."""
    import optuna

    space = space or {}
    done = [r for r in t.to_pylist() if r.get(metric) is not None and math.isfinite(r[metric])]
    if not keys or len(done) < 2:
        return None
    pruned = stopped.to_pylist() if stopped is not None else []
    ids = {id(r) for r in pruned}
    rows = sorted(done + pruned, key=lambda r: (r.get("start_time_ms") or 0, r.get("run_id") or ""))
    dists, values = {}, {}
    for k in keys:
        present = [r[k] for r in rows if r.get(k) is not None]
        if not present:
            continue
        p = space.get(k.removeprefix(PARAM))
        dist = _distribution(p) if p is not None else _inferred(present)
        fitted = _fits(dist, present)
        if fitted is None:  # a value the saved space cannot hold (the spec changed): infer
            dist = _inferred(present)
            fitted = _fits(dist, present)
        it = iter(fitted)
        dists[k], values[k] = dist, [next(it) if r.get(k) is not None else None for r in rows]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    for j, r in enumerate(rows):
        params = {_short(k): values[k][j] for k in dists if values[k][j] is not None}
        state = optuna.trial.TrialState.PRUNED if id(r) in ids else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=params,
                distributions={_short(k): dists[k] for k in dists if _short(k) in params},
                value=float(r[metric]) * scale if state == optuna.trial.TrialState.COMPLETE else None,
                user_attrs={"run_name": r.get("run_name"), "trial_id": r.get("trial_id")},
            )
        )
    return study


def _short(key: str) -> str:
    return key.removeprefix(PARAM)


def importances(study, evaluator=None) -> dict[str, float]:
    """optuna.importance over the params every trial of `study` has ({} if it cannot tell)."""
    import optuna

    if study is None:
        return {}
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator or evaluator_for(len(study.trials)))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}
    return {k: float(v) for k, v in imp.items()}


def evaluator_for(n_trials: int):
    """fANOVA (needs scikit-learn) when available: on the few dozen trials of an ablation it ranks
    factors by the variance they explain, where Optuna 5's default PED-ANOVA compares the top 10 %
    with the rest and, on 8 trials, ranked a factor worth 1 point above one worth 6 (the test
    store). Without scikit-learn, PED-ANOVA with the top half on small studies. fANOVA assesses
    the params every trial has: a conditional param is assessed in the trials where it is active
    (`conditions`, `holds`)."""
    import optuna

    try:
        import sklearn  # noqa: F401

        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.5 if n_trials < 40 else 0.1)
