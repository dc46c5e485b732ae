"""The confirmation table of a `confirm` run (orchestrator.run.confirm): the chosen configurations
and the baselines, each trained with the same N seeds, compared on the held-out test split.

Test is the primary split. Val (`best_val_miou`: the best-on-val weights, the ones test was scored
with) is the selection split: the configurations and best.pt were chosen on it, so it is shown
(mean ± std, seed interval) but gets no p-value. Per cell and metric: mean, standard deviation
(n - 1) and a 95% t-interval over seeds. Per pair (a cell minus the cell it is compared with: each
cell's `against` list in the cells tag, else every configuration minus every baseline): the paired
difference over the seeds both ran and its t-interval; on test, the paired t-test (the primary
test, fixed before the data) Holm-adjusted over the table's pairs (`*` marks adjusted p < 0.05),
the Wilcoxon signed-rank test from 6 pairs as a secondary column that marks nothing, and a paired
bootstrap over test images (per-image confusion counts each trial logs as test_confusion.npz): the
interval a finite test set puts around the difference. The statistics are in
orchestrator.results.stats; `confirmation_stats` is a pure function of (cell, seed, metric) rows,
pairs and counts; `write_confirmation` renders it (orchestrator.results.confirm_tables) as
Markdown, LaTeX and CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.results.confirm_tables import (
    BOOTSTRAP,
    DIFFERENT,
    METRICS,
    SELECTION,
    SHORT,
    grids,
    to_csv_tables,
)
from orchestrator.results.stats import (
    ALPHA,
    BOOT_SEED,
    LEVEL,
    MIN_WILCOXON,
    RESAMPLES,
    Paired,
    Summary,
    bootstrap_diff,
    holm,
    paired,
    summarize,
)
from orchestrator.spec.space import STUDENT
from orchestrator.tracking import tags as T
from trainables.reporting import FILES, TEST_CONFUSION

COUNTS_FILE = FILES[TEST_CONFUSION]  # the trial run's artifact: per-image test confusion counts
CONFIG, BASELINE = "config", "baseline"
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class Confirmation:
    cells: dict[str, dict[str, Summary]]  # label -> metric -> summary
    pairs: dict[tuple[str, str], dict[str, Paired]]  # (cell, minus) -> metric -> paired
    roles: dict[str, str]  # label -> config | baseline
    metrics: list[str]
    notes: list[str] = field(default_factory=list)
    different: set[tuple[str, str]] = field(default_factory=set)  # pairs on different students


def default_pairs(roles: dict[str, str]) -> list[tuple[str, str]]:
    """Every configuration minus every baseline (a confirmation without `against` lists)."""
    configs = [c for c, role in roles.items() if role == CONFIG]
    return [(c, b) for c in configs for b in roles if roles[b] == BASELINE]


def pairs_of(cells: list[dict]) -> list[tuple[str, str]]:
    """(cell, minus) from the cells' `against` lists when any cell has one, else default_pairs."""
    if not any("against" in c for c in cells):
        return default_pairs({c["label"]: c["role"] for c in cells})
    return [(c["label"], str(o)) for c in cells for o in (c.get("against") or [])]


def students_of(cells: list[dict]) -> dict[str, str | None]:
    return {c["label"]: (c.get("point") or {}).get(STUDENT) for c in cells}


