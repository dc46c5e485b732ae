"""The sweep's terminal view: one row per trial, a progress bar with ETA, the best so far, and a
summary at the end. Fed by the driver's Tune callback (Ray's own tables are off unless --verbose).
Without a terminal (CI, `ray job submit` logs, stdout to a file) it prints one line per trial
event instead (started, each epoch's report, ended), never wrapped, and a closing table in plain
columns, one per searched key, as wide as their widest value.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.tracking.tags import TEACHER_COUNTS

STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
    "interrupted": "magenta",
}
MAX_ROWS = 24


@dataclass
class Row:
    trial_id: str
    point: dict = field(default_factory=dict)
    state: str = "pending"
    epoch: int | None = None  # epochs done (1-based)
    latest: float | None = None
    best: float | None = None
    checkpoint: str | None = None
    result: dict = field(default_factory=dict)
    error: str | None = None
    teacher: dict = field(default_factory=dict)  # tags.TEACHER_COUNTS summed over the reported epochs


def short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


class SweepView:
    def __init__(
        self,
        name: str,
        num_samples: int,
        metric: str,
        mode: str,
        max_epochs: int,
        console: Console | None = None,
        extra_metrics: tuple[str, ...] = (),
        constraints: tuple = (),
    ):
        self.name, self.num_samples, self.metric, self.mode = name, num_samples, metric, mode
        self.constraints = tuple(constraints)  # orchestrator.spec.search.Constraint
        self.max_epochs, self.extra = max(1, max_epochs), extra_metrics
        self.console = console or Console()
        self.rows: dict[str, Row] = {}
        self.notes: list[str] = []
        self.t0 = time.monotonic()
        self._live: Live | None = None

    # -------------------------------------------------------------- events

    def row(self, trial_id: str) -> Row:
        return self.rows.setdefault(trial_id, Row(trial_id))

    def trial_started(self, trial_id: str, point: dict) -> None:
        r = self.row(trial_id)
        r.point, r.state = dict(point), "running"
        self._line(f"[cyan]start[/] {trial_id} {self._params(r)}")

    def trial_result(self, trial_id: str, result: dict) -> None:
        r = self.row(trial_id)
        r.state = "running" if r.state in ("pending", "running") else r.state
        r.result = {**r.result, **result}
        before = r.epoch
        for k in TEACHER_COUNTS:
            if isinstance(result.get(k), (int, float)):
                r.teacher[k] = r.teacher.get(k, 0) + result[k]
        if isinstance(result.get("epochs_done"), (int, float)):
            r.epoch = int(result["epochs_done"])
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            r.latest = float(value)
            r.best = value if r.best is None else (max if self.mode == "max" else min)(r.best, value)
        if result.get("checkpoint_path"):
            r.checkpoint = result["checkpoint_path"]
        if r.epoch is not None and r.epoch != before:  # one line per epoch reported
            self._line(
                f"epoch {r.epoch}/{self.max_epochs} {trial_id} {self.metric} {fmt(r.latest)} (best {fmt(r.best)})"
            )

    def trial_ended(self, trial_id: str, status: str, error: str | None = None) -> None:
        r = self.row(trial_id)
        r.state, r.error = status, error
        tail = f" ({error})" if error else f" {self.metric} {fmt(r.latest)} (best {fmt(r.best)})"
        self._line(f"[{STYLE[status]}]{status}[/] {trial_id} after {r.epoch or 0} epoch(s){tail}")

    def note(self, msg: str) -> None:
        self.notes = [*self.notes[-3:], msg]
        self._line(msg)

    # -------------------------------------------------------------- display

    def __enter__(self) -> SweepView:
        self.t0 = time.monotonic()
        if self.console.is_terminal:
            self._live = Live(
                get_renderable=self.render,
                console=self.console,
                refresh_per_second=2,
                transient=False,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def _line(self, msg: str) -> None:
        if self._live is None:  # soft_wrap: a log line is never folded at the console's width
            self.console.print(msg, highlight=False, soft_wrap=True)

    def feasible(self, r: Row) -> bool:
        """Whether the trial's last reported metrics meet every constraint of the sweep."""
        return all(c.violation(r.result.get(c.metric)) <= 0 for c in self.constraints)

    def best_row(self) -> Row | None:
        """The best trial among those that meet the constraints."""
        scored = [r for r in self.rows.values() if r.best is not None and self.feasible(r)]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda r: r.best)

    def fraction(self) -> float:
        done = sum(
            1.0 if r.state in ("completed", "stopped", "failed") else (r.epoch or 0) / self.max_epochs
            for r in self.rows.values()
        )
        return min(1.0, done / max(1, self.num_samples))

    def _params(self, r: Row) -> str:
        return " ".join(f"{short(k)}={fmt(v)}" for k, v in r.point.items() if k != "grid_index")

    def render(self) -> Group:
        table = Table(title=f"sweep {self.name}", expand=False, title_justify="left")
        for col in ("trial", "state", "params", "epoch", self.metric, "best"):
            table.add_column(col, overflow="fold", justify="right" if col in ("epoch", self.metric, "best") else "left")
        rows = list(self.rows.values())
        if len(rows) > MAX_ROWS:  # running first, then the best finished
            rows = [r for r in rows if r.state == "running"] + sorted(
                (r for r in rows if r.state != "running"), key=self._rank
            )[:MAX_ROWS]
            rows = rows[:MAX_ROWS]
        for r in rows:
            table.add_row(
                r.trial_id,
                Text(r.state, style=STYLE.get(r.state, "")),
                self._params(r),
                f"{r.epoch or 0}/{self.max_epochs}",
                fmt(r.latest),
                fmt(r.best),
            )
        f = self.fraction()
        elapsed = time.monotonic() - self.t0
        eta = "-" if f <= 0 else _hms(elapsed * (1 - f) / f)
        ended = sum(r.state in ("completed", "stopped", "failed") for r in self.rows.values())
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=1.0, completed=f, width=40),
            f"{ended}/{self.num_samples} trials  elapsed {_hms(elapsed)}  ETA {eta}",
        )
        best = self.best_row()
        best_line = Text(
            f"best so far: {best.trial_id} {self.metric} {fmt(best.best)}  {self._params(best)}"
            if best
            else "best so far: -",
            style="bold",
        )
        return Group(*[Text(n, style="dim") for n in self.notes], table, bar, best_line)

    def _rank(self, r: Row) -> float:
        if r.best is None:
            return math.inf
        return -r.best if self.mode == "max" else r.best

    def summary(self, pareto: tuple[str, ...] = ()) -> Table:
        table = Table(title=f"sweep {self.name}: {len(self.rows)} trials", title_justify="left")
        cols = ["trial", "status", "params", "epochs", self.metric, f"best {self.metric}", *self.extra]
        for col in cols:
            table.add_column(col, overflow="fold")
        if pareto:
            table.add_column("pareto")
        for r in sorted(self.rows.values(), key=self._rank):
            cells = [
                r.trial_id,
                Text(r.state, style=STYLE.get(r.state, "")),
                self._params(r),
                str(r.epoch or 0),
                fmt(r.latest),
                fmt(r.best),
                *[fmt(r.result.get(m)) for m in self.extra],
            ]
            if pareto:
                cells.append("*" if r.trial_id in pareto else "")
            table.add_row(*cells)
        return table


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def print_summary(view: SweepView, pareto: tuple[str, ...] = ()) -> None:
    """The closing table: rich's table on a terminal; elsewhere plain columns, because rich fits
    a table to the console's width (80 columns off a terminal) by splitting values across lines."""
    if view.console.is_terminal:
        view.console.print(view.summary(pareto))
        return
    for line in plain_summary(view, pareto):
        view.console.print(line, markup=False, highlight=False, soft_wrap=True)


def plain_summary(view: SweepView, pareto: tuple[str, ...] = ()) -> list[str]:
    """One column per searched key (its last part, or the whole key where two last parts clash),
    then the epochs and metrics; each column as wide as its widest cell, lines as long as needed."""
    rows = sorted(view.rows.values(), key=view._rank)
    keys = list(dict.fromkeys(k for r in rows for k in r.point if k != "grid_index"))
    names = [short(k) for k in keys]
    names = [n if names.count(n) == 1 else k for n, k in zip(names, keys)]
    head = ["trial", "status", *names, "epochs", view.metric, f"best {view.metric}", *view.extra]
    head += ["pareto"] if pareto else []
    body = []
    for r in rows:
        cells = [r.trial_id, r.state, *[fmt(r.point.get(k)) for k in keys], str(r.epoch or 0)]
        cells += [fmt(r.latest), fmt(r.best), *[fmt(r.result.get(m)) for m in view.extra]]
        cells += (["*" if r.trial_id in pareto else ""]) if pareto else []
        body.append([" ".join(c.split()) for c in cells])  # a cell is one line
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    lines = [f"sweep {view.name}: {len(rows)} trials"]
    return lines + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *body)]
