"""Paper-layout tables from the trials table: rows are cells (every param that varies, seed
excepted; a listed cell's `label` stands for the params it fixes), columns are metrics as
mean +- std over seeds, best in bold and second underlined. One neutral `Grid` per layout,
rendered to rich, Markdown, LaTeX and CSV."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from orchestrator.spec.space import LABEL as CELL_LABEL
from orchestrator.spec.space import STUDENT as STUDENT_KEY
from orchestrator.tracking.reader import PARAM, metric_columns

LABEL = PARAM + CELL_LABEL  # an ablation cell's name, as a trials-table column
STUDENT = PARAM + STUDENT_KEY  # the named student a sweep's `student` entry chose
# Row factors come in this order (the paper's: student, method, CAM, weights), then the rest by name.
FACTOR_ORDER = (
    LABEL,
    STUDENT,
    "params.model.arch",
    "params.model.encoder",
    "params.distill.method",
    "params.distill.cam",
    "params.distill.cam_target",
    "params.distill.alpha",
    "params.distill.beta",
    "params.distill.tau",
)
# Params that name or place a trial rather than choose its method: never a row factor.
NOT_FACTORS = ("params.seed", "params.name")
NOT_FACTOR_PREFIXES = ("params.run.",)


@dataclass(frozen=True)
class Col:
    key: str
    header: str
    better: str | None = None  # "max" | "min" | None (not ranked)
    scale: float = 1.0
    digits: int = 2
    spread: bool = True  # show "± std" (off for deterministic costs such as FLOPs)


COLUMNS: dict[str, Col] = {
    c.key: c
    for c in (
        Col("val_miou", "val mIoU (%, last epoch)", "max", 100.0),
        # a finished trial's val mIoU: its best-on-val epoch, the weights of best.pt, test_* and expl_*
        Col("best_val_miou", "val mIoU (%)", "max", 100.0),
        Col("test_miou", "test mIoU (%)", "max", 100.0),  # the best-on-val weights on the held-out split
        Col("val_pixel_acc", "val pixel acc (%, last epoch)", "max", 100.0),
        Col("gflops", "GFLOPs", "min", spread=False),
        Col("params", "params (M)", "min", 1e-6, spread=False),
        Col("latency_ms", "latency (ms)", "min"),
        Col("step_time_s", "s / iter", "min", 1.0, 4),
        Col("saliency_time_s", "CAM s / iter", "min", 1.0, 4),
        Col("wall_time_s", "wall (s)", None, 1.0, 0),
        # trainables.device_stats: the last epoch's peak (CUDA allocated, else the process's RSS)
        Col("peak_mem_mb", "peak mem (MB, last epoch)", "min", 1.0, 0),
        Col("gpu_util_pct", "GPU util (%, last epoch)", None, 1.0, 0),
        Col("expl_sal_spearman", "CAM Spearman (S-T)", "max", 1.0, 3),
        Col("expl_topk_iou", "CAM top-20% IoU (S-T)", "max", 1.0, 3),
        Col("expl_focus", "focus (S-T)", "max", 1.0, 3),
    )
}


def col(key: str) -> Col:
    if key in COLUMNS:
        return COLUMNS[key]
    for prefix in ("val_iou_", "test_iou_"):
        if key.startswith(prefix):
            return Col(key, key.removeprefix(prefix), "max", 100.0)
    return Col(key, key, None, 1.0, 4)


def _summary(t: pa.Table) -> list[str]:
    device = [k for k in ("peak_mem_mb", "gpu_util_pct") if k in t.column_names]  # trials of older runs lack them
    return ["best_val_miou", "test_miou", "val_pixel_acc", "gflops", "params", "latency_ms", *device]


def _per_class(t: pa.Table, split: str = "val") -> list[str]:
    return [*sorted(k for k in t.column_names if k.startswith(f"{split}_iou_")), f"{split}_miou"]


def _per_class_test(t: pa.Table) -> list[str]:
    return _per_class(t, "test")


def _alignment(t: pa.Table) -> list[str]:
    return ["best_val_miou", "test_miou", "expl_sal_spearman", "expl_topk_iou", "expl_focus"]


def _timing(t: pa.Table) -> list[str]:
    return ["best_val_miou", "step_time_s", "saliency_time_s", "wall_time_s"]


# name -> (title, metric keys for a trials table). A sweep's parent run may pick layouts with a
# comma-separated `xgd.layouts` tag (orchestrator.tracking.tags.LAYOUTS); otherwise `default_layouts` decides.
LAYOUTS: dict[str, tuple[str, Callable[[pa.Table], list[str]]]] = {
    "summary": ("mIoU, cost and speed", _summary),
    "per_class": ("per-class val IoU (%, last epoch)", _per_class),
    "per_class_test": ("per-class IoU on the test split (%)", _per_class_test),
    "timing": ("time per iteration (CAM methods)", _timing),
    "alignment": ("mIoU and student-teacher CAM alignment", _alignment),
}


def default_layouts(t: pa.Table) -> list[str]:
    out = ["summary", "per_class"]
    out += ["per_class_test"] if "test_miou" in t.column_names else []
    return out + ["timing"] if "params.distill.cam" in factors(t) else out


# ------------------------------------------------------------------ grouping


def factors(t: pa.Table) -> list[str]:
    """Param columns that vary across trials (seed, name and run.* excepted). A named student is
    one factor: the model.* params it fixes (arch, encoder) are not factors of their own. An empty
    value (a setting the trial did not have) does not count as a value: a CAM that is gradcam++ in
    every XGD cell and empty in the PI cell is no factor (the method says it)."""
    out = []
    for name in t.column_names:
        if not name.startswith(PARAM) or name in NOT_FACTORS or name.startswith(NOT_FACTOR_PREFIXES):
            continue
        if len({_key(v) for v in t.column(name).to_pylist() if v is not None}) > 1:
            out.append(name)
    if STUDENT in out:
        out = [f for f in out if not (f.startswith(PARAM + "model.") and fixed_by(t, f, STUDENT))]
    rank = {k: i for i, k in enumerate(FACTOR_ORDER)}
    return sorted(out, key=lambda k: (rank.get(k, len(rank)), k))


def fixed_by(t: pa.Table, name: str, by: str) -> bool:
    """Whether column `name` has one value per value of column `by`."""
    seen: dict = {}
    return all(
        seen.setdefault(_key(b), _key(v)) == _key(v)
        for b, v in zip(t.column(by).to_pylist(), t.column(name).to_pylist())
    )


def row_factors(t: pa.Table) -> list[str]:
    """The factors that name a row: with cell labels, the label plus the factors that still vary
    within a label (a factor with one value per label is what the label says)."""
    by = factors(t)
    if LABEL not in by:
        return by
    return [LABEL, *(f for f in by if f != LABEL and not fixed_by(t, f, LABEL))]


def _key(v):
    return (v is None, str(type(v)), v if v is not None else 0)


@dataclass
class Cell:
    values: dict[str, list[float]] = field(default_factory=dict)
    seeds: int = 0


def group(t: pa.Table, by: list[str], metrics: list[str], labels: Sequence[str] = ()) -> dict[tuple, Cell]:
    """Cell key (values of `by`) -> metric values over the cell's trials, in sorted key order;
    labelled cells in the order of `labels` (the spec's), unknown labels after them."""
    cells: dict[tuple, Cell] = {}
    cols = {m: t.column(m).to_pylist() for m in metrics if m in t.column_names}
    keys = list(zip(*(t.column(b).to_pylist() for b in by))) if by else [()] * len(t)
    for i, k in enumerate(keys):
        cell = cells.setdefault(k, Cell())
        cell.seeds += 1
        for m, vals in cols.items():
            v = vals[i]
            if v is not None and math.isfinite(v):
                cell.values.setdefault(m, []).append(float(v))
    rank = {lab: i for i, lab in enumerate(labels)} if by and by[0] == LABEL else {}

    def order(key: tuple):
        return (rank.get(key[0], len(rank)) if rank else 0, *(_key(v) for v in key))

    return dict(sorted(cells.items(), key=lambda kv: order(kv[0])))


# ------------------------------------------------------------------ the neutral grid


@dataclass
class Entry:
    text: str
    mean: float | None = None
    std: float | None = None
    rank: int = 0  # 1 best, 2 second, 0 neither


@dataclass
class Grid:
    title: str
    headers: list[str]
    rows: list[list[Entry]]
    n_label: int  # leading label columns


def _label(v) -> str:
    return "-" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))