def confirmation_stats(
    rows: Sequence[dict],
    roles: dict[str, str],
    pairs: Sequence[tuple[str, str]],
    *,
    metrics: Sequence[str] = METRICS,
    counts: dict | None = None,
    students: dict[str, str | None] | None = None,
    resamples: int = RESAMPLES,
    seed: int = BOOT_SEED,
) -> Confirmation:
    """rows: {"cell": label, "seed": s, <metric>: value or None}; roles: label -> role, in display
    order; pairs: (cell, minus) compared as cell - minus; counts: (cell, seed) -> (N, K, K)
    per-image test confusion counts; students: label -> student (pairs that differ are marked).
    Missing or non-finite values are left out (a seed a cell lacks is not paired)."""
    for a, b in pairs:
        for label in (a, b):
            if label not in roles:
                raise UserError(f"pair ({a!r}, {b!r}): {label!r} is not a cell; cells: {', '.join(roles)}")
    by: dict[str, dict[str, dict]] = {label: {m: {} for m in metrics} for label in roles}
    for r in rows:
        cell = by.get(r.get("cell"))
        if cell is None:
            continue
        for m in metrics:
            v = r.get(m)
            if v is not None and math.isfinite(v):
                cell[m][r["seed"]] = float(v)
    cells = {c: {m: summarize(list(by[c][m].values())) for m in metrics} for c in by}
    out = {pair: {m: paired(by[pair[0]][m], by[pair[1]][m], m not in SELECTION) for m in metrics} for pair in pairs}
    for m in metrics:  # one family per metric: the table's pairs
        adjusted = holm([per[m].p_t for per in out.values()])
        for per, p in zip(out.values(), adjusted):
            per[m].p_holm = p
    missing = _bootstrap(out, counts or {}, metrics, resamples, seed)
    students = students or {}
    different = {(a, b) for a, b in pairs if students.get(a) and students.get(b) and students[a] != students[b]}
    conf = Confirmation(cells, out, dict(roles), list(metrics), different=different)
    conf.notes = _notes(by, conf, missing, resamples, seed)
    return conf


def _bootstrap(pairs, counts: dict, metrics, resamples: int, seed: int) -> bool:
    """Each pair's test-image interval over its paired seeds; True when a pair lacked counts."""
    if BOOTSTRAP not in metrics:
        return False
    missing = False
    for (a, b), per in pairs.items():
        p = per[BOOTSTRAP]
        if not p.seeds:
            continue
        have = [s for s in p.seeds if (a, s) in counts and (b, s) in counts]
        if len(have) < len(p.seeds):
            missing = True
            continue
        p.boot_ci = bootstrap_diff(
            [counts[(a, s)] for s in have], [counts[(b, s)] for s in have], resamples=resamples, seed=seed
        )
    return missing


def _notes(by, conf: Confirmation, missing: bool, resamples: int, seed: int) -> list[str]:
    cells, pairs, metrics = conf.cells, conf.pairs, conf.metrics
    notes = [f"no {m} in any trial: its columns are empty" for m in metrics if not any(by[c][m] for c in by)]
    for m in metrics:
        if m in SELECTION:
            notes.append(
                f"{SHORT.get(m, m)} ({m}: the best-on-val weights, which test was scored with) is the selection "
                "split: the configurations and best.pt were chosen on it, so it gets no p-value"
            )
    tested = [m for m in metrics if m not in SELECTION]
    if pairs and tested:
        notes.append(
            f"primary test: the paired t-test over seeds, Holm-adjusted over the table's {len(pairs)} pair(s) "
            f"per metric; * marks adjusted p < {ALPHA:g}; Wilcoxon signed-rank (W) is secondary and marks nothing"
        )
    if pairs and BOOTSTRAP in metrics:
        notes.append(
            f"test-image interval: {LEVEL:.0%} percentile interval of the mean paired difference over "
            f"{resamples} resamples of the test images (the same images for both cells and every seed; "
            f"RNG seed {seed}): what the finite test set adds, beside the seeds' t-interval"
        )
    if missing:
        notes.append(
            f"a pair whose trials lack per-image test counts (artifact {COUNTS_FILE}: trials from before it "
            "was kept, or without a test split) has no test-image interval (-)"
        )
    if conf.different:
        notes.append(f"{DIFFERENT} the two cells train different students: the difference mixes student and method")
    if any(s.n == 1 for c in cells.values() for s in c.values()):
        notes.append("a cell with 1 seed has no standard deviation, confidence interval or p-value (needs 2 seeds)")
    short = [p for ps in pairs.values() for m, p in ps.items() if m not in SELECTION and 2 <= p.n < MIN_WILCOXON]
    if short:
        notes.append(f"Wilcoxon signed-rank needs {MIN_WILCOXON} or more paired seeds: not run")
    sizes = {p.n for ps in pairs.values() for p in ps.values() if p.n}
    cell_sizes = {s.n for c in cells.values() for s in c.values() if s.n}
    if sizes and len(sizes | cell_sizes) > 1:
        notes.append("cells ran different seeds: differences are paired over the seeds both ran (pairs column)")
    return notes


