"""PNG plots where a picture beats a table: metric against alpha/beta/tau (the paper's Figure 3),
metric against cost with the Pareto front, and Optuna parameter importances. Each returns the
written path, or None when the sweep has nothing to show (e.g. alpha never varied)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pyarrow as pa

from orchestrator.results.pareto import pareto_front
from orchestrator.results.tables import col, factors, short_names

HYPERS = ("params.distill.alpha", "params.distill.beta", "params.distill.tau")
COSTS = ("latency_ms", "gflops", "params")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


def _points(t: pa.Table, x: str, y: str) -> list[tuple[float, float]]:
    xs, ys = t.column(x).to_pylist(), t.column(y).to_pylist()
    return [
        (float(a), float(b))
        for a, b in zip(xs, ys)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]


def hyper_plot(t: pa.Table, metric: str, path: Path, max_lines: int = 8) -> Path | None:
    """Metric (mean +- std over the trials at each value, points behind) against each of alpha,
    beta, tau that varies: one line per cell of the other factors (e.g. method), marginal over the
    other two weights (exact for the paper's one-at-a-time design); log x when all positive."""
    all_factors = factors(t)
    keys = [k for k in HYPERS if k in all_factors and _numbers(t.column(k).to_pylist())]
    if not keys or metric not in t.column_names:
        return None
    others = [k for k in all_factors if k not in HYPERS]
    labels = (
        [
            " ".join(f"{n}={v}" for n, v in zip(short_names(others), vals))
            for vals in zip(*(t.column(o).to_pylist() for o in others))
        ]
        if others
        else [""] * len(t)
    )
    lines = sorted(set(labels))
    if len(lines) > max_lines:
        labels, lines = [""] * len(t), [""]
    c, plt = col(metric), _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    ys = t.column(metric).to_pylist()
    for ax, key, name in zip(axes[0], keys, short_names(keys)):
        xs_all = t.column(key).to_pylist()
        for line in lines:
            pts = [
                (float(x), float(y) * c.scale)
                for x, y, lab in zip(xs_all, ys, labels)
                if lab == line and x is not None and y is not None and math.isfinite(y)
            ]
            xs = sorted({x for x, _ in pts})
            groups = [[y for x2, y in pts if x2 == x] for x in xs]
            means = [statistics.fmean(g) for g in groups]
            stds = [statistics.stdev(g) if len(g) > 1 else 0.0 for g in groups]
            bar = ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=line or None)
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, alpha=0.3, color=bar[0].get_color())
        xs = sorted({float(x) for x in xs_all if x is not None})
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(name)
        ax.set_ylabel(c.header)
        ax.grid(alpha=0.3)
        if any(lines):
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, plt)


def pareto_plot(t: pa.Table, metric: str, path: Path, maximize: bool = True) -> Path | None:
    """Metric against each logged cost (latency, FLOPs, params), Pareto front drawn and labelled."""
    costs = [k for k in COSTS if k in t.column_names and len({c for c, _ in _points(t, k, metric)}) > 1]
    if not costs or metric not in t.column_names:
        return None
    mc, plt = col(metric), _plt()
    fig, axes = plt.subplots(1, len(costs), figsize=(4.6 * len(costs), 3.6), squeeze=False)
    names = t.column("run_name").to_pylist()
    for ax, cost in zip(axes[0], costs):
        cc = col(cost)
        rows = [
            i
            for i, (a, b) in enumerate(zip(t.column(cost).to_pylist(), t.column(metric).to_pylist()))
            if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
        ]
        pts = [(t.column(metric)[i].as_py(), t.column(cost)[i].as_py()) for i in rows]
        front = sorted(pareto_front(pts, ("max" if maximize else "min", "min")), key=lambda i: pts[i][1])
        ax.scatter(
            [p[1] * cc.scale for p in pts],
            [p[0] * mc.scale for p in pts],
            s=14,
            alpha=0.5,
            color="tab:gray",
            label="trials",
        )
        fx, fy = [pts[i][1] * cc.scale for i in front], [pts[i][0] * mc.scale for i in front]
        ax.plot(fx, fy, "-o", color="tab:red", drawstyle="steps-post", label="Pareto front")
        for i, x, y in zip(front, fx, fy):
            ax.annotate(str(names[rows[i]]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(cc.header)
        ax.set_ylabel(mc.header)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path, plt)


def study_from_table(t: pa.Table, metric: str, maximize: bool = True):
    """An Optuna study whose trials are the sweep's (params that vary -> distributions), or None."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    keys = factors(t)
    rows = (
        [i for i, v in enumerate(t.column(metric).to_pylist()) if v is not None and math.isfinite(v)]
        if metric in t.column_names
        else []
    )
    if not keys or len(rows) < 2:
        return None
    dists, values = {}, {}
    for k in keys:
        vals = [t.column(k)[i].as_py() for i in rows]
        present = [v for v in vals if v is not None]
        if _numbers(vals) and None not in vals and len(set(present)) > 1:
            lo, hi = min(present), max(present)
            if all(isinstance(v, int) for v in present):
                dists[k] = IntDistribution(int(lo), int(hi))
            else:
                dists[k] = FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 10)
                vals = [float(v) for v in vals]
        else:
            vals = [str(v) for v in vals]
            dists[k] = CategoricalDistribution(sorted(set(vals)))
        values[k] = vals
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    for j, i in enumerate(rows):
        study.add_trial(
            optuna.trial.create_trial(
                params={k: values[k][j] for k in keys}, distributions=dists, value=float(t.column(metric)[i].as_py())
            )
        )
    return study


def param_importances(t: pa.Table, metric: str, maximize: bool = True, evaluator=None) -> dict[str, float]:
    """optuna.importance on a study rebuilt from the trials' params and metric ({} if too few)."""
    import optuna

    study = study_from_table(t, metric, maximize)
    if study is None:
        return {}
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator or _evaluator(len(study.trials)))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}
    return {k.removeprefix("params."): float(v) for k, v in imp.items()}


def _evaluator(n_trials: int):
    """fANOVA (needs scikit-learn) when available: on the few dozen trials of an ablation it ranks
    factors by the variance they explain, where Optuna 5's default PED-ANOVA compares the top 10 %
    with the rest and, on 8 trials, ranked a factor worth 1 point above one worth 6 (the test
    store). Without scikit-learn, PED-ANOVA with the top half on small studies."""
    import optuna

    try:
        import sklearn  # noqa: F401

        return optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.5 if n_trials < 40 else 0.1)


def importance_plot(importances: dict[str, float], metric: str, path: Path) -> Path | None:
    if not importances or not any(v > 0 for v in importances.values()):
        return None
    plt = _plt()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(items) + 1.4))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlabel(f"importance for {metric} (optuna)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