def short_names(keys: list[str]) -> list[str]:
    """'params.distill.alpha' -> 'alpha' unless two factors share a last segment."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k.removeprefix(PARAM) for k, s in zip(keys, last)]


def _rank(entries: list[Entry], better: str | None) -> None:
    distinct = sorted({e.mean for e in entries if e.mean is not None}, reverse=better == "max")
    if better is None or len(distinct) < 2:
        return
    for e in entries:
        if e.mean == distinct[0]:
            e.rank = 1
        elif e.mean == distinct[1]:
            e.rank = 2


def build_grid(t: pa.Table, layout: str, labels: Sequence[str] = ()) -> Grid | None:
    """The layout's table, or None when the trials hold none of its metrics. `labels`: the
    ablation's cell labels in spec order (parent tag xgd.labels), the order of labelled rows."""
    title, pick = LAYOUTS[layout]
    present = set(metric_columns(t))
    keys = [k for k in dict.fromkeys(pick(t)) if k in present]
    if not keys:
        return None
    by = row_factors(t)
    cells = group(t, by, keys, labels)
    cols = [col(k) for k in keys]
    rows: list[list[Entry]] = []
    for key, cell in cells.items():
        row = [Entry(_label(v)) for v in key] or [Entry("all trials")]
        for c in cols:
            vals = [v * c.scale for v in cell.values.get(c.key, [])]
            mean = statistics.fmean(vals) if vals else None
            std = statistics.stdev(vals) if len(vals) > 1 else None
            row.append(Entry(_fmt(mean, std if c.spread else None, c.digits), mean, std))
        row.append(Entry(str(cell.seeds)))
        rows.append(row)
    n_label = max(len(by), 1)
    for j, c in enumerate(cols):
        _rank([r[n_label + j] for r in rows], c.better)
    headers = (short_names(by) or ["cell"]) + [c.header for c in cols] + ["n"]
    return Grid(title, headers, rows, n_label)


