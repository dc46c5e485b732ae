"""The confirmation table of a `confirm` run (orchestrator.run.confirm): the chosen configurations
and the baselines, each trained with the same N seeds, compared on val and test mIoU.

Per cell and metric: mean, standard deviation (n - 1) and a 95% t-interval over seeds
(scipy.stats.t). Per configuration x baseline: the paired difference over the seeds both ran
(configuration minus baseline), its 95% t-interval, the paired t-test (scipy.stats.ttest_rel) and,
from 6 pairs on, the Wilcoxon signed-rank test (scipy.stats.wilcoxon); `*` marks p < 0.05.
`confirmation_stats` is a pure function of (cell, seed, metric values) rows; `write_confirmation`
renders it as Markdown, LaTeX (orchestrator.results.tables) and CSV.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.tracking import tags as T

LEVEL = 0.95  # confidence of the intervals
ALPHA = 0.05  # significance mark
MIN_WILCOXON = 6  # pairs below which the signed-rank test is not run
METRICS = ("val_miou", "test_miou")
HEADERS = {"val_miou": "val mIoU (%)", "test_miou": "test mIoU (%)"}
SCALE = 100.0  # mIoU is stored as a fraction and shown in %
CONFIG, BASELINE = "config", "baseline"


@dataclass
class Summary:
    n: int
    mean: float | None = None
    std: float | None = None
    ci: tuple[float, float] | None = None


@dataclass
class Paired:
    n: int  # seeds both cells ran
    mean: float | None = None  # configuration minus baseline
    std: float | None = None
    ci: tuple[float, float] | None = None
    p_t: float | None = None
    p_w: float | None = None
    seeds: list = field(default_factory=list)

    @property
    def significant(self) -> bool:
        return any(p is not None and p < ALPHA for p in (self.p_t, self.p_w))


@dataclass
class Confirmation:
    cells: dict[str, dict[str, Summary]]  # label -> metric -> summary
    pairs: dict[tuple[str, str], dict[str, Paired]]  # (config, baseline) -> metric -> paired
    roles: dict[str, str]  # label -> config | baseline
    metrics: list[str]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ statistics


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """mean +- t_{(1+level)/2, n-1} * s / sqrt(n); None under 2 values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values]
    if not vals:
        return Summary(0)
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Summary(len(vals), statistics.fmean(vals), std, t_interval(vals))


def _p(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def paired(config: dict, baseline: dict) -> Paired:
    """Seed -> value of a configuration and of a baseline, compared over the seeds both have."""
    from scipy import stats

    seeds = sorted(set(config) & set(baseline))
    a, b = [float(config[s]) for s in seeds], [float(baseline[s]) for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    s = summarize(diffs)
    out = Paired(len(seeds), s.mean, s.std, s.ci, seeds=seeds)
    if len(seeds) < 2:
        return out
    with warnings.catch_warnings():  # identical or near-identical pairs: scipy warns, the values say it
        warnings.simplefilter("ignore", RuntimeWarning)
        if s.std:  # a constant difference has no t statistic
            out.p_t = _p(stats.ttest_rel(a, b).pvalue)
        if len(seeds) >= MIN_WILCOXON and any(diffs):
            out.p_w = _p(stats.wilcoxon(a, b).pvalue)
    return out


def confirmation_stats(rows: Sequence[dict], roles: dict[str, str], metrics: Sequence[str] = METRICS) -> Confirmation:
    """rows: {"cell": label, "seed": s, <metric>: value or None}; roles: label -> config | baseline,
    in display order. Missing or non-finite values are left out (a seed a cell lacks is not paired)."""
    by: dict[str, dict[str, dict]] = {label: {m: {} for m in metrics} for label in roles}
    for r in rows:
        cell = by.get(r.get("cell"))
        if cell is None:
            continue
        for m in metrics:
            v = r.get(m)
            if v is not None and math.isfinite(v):
                cell[m][r["seed"]] = float(v)
    present = list(metrics)  # a metric no trial has (no test split) keeps its columns, empty
    cells = {c: {m: summarize(list(by[c][m].values())) for m in present} for c in by}
    configs = [c for c, role in roles.items() if role == CONFIG]
    baselines = [c for c, role in roles.items() if role == BASELINE]
    pairs = {(c, b): {m: paired(by[c][m], by[b][m]) for m in present} for c in configs for b in baselines}
    return Confirmation(cells, pairs, dict(roles), present, _notes(by, metrics, cells, pairs))


def _notes(by, metrics, cells, pairs) -> list[str]:
    notes = [f"no {m} in any trial: its columns are empty" for m in metrics if not any(by[c][m] for c in by)]
    if any(s.n == 1 for c in cells.values() for s in c.values()):
        notes.append("a cell with 1 seed has no standard deviation, confidence interval or p-value (needs 2 seeds)")
    short = [p for ps in pairs.values() for p in ps.values() if 2 <= p.n < MIN_WILCOXON]
    if short:
        notes.append(f"Wilcoxon signed-rank needs {MIN_WILCOXON} or more paired seeds: not run")
    sizes = {p.n for ps in pairs.values() for p in ps.values() if p.n}
    cell_sizes = {s.n for c in cells.values() for s in c.values() if s.n}
    if sizes and len(sizes | cell_sizes) > 1:
        notes.append("cells ran different seeds: differences are paired over the seeds both ran (pairs column)")
    return notes


# ------------------------------------------------------------------ rendering


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v * SCALE:.{digits}f}"


def _pm(mean, std) -> str:
    if mean is None:
        return "-"
    return _num(mean) if std is None else f"{_num(mean)} ± {_num(std)}"


def _ci(ci) -> str:
    return "-" if ci is None else f"[{_num(ci[0])}, {_num(ci[1])}]"


def _pval(p: float | None) -> str:
    if p is None:
        return "-"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if p < ALPHA else "")