# ------------------------------------------------------------------ the report's hook


def cells_of(parent_tags: dict) -> list[dict]:
    """The confirmation's cells (label, role, source trial, point, optional `against`: the labels
    it is compared with) from its parent run's tag."""
    try:
        cells = json.loads(parent_tags.get(T.CONFIRM_CELLS) or "[]")
    except ValueError:
        return []
    return [c for c in cells if isinstance(c, dict) and "label" in c and "role" in c] if isinstance(cells, list) else []


def rows_of(table) -> list[dict]:
    """(run id, cell, seed, val/test mIoU) of the trials that finished every epoch (status FINISHED)."""
    from orchestrator.tracking.reader import PARAM

    out = []
    for r in table.to_pylist():
        if r.get("status") == "FINISHED":
            cell = {"run_id": r.get("run_id"), "cell": r.get(PARAM + "label"), "seed": r.get(PARAM + "seed")}
            out.append({**cell, **{m: r.get(m) for m in METRICS}})
    return out


def counts_of(client, rows: list[dict]) -> dict:
    """(cell, seed) -> the (N, K, K) per-image test counts its trial run logged (COUNTS_FILE);
    runs without the artifact (older trials) or an unreadable artifact store are left out."""
    import os
    import tempfile

    import numpy as np

    out = {}
    if client is None:
        return out
    bar = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"  # one small file per trial: no progress bar each
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            if not r.get("run_id"):
                continue
            try:
                path = client.download_artifacts(r["run_id"], COUNTS_FILE, str(Path(tmp, r["run_id"])))
                with np.load(path) as f:
                    out[(r["cell"], r["seed"])] = f["counts"]
            except Exception:  # no such artifact, or a store that cannot be read: the column says "-"
                continue
    if bar is None:
        os.environ.pop(PROGRESS_BAR, None)
    else:
        os.environ[PROGRESS_BAR] = bar
    return out


def write_confirmation(sweep, table, out: Path, console=None, client=None) -> tuple[list[Path], list[str]]:
    """For a confirmation sweep (parent tag xgd.confirm.cells): confirmation[_paired].md/.tex/.csv
    under `out`; returns (files, Markdown lines for report.md). `client` reads the trials'
    per-image test counts (without it the test-image interval is "-")."""
    import pyarrow.csv as pcsv

    from orchestrator.results import tables
    from orchestrator.tracking import reader

    cells = cells_of(sweep.parent.data.tags)
    if not cells:
        return [], []
    source = sweep.parent.data.tags.get(T.CONFIRM_SOURCE, "?")
    rows = rows_of(table)
    roles = {c["label"]: c["role"] for c in cells}
    conf = confirmation_stats(rows, roles, pairs_of(cells), counts=counts_of(client, rows), students=students_of(cells))
    files, md = [], []
    for stem, grid, csv in zip(("confirmation", "confirmation_paired"), grids(conf, sweep.name), to_csv_tables(conf)):
        if grid is None:
            continue
        if console is not None:
            console.print(tables.to_rich(grid))
        (out / f"{stem}.md").write_text(tables.to_markdown(grid))
        tex = tables.to_latex(grid, label=f"tab:{reader.safe_name(sweep.name)}-{stem}")
        tex = tex.replace("Δ", r"$\Delta$").replace("<0.001", r"$<$0.001").replace(DIFFERENT, r"$\dagger$")
        (out / f"{stem}.tex").write_text(tex)
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
