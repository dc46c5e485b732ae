"""The budgets that stop a sweep early (`search.time_budget`, `search.stop_when`,
`search.max_failed_trials`), applied by the driver to what it sees in this run.

Each says why when it fires, once; the driver then stops as `stop SWEEP` does (a SIGINT to
itself: Tune saves the experiment, running trials keep their last checkpoint), so `--resume`
continues the sweep. What this run sees: its own wall time; results past the epoch a trial had
when this driver took it over (a restored trial's replayed epoch does not count again); trials
that failed while it ran.
"""

from __future__ import annotations

import time

from orchestrator.spec.search import SearchSpec
from orchestrator.spec.space import GRID_KEY
from trainables.reporting import EPOCHS_DONE as EPOCHS


def _fmt(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Budgets:
    def __init__(self, search: SearchSpec, t0: float | None = None):
        self.time_s = search.time_budget_s
        self.stop_when = search.stop_when
        self.max_failed = search.max_failed_trials
        self.t0 = time.monotonic() if t0 is None else t0
        self.failed = 0
        self.known: dict[str, int] = {}  # trial -> epochs it had when this driver took it over / last saw

    @property
    def any(self) -> bool:
        return bool(self.time_s or self.stop_when or self.max_failed)

    def lines(self) -> list[str]:
        out = []
        if self.time_s:
            out.append(f"time budget {_fmt(self.time_s)} (this driver's wall time)")
        if self.stop_when:
            out.append(f"stop when {self.stop_when.describe()}")
        if self.max_failed:
            out.append(f"stop after {self.max_failed} failed trial(s)")
        return out

    def clock(self, now: float | None = None) -> str | None:
        elapsed = (time.monotonic() if now is None else now) - self.t0
        if self.time_s and elapsed >= self.time_s:
            return f"time budget {_fmt(self.time_s)} spent ({_fmt(elapsed)})"
        return None

    def started(self, trial_id: str, last_result: dict | None) -> None:
        self.known.setdefault(trial_id, int((last_result or {}).get(EPOCHS, 0) or 0))

    def result(self, trial_id: str, point: dict, result: dict) -> str | None:
        epoch = int(result.get(EPOCHS, 0) or 0)
        new = epoch > self.known.get(trial_id, 0)
        self.known[trial_id] = max(epoch, self.known.get(trial_id, 0))
        if not (new and self.stop_when and self.stop_when.met(result.get(self.stop_when.metric))):
            return None
        shown = {k: v for k, v in point.items() if k != GRID_KEY}
        value = result[self.stop_when.metric]
        return f"{self.stop_when.describe()} reached: trial {trial_id} {self.stop_when.metric} {value:.4g} {shown}"

    def failure(self) -> str | None:
        self.failed += 1
        if self.max_failed and self.failed >= self.max_failed:
            return f"{self.failed} trial(s) failed (search.max_failed_trials {self.max_failed})"
        return None
