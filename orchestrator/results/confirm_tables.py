"""The confirmation's tables (orchestrator.results.confirm): the cells grid and the paired grid as
orchestrator.results.tables.Grid, and their numbers as long-format CSV tables. Val is labelled
the selection split and has no p-value columns; the test columns' `*` is on the Holm-adjusted p."""

from __future__ import annotations

from orchestrator.results.stats import ALPHA, LEVEL, MIN_WILCOXON, Paired

METRICS = ("best_val_miou", "test_miou")
SELECTION = ("best_val_miou",)  # chosen on: no p-value, no mark
HEADERS = {"best_val_miou": "val mIoU (%), selection split", "test_miou": "test mIoU (%)"}
SHORT = {"best_val_miou": "val", "test_miou": "test"}
BOOTSTRAP = "test_miou"  # the metric the per-image counts are of
SCALE = 100.0  # mIoU is stored as a fraction and shown in %
DIFFERENT = "†"  # marks a pair of cells on different students


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v * SCALE:.{digits}f}"


def _pm(mean, std) -> str:
    if mean is None:
        return "-"
    return _num(mean) if std is None else f"{_num(mean)} ± {_num(std)}"


def _ci(ci) -> str:
    return "-" if ci is None else f"[{_num(ci[0])}, {_num(ci[1])}]"


def _pval(p: float | None, star: bool = False) -> str:
    if p is None:
        return "-"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if star and p < ALPHA else "")


def _pair_heads(m: str) -> list[str]:
    short = SHORT.get(m, m)
    heads = [f"Δ {short} (pts)", f"Δ {short} {LEVEL:.0%} CI (seeds)"]
    if m in SELECTION:
        return heads
    heads += [f"Δ {short} {LEVEL:.0%} CI (test images)"] if m == BOOTSTRAP else []
    return heads + [f"p {short} (t)", f"p {short} (Holm)", f"p {short} (W)"]


def _pair_entries(m: str, p: Paired) -> list:
    from orchestrator.results.tables import Entry

    row = [Entry(_pm(p.mean, p.std), p.mean, p.std), Entry(_ci(p.ci))]
    if m in SELECTION:
        return row
    row += [Entry(_ci(p.boot_ci))] if m == BOOTSTRAP else []
    return row + [Entry(_pval(p.p_t)), Entry(_pval(p.p_holm, star=True)), Entry(_pval(p.p_w))]


def grids(c, title: str):
    """(cells grid, paired-differences grid or None) as orchestrator.results.tables.Grid."""
    from orchestrator.results.tables import Entry, Grid

    heads = ["cell", "role"]
    for m in c.metrics:
        heads += [HEADERS.get(m, m), f"{SHORT.get(m, m)} {LEVEL:.0%} CI"]
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
    heads = ["cell", "minus"] + [h for m in c.metrics for h in _pair_heads(m)]
    rows = []
    for (a, b), per in c.pairs.items():
        row = [Entry(a), Entry(f"{b} {DIFFERENT}" if (a, b) in c.different else b)]
        row += [e for m in c.metrics for e in _pair_entries(m, per[m])]
        rows.append(row + [Entry(str(max((p.n for p in per.values()), default=0)))])
    title2 = (
        f"{title}: paired difference (cell - minus) on the same seeds; val is the selection split (no p-value); "
        f"test: paired t-test (t), Holm-adjusted over the table's pairs (Holm; * adjusted p < {ALPHA:g}), "
        f"Wilcoxon signed-rank (W, from {MIN_WILCOXON} pairs; marks nothing)"
    )
    return cells, Grid(title2, [*heads, "pairs"], rows, 2)


def to_csv_tables(c):
    """Long-format numbers (mIoU in %): one row per cell x metric, one per pair x metric."""
    import pyarrow as pa

    def pct(v):
        return None if v is None else v * SCALE

    cells = [
        {
            "cell": label,
            "role": role,
            "metric": m,
            "split": "selection" if m in SELECTION else "test",
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
            "cell": a,
            "minus": b,
            "metric": m,
            "pairs": p.n,
            "mean_diff": pct(p.mean),
            "std_diff": pct(p.std),
            "ci_low": pct(p.ci[0]) if p.ci else None,
            "ci_high": pct(p.ci[1]) if p.ci else None,
            "boot_ci_low": pct(p.boot_ci[0]) if p.boot_ci else None,
            "boot_ci_high": pct(p.boot_ci[1]) if p.boot_ci else None,
            "p_ttest": p.p_t,
            "p_holm": p.p_holm,
            "p_wilcoxon": p.p_w,
            "significant": p.significant,
            "different_students": (a, b) in c.different,
        }
        for (a, b), per in c.pairs.items()
        for m, p in per.items()
    ]
    return pa.Table.from_pylist(cells), (pa.Table.from_pylist(pairs) if pairs else None)