def grids(c: Confirmation, title: str):
    """(cells grid, paired-differences grid or None) as orchestrator.results.tables.Grid."""
    from orchestrator.results.tables import Entry, Grid

    heads = ["cell", "role"]
    for m in c.metrics:
        heads += [HEADERS.get(m, m), f"{HEADERS.get(m, m).removesuffix(' (%)')} {LEVEL:.0%} CI"]
    rows = []
    for label, role in c.roles.items():
        row = [Entry(label), Entry(role)]
        for m in c.metrics:
            s = c.cells[label][m]
            row += [Entry(_pm(s.mean, s.std), s.mean, s.std), Entry(_ci(s.ci))]
        rows.append(row + [Entry(str(max((s.n for s in c.cells[label].values()), default=0)))])
    cells = Grid(f"{title}: mean ± std and {LEVEL:.0%} t-interval over seeds", [*heads, "n"], rows, 2)
    if not c.pairs:
        return cells, None
    heads = ["configuration", "baseline"]
    for m in c.metrics:
        short = m.removesuffix("_miou")
        heads += [f"Δ {short} (pts)", f"Δ {short} {LEVEL:.0%} CI", f"p {short} (t)", f"p {short} (W)"]
    rows = []
    for (conf, base), per in c.pairs.items():
        row = [Entry(conf), Entry(base)]
        for m in c.metrics:
            p = per[m]
            row += [
                Entry(_pm(p.mean, p.std), p.mean, p.std),
                Entry(_ci(p.ci)),
                Entry(_pval(p.p_t)),
                Entry(_pval(p.p_w)),
            ]
        rows.append(row + [Entry(str(max((p.n for p in per.values()), default=0)))])
    title2 = (
        f"{title}: paired difference (configuration - baseline) on the same seeds; "
        f"paired t-test (t), Wilcoxon signed-rank (W) from {MIN_WILCOXON} pairs; * p < {ALPHA:g}"
    )
    return cells, Grid(title2, [*heads, "pairs"], rows, 2)