def stopped_grid(t: pa.Table, by: list[str], metric: str) -> Grid | None:
    """Trials that ended before their last epoch, one row each (most epochs first): their params
    (`by`), how they ended, the metric at their last and best epoch, and the epochs they ran."""
    if not len(t):
        return None
    c = col(metric)
    best = "best_" + metric if "best_" + metric in t.column_names else None
    rows = []
    for r in sorted(t.to_pylist(), key=lambda r: (-(r.get("epochs_done") or 0), -(r.get(metric) or 0))):
        row = [Entry(str(r.get("trial_id") or r["run_name"])), *(Entry(_label(r.get(b))) for b in by)]
        row.append(Entry(r.get("state") or "killed"))
        for key in filter(None, (metric, best)):
            v = r.get(key)
            v = None if v is None or not math.isfinite(v) else v * c.scale
            row.append(Entry(_fmt(v, None, c.digits), v))
        row.append(Entry(_label(r.get("epochs_done"))))
        rows.append(row)
    # a stopped trial shows both (ASHA ranked it by the per-epoch value); the headers say which is which
    named = ["last-epoch " + col(best).header, "best-epoch " + col(best).header] if best else [c.header]
    headers = ["trial", *short_names(by), "ended", *named, "epochs"]
    return Grid(f"stopped early ({len(rows)} trials, not counted above)", headers, rows, len(by) + 2)


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


# ------------------------------------------------------------------ renderers


def to_rich(g: Grid):
    from rich.table import Table

    table = Table(title=g.title, title_justify="left")
    for i, h in enumerate(g.headers):
        table.add_column(h, justify="left" if i < g.n_label else "right")
    style = {1: "bold", 2: "underline", 0: ""}
    for row in g.rows:
        table.add_row(*(f"[{style[e.rank]}]{_rich_escape(e.text)}[/]" if e.rank else _rich_escape(e.text) for e in row))
    return table


def _rich_escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def to_markdown(g: Grid) -> str:
    wrap = {1: "**{}**", 2: "<u>{}</u>", 0: "{}"}
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [
        f"### {g.title}",
        "",
        "| " + " | ".join(esc(h) for h in g.headers) + " |",
        "|" + "|".join(":--" if i < g.n_label else "--:" for i in range(len(g.headers))) + "|",
    ]
    lines += ["| " + " | ".join(wrap[e.rank].format(esc(e.text)) for e in row) + " |" for row in g.rows]
    return "\n".join(lines) + "\n"


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def to_latex(g: Grid, label: str = "") -> str:
    wrap = {1: r"\textbf{{{}}}", 2: r"\underline{{{}}}", 0: "{}"}

    def cell(e: Entry) -> str:
        text = tex_escape(e.text).replace(" ± ", r" $\pm$ ")
        return wrap[e.rank].format(text)

    spec = "l" * g.n_label + "r" * (len(g.headers) - g.n_label)
    out = [r"\begin{table}[t]", r"\centering", f"\\caption{{{tex_escape(g.title)}}}"]
    if label:
        out.append(f"\\label{{{tex_escape(label)}}}")
    out += [
        f"\\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in g.headers) + r" \\",
        r"\midrule",
    ]
    out += [" & ".join(cell(e) for e in row) + r" \\" for row in g.rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_arrow(g: Grid) -> pa.Table:
    """Means and stds as numbers (for CSV/Parquet), label columns as text."""
    data: dict[str, list] = {}
    for j, h in enumerate(g.headers):
        if j < g.n_label or j == len(g.headers) - 1:
            data[h] = [r[j].text for r in g.rows]
        else:
            data[h] = [r[j].mean for r in g.rows]
            data[f"{h} std"] = [r[j].std for r in g.rows]
    return pa.table(data)
