"""PNG plots where a picture beats a table. Hand-drawn: metric against alpha/beta/tau (the paper's
Figure 3), metric against cost with the Pareto front, per-trial learning curves. Optuna's own
(`optuna.visualization.matplotlib`, on the study of orchestrator.results.study): optimisation
history, parallel coordinates, parameter importances. Each returns the written path, or None when
the sweep has nothing to show (e.g. alpha never varied). Legends sit outside the axes."""

from __future__ import annotations

import math
import statistics
import warnings
from pathlib import Path

import pyarrow as pa

from orchestrator.results.pareto import pareto_front
from orchestrator.results.tables import _label, col, factors, short_names
from orchestrator.tracking import reader

HYPERS = ("params.distill.alpha", "params.distill.beta", "params.distill.tau")
COSTS = ("latency_ms", "gflops", "params")
MAX_GROUPS = 6  # colours in one panel; more groups than this are not told apart
COLOURS = [f"C{i}" for i in range(10) if i != 7]  # tab10 without its grey (the stopped trials' colour)
MAX_TICKS = 6  # x values labelled one by one (a grid); more (sampled values) get a plain axis


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _few_values(values: list) -> bool:
    """A factor with a few repeated values (a choice, a grid), not sampled numbers."""
    present = [v for v in values if v is not None]
    return not _numbers(present) or len(set(present)) <= min(MAX_TICKS, len(present) - 1)


def _groups(t: pa.Table, others: list[str]) -> tuple[list[str], str]:
    """(a colour label per trial, the legend's title): the other factors' values when they make
    few groups, else the first other factor that does (e.g. the method), else one group."""
    for keys in ([others] if others else []) + [[o] for o in others]:
        labels = [", ".join(_label(v) for v in vals) for vals in zip(*(t.column(k).to_pylist() for k in keys))]
        if len(set(labels)) <= MAX_GROUPS:
            return labels, ", ".join(short_names(keys))
    return [""] * len(t), ""


def _grid(n: int, width: float, height: float, plt, ncols: int = 3):
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend_below(fig, axes, title: str = "") -> None:
    """One legend for the figure, under the panels, in as many columns as fit its width."""
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fits = int(fig.get_figwidth() * 72 / (6.5 * max(len(lab) for lab in labels) + 40))
        ncol = max(1, min(len(labels), fits))
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncol=ncol, title=title or None)


def hyper_plot(t: pa.Table, metric: str, path: Path) -> Path | None:
    """Metric against each of alpha, beta, tau that varies, coloured by the other factors (e.g. the
    method); a trial where the weight is inactive is left out of its panel. A grid's few values:
    mean +- std at each value, points behind; sampled values: the points. Log x when all positive."""
    all_factors = factors(t)
    keys = [k for k in HYPERS if k in all_factors and _numbers(t.column(k).to_pylist())]
    if not keys or metric not in t.column_names:
        return None
    labels, legend = _groups(t, [k for k in all_factors if k not in HYPERS and _few_values(t.column(k).to_pylist())])
    names = sorted(set(labels))
    c, plt = col(metric), _plt()
    from matplotlib import ticker

    fig, axes = _grid(len(keys), 4.2, 3.4, plt)
    fig.set_layout_engine("constrained")
    ys = t.column(metric).to_pylist()
    for ax, key, name in zip(axes, keys, short_names(keys)):
        xs_all = t.column(key).to_pylist()
        values = sorted({float(x) for x in xs_all if x is not None})
        # a grid (few values, repeated): mean +- std per value, values as ticks; sampled values: points
        grid = _few_values(xs_all)
        for i, group in enumerate(names):
            color = f"C{i}"
            pts = [
                (float(x), y * c.scale)
                for x, y, g in zip(xs_all, ys, labels)
                if g == group and x is not None and _finite(y)
            ]
            if not pts:
                continue
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=16, alpha=0.45, color=color, label=group or None)
            if grid:
                xs = sorted({x for x, _ in pts})
                by_x = [[y for x2, y in pts if x2 == x] for x in xs]
                ax.errorbar(
                    xs,
                    [statistics.fmean(g) for g in by_x],
                    yerr=[statistics.stdev(g) if len(g) > 1 else 0.0 for g in by_x],
                    marker="o",
                    capsize=3,
                    color=color,
                )
        if values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if grid:
            ax.set_xticks(values, [f"{x:.3g}" for x in values])
            ax.minorticks_off()
        ax.set_xlabel(name)
        ax.set_ylabel(c.header)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes, legend)
    return _save(fig, path, plt)