def to_csv_tables(c: Confirmation):
    """Long-format numbers (mIoU in %): one row per cell x metric, one per pair x metric."""
    import pyarrow as pa

    def pct(v):
        return None if v is None else v * SCALE

    cells = [
        {
            "cell": label,
            "role": role,
            "metric": m,
            "n": s.n,
            "mean": pct(s.mean),
            "std": pct(s.std),
            "ci_low": pct(s.ci[0]) if s.ci else None,
            "ci_high": pct(s.ci[1]) if s.ci else None,
        }
        for label, role in c.roles.items()
        for m, s in c.cells[label].items()
    ]
    pairs = [
        {
            "configuration": conf,
            "baseline": base,
            "metric": m,
            "pairs": p.n,
            "mean_diff": pct(p.mean),
            "std_diff": pct(p.std),
            "ci_low": pct(p.ci[0]) if p.ci else None,
            "ci_high": pct(p.ci[1]) if p.ci else None,
            "p_ttest": p.p_t,
            "p_wilcoxon": p.p_w,
            "significant": p.significant,
        }
        for (conf, base), per in c.pairs.items()
        for m, p in per.items()
    ]
    return pa.Table.from_pylist(cells), (pa.Table.from_pylist(pairs) if pairs else None)


# ------------------------------------------------------------------ the report's hook


def cells_of(parent_tags: dict) -> list[dict]:
    """The confirmation's cells (label, role, source trial, point) from its parent run's tag."""
    try:
        cells = json.loads(parent_tags.get(T.CONFIRM_CELLS) or "[]")
    except ValueError:
        return []
    return [c for c in cells if isinstance(c, dict) and "label" in c and "role" in c] if isinstance(cells, list) else []


def rows_of(table) -> list[dict]:
    """(cell, seed, val/test mIoU) of the trials that finished every epoch (status FINISHED)."""
    from orchestrator.tracking.reader import PARAM

    out = []
    for r in table.to_pylist():
        if r.get("status") == "FINISHED":
            out.append(
                {"cell": r.get(PARAM + "label"), "seed": r.get(PARAM + "seed"), **{m: r.get(m) for m in METRICS}}
            )
    return out


def write_confirmation(sweep, table, out: Path, console=None) -> tuple[list[Path], list[str]]:
    """For a confirmation sweep (parent tag xgd.confirm.cells): confirmation[_paired].md/.tex/.csv
    under `out`; returns (files, Markdown lines for report.md)."""
    import pyarrow.csv as pcsv

    from orchestrator.results import tables
    from orchestrator.tracking import reader

    cells = cells_of(sweep.parent.data.tags)
    if not cells:
        return [], []
    source = sweep.parent.data.tags.get(T.CONFIRM_SOURCE, "?")
    conf = confirmation_stats(rows_of(table), {c["label"]: c["role"] for c in cells})
    files, md = [], []
    for stem, grid, csv in zip(("confirmation", "confirmation_paired"), grids(conf, sweep.name), to_csv_tables(conf)):
        if grid is None:
            continue
        if console is not None:
            console.print(tables.to_rich(grid))
        (out / f"{stem}.md").write_text(tables.to_markdown(grid))
        tex = tables.to_latex(grid, label=f"tab:{reader.safe_name(sweep.name)}-{stem}")
        (out / f"{stem}.tex").write_text(tex.replace("Δ", r"$\Delta$").replace("<0.001", r"$<$0.001"))
        pcsv.write_csv(csv, out / f"{stem}.csv")
        files += [out / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
        md.append(tables.to_markdown(grid))
    lines = [f"- {c['label']}: {_describe(c)}" for c in cells]
    md += [f"Cells (source sweep `{source}`):", "", *lines, ""]
    md += [f"Note: {n}." for n in conf.notes]
    if console is not None:
        for n in conf.notes:
            console.print(f"[dim]note: {n}[/]")
    return files, md


def confirmed_by(client, sweep) -> list[str]:
    """For a source sweep: a note naming each confirmation of it (parent tag xgd.confirm.source_run)."""
    from orchestrator.tracking.reader import search_all

    runs = search_all(client, T.equals(T.CONFIRM_SOURCE_RUN, sweep.parent.info.run_id), [sweep.experiment_id])
    names = dict.fromkeys(r.data.tags.get(T.SWEEP) for r in runs if r.data.tags.get(T.KIND) == T.SWEEP_RUN)
    return [f"confirmed over fresh seeds by {n}: python -m orchestrator report {n}" for n in names if n]


def _describe(cell: dict) -> str:
    point = cell.get("point") or {}
    settings = ", ".join(f"{k}={v}" for k, v in point.items())
    trial = f"source trial {cell['trial']}; " if cell.get("trial") else ""
    return trial + (settings or "the sweep's train: settings")