def fronts(t: pa.Table, metric: str, maximize: bool = True) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per logged cost that varies (latency, FLOPs, params): (the trials holding it and the metric,
    the Pareto front of metric against that cost, cheapest first). The front is drawn from the
    trials that meet the sweep's constraints (`feasible` not False)."""
    if metric not in t.column_names:
        return {}
    rows = [r for r in t.to_pylist() if _finite(r.get(metric))]
    out = {}
    for cost in (k for k in COSTS if k in t.column_names):
        have = [r for r in rows if _finite(r.get(cost))]
        ok = [r for r in have if not reader.misses(r)]
        if len({r[cost] for r in have}) > 1:
            front = pareto_front([(r[metric], r[cost]) for r in ok], ("max" if maximize else "min", "min"))
            out[cost] = (have, sorted((ok[i] for i in front), key=lambda r: r[cost]))
    return out


def pareto_plot(t: pa.Table, metric: str, path: Path, maximize: bool = True) -> Path | None:
    """Metric against each logged cost (`fronts`), the Pareto front drawn and its trials labelled by trial id."""
    by_cost = fronts(t, metric, maximize)
    if not by_cost:
        return None
    mc, plt = col(metric), _plt()
    fig, axes = _grid(len(by_cost), 4.4, 3.6, plt)
    fig.set_layout_engine("constrained")
    for ax, (cost, (have, front)) in zip(axes, by_cost.items()):
        cc = col(cost)
        ax.scatter(
            [r[cost] * cc.scale for r in have],
            [r[metric] * mc.scale for r in have],
            s=14,
            alpha=0.5,
            color="tab:gray",
            label="trials",
        )
        bad = [r for r in have if reader.misses(r)]
        if bad:
            ax.scatter(
                [r[cost] * cc.scale for r in bad],
                [r[metric] * mc.scale for r in bad],
                s=24,
                marker="x",
                color="tab:orange",
                label="infeasible (misses a constraint)",
            )
        fx, fy = [r[cost] * cc.scale for r in front], [r[metric] * mc.scale for r in front]
        ax.plot(fx, fy, "-o", color="tab:red", drawstyle="steps-post", label="Pareto front")
        for i, (r, x, y) in enumerate(zip(front, fx, fy)):  # labels alternate below/above: neighbours stay apart
            ax.annotate(
                str(r.get("trial_id") or r["run_name"]),
                (x, y),
                fontsize=7,
                xytext=(5, -11 if i % 2 else 6),
                textcoords="offset points",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
        ax.set_xlabel(cc.header)
        ax.set_ylabel(mc.header)
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    return _save(fig, path, plt)


def curves_plot(
    histories: dict[str, list[tuple[int, float]]], counted: pa.Table, stopped: pa.Table, metric: str, path: Path
) -> Path | None:
    """Per-trial learning curves (`histories`: run id -> (step, value), step = epoch - 1): trials
    that ran every epoch in colour, the best one thicker; trials stopped early grey and dashed,
    with an x where they stopped."""
    done_ids = counted.column("run_id").to_pylist()
    stop_ids = stopped.column("run_id").to_pylist()
    if not any(histories.get(r) for r in done_ids + stop_ids):
        return None
    c, plt = col(metric), _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    names = dict(zip(counted.column("run_id").to_pylist(), counted.column("trial_id").to_pylist()))
    finals = {r: (histories.get(r) or [(0, -math.inf)])[-1][1] for r in done_ids}
    best = max(finals, key=finals.get) if finals else None
    labelled = False
    for rid in stop_ids:
        pts = histories.get(rid) or []
        if pts:
            xs, ys = [s + 1 for s, _ in pts], [v * c.scale for _, v in pts]
            label = None if labelled else f"stopped early ({len(stop_ids)})"
            ax.plot(xs, ys, "--", color="0.6", lw=1, label=label)
            ax.plot(xs[-1:], ys[-1:], "x", color="0.45")
            labelled = True
    ranked = sorted(done_ids, key=lambda r: -finals[r])
    for i, rid in enumerate(ranked):
        pts = histories.get(rid) or []
        if pts:
            label = (names.get(rid) or rid[:8]) + (" (best)" if rid == best else "") if i < 12 else None
            ax.plot(
                [s + 1 for s, _ in pts],
                [v * c.scale for _, v in pts],
                "-o",
                ms=3,
                lw=2.4 if rid == best else 1.2,
                zorder=3 if rid == best else 2,
                color=COLOURS[i % len(COLOURS)],
                label=label,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(c.header)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"{c.header} per epoch: {len(done_ids)} completed, {len(stop_ids)} stopped early", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="trial", title_fontsize=8)
    return _save(fig, path, plt)


# ------------------------------------------------------------------ Optuna's plots


def _optuna_plot(draw, path: Path, size: tuple[float, float]) -> Path | None:
    """Run one optuna.visualization.matplotlib function (it sets its own style: kept local here)
    and save its figure at `size`, legends included."""
    import matplotlib
    import optuna

    plt = _plt()
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = draw()
        fig = ax.figure
        fig.set_size_inches(*size)
        return _save(fig, path, plt, tight=True)


def history_plot(study, metric: str, path: Path) -> Path | None:
    """Optuna's optimisation history: each completed trial's value by trial number, and the best so far."""
    from optuna.visualization.matplotlib import plot_optimization_history

    if study is None:
        return None

    def draw():
        from matplotlib.ticker import MaxNLocator

        ax = plot_optimization_history(study, target_name=col(metric).header)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial (in the order they started; trials stopped early have no point)")
        return ax

    return _optuna_plot(draw, path, (7.5, 4.2))


def parallel_plot(study, metric: str, path: Path) -> Path | None:
    """Optuna's parallel coordinates over the study's params (an inactive param is its own 'missing' value)."""
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    if study is None:
        return None
    params = sorted({p for t in study.trials for p in t.params})
    if not params:
        return None

    size = (max(7.5, 1.5 * (len(params) + 1) + 1.5), 4.6)

    def draw():
        ax = plot_parallel_coordinate(study, target_name=col(metric).header)
        for lines in ax.collections:  # Optuna's Blues draws the worst trials near-white
            lines.set_cmap("viridis")
        fig = ax.figure
        fig.set_size_inches(*size)
        fig.canvas.draw()  # the colour bar goes right of the value labels of the last axis, however long
        axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        right = max(t.get_window_extent().x1 for a in axes for t in a.get_yticklabels() if t.get_text())
        x = fig.transFigure.inverted().transform((right, 0))[0]
        for cax in [a for a in fig.axes if a.get_label() == "<colorbar>"]:
            box = cax.get_position()
            cax.set_position([max(box.x0, x + 0.02), box.y0, box.width, box.height])
        return ax

    return _optuna_plot(draw, path, size)


def importance_plot(study, evaluator, metric: str, path: Path, title: str = "") -> Path | None:
    """Optuna's parameter importances of `study` (the same evaluator as importances.csv)."""
    from optuna.visualization.matplotlib import plot_param_importances

    if study is None:
        return None

    def draw():
        ax = plot_param_importances(study, evaluator=evaluator, target_name=col(metric).header)
        if title:
            ax.set_title(f"Hyperparameter Importances: {title}", loc="left")
        return ax

    n = len({p for t in study.trials for p in t.params})
    return _optuna_plot(draw, path, (7.0, 0.45 * n + 1.8))


def _save(fig, path: Path, plt, tight: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path
