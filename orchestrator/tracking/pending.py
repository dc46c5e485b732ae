"""The sweep driver's MLflow writes on their way to the store: an ordered queue (PendingWrites),
kept in a JSONL file while writes are pending, and its delivery (Outbox).

orchestrator.tracking.writer.Tracker puts every write of a running sweep into its Outbox, which
delivers the queue in order with short HTTP retries (HTTP_RETRIES). A store that cannot be reached
(a tracking server that was stopped, a locked database) leaves the rest queued: the next delivery
is tried at a later callback, RETRY_S after the failure and twice as long after each further
failure (up to RETRY_MAX_S), so a dead server costs the driver one short attempt per interval
instead of MLflow's minutes per write. At the sweep's end the Outbox keeps trying for END_WAIT_S,
then prints one line per kind of write that is still not logged. The file exists only while writes
are pending; a later driver of the same sweep (`--resume`) loads it and replays it. One JSON object
per line: {"kind": one of KINDS, "args": [...], "queued": true once a delivery attempt failed}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# kind -> how the end-of-sweep summary names it; the order of the summary's lines
KINDS = {
    "trial_started": "trial run starts (run, params, tags)",
    "metrics": "epoch metrics",
    "checkpoint": "checkpoint tags",
    "trial_tags": "trial tags (node, device)",
    "artifact": "trial artifacts (per-image test counts)",
    "tags": "tag writes",
    "trial_ended": "trial ends (status)",
    "finish_sweep": "sweep run end (status, best trial)",
}
PENDING_DIR = "mlflow-pending"  # under the sweep's results folder: <results>/mlflow-pending/<sweep>.jsonl


def pending_path(results: str | Path, sweep: str) -> Path:
    """The file a sweep's undelivered writes wait in (the driver writes it; `report` points to it)."""
    return Path(results, PENDING_DIR, f"{sweep}.jsonl")


TRIAL_KINDS = (
    "trial_started",
    "metrics",
    "checkpoint",
    "trial_tags",
    "artifact",
    "trial_ended",
)  # args[0] is the trial id


@dataclass
class Write:
    kind: str
    args: list = field(default_factory=list)
    queued: bool = False  # an attempt to deliver it failed: it waited in the queue

    def line(self) -> str:
        return json.dumps({"kind": self.kind, "args": self.args, "queued": self.queued}, default=str)


class PendingWrites:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.writes: list[Write] = []
        self.dirty = False  # writes added since the file was last saved
        self.on_disk = False  # the file holds writes

    def __len__(self) -> int:
        return len(self.writes)

    def add(self, kind: str, *args) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown MLflow write kind {kind!r}; known: {', '.join(KINDS)}")
        self.writes.append(Write(kind, list(args)))
        self.dirty = True

    def head(self) -> Write | None:
        return self.writes[0] if self.writes else None

    def pop(self) -> Write:
        return self.writes.pop(0)

    def mark_queued(self) -> None:
        for w in self.writes:
            w.queued = True

    def load(self) -> int:
        """Append the writes kept in the file (an earlier driver's); the number loaded. A line cut
        short by a driver killed mid-write is skipped (the file is replaced whole, so at most one)."""
        if self.path is None or not self.path.is_file():
            return 0
        loaded = []
        for ln in self.path.read_text().splitlines():
            try:
                d = json.loads(ln)
            except ValueError:
                continue
            if isinstance(d, dict) and d.get("kind") in KINDS:
                loaded.append(Write(d["kind"], list(d.get("args") or []), True))
        self.writes.extend(loaded)
        self.on_disk = True
        return len(loaded)

    def save(self) -> None:
        """The file holds exactly the pending writes (replaced whole, atomically); none: no file."""
        self.dirty = False
        if self.path is None or not (self.writes or self.on_disk):
            return
        if not self.writes:
            self.path.unlink(missing_ok=True)
            self.on_disk = False
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(w.line() + "\n" for w in self.writes))
        os.replace(tmp, self.path)
        self.on_disk = True

    def summary(self) -> list[str]:
        """One line per kind of pending write: how many, and of which trials."""
        out = []
        for kind, label in KINDS.items():
            ws = [w for w in self.writes if w.kind == kind]
            if not ws:
                continue
            trials = sorted({str(w.args[0]) for w in ws if kind in TRIAL_KINDS and w.args})
            of = f" of trial(s) {', '.join(trials)}" if trials else ""
            out.append(f"{len(ws)} {label}{of}")
        return out


# MLflow's client retries a dead server 7 times with backoff factor 2 and a 120 s timeout by
# default (minutes per write); the driver's deliveries retry once at once and queue what fails
HTTP_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run" line per closed run: the view owns the terminal
}
RETRY_S, RETRY_MAX_S = 5.0, 30.0
END_WAIT_S = 60.0
PROGRAMMING_ERRORS = (TypeError, KeyError, AttributeError, ValueError, IndexError)


@contextmanager
def short_http() -> Iterator[None]:
    """HTTP_RETRIES for the calls inside (MLflow reads these variables at each request)."""
    old = {k: os.environ.get(k) for k in HTTP_RETRIES}
    os.environ.update(HTTP_RETRIES)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rejected(e: Exception) -> bool:
    """A write the store answered and refused (HTTP 4xx other than 429), or a bug: retrying cannot
    help. Anything else (refused connection, timeout, 5xx, a locked database) may pass later."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        code = e.get_http_status_code()
        return 400 <= code < 500 and code != 429
    return isinstance(e, PROGRAMMING_ERRORS)


def first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Outbox:
    """Delivers queued writes in order through `deliver(write)`; see the module doc for the timing."""

    def __init__(self, deliver: Callable[[Write], None], where: str, path: str | Path | None = None):
        self.queue = PendingWrites(path)
        self.deliver, self.where = deliver, where
        self.say: Callable[[str], None] = _stderr
        self.next_try, self.interval = 0.0, RETRY_S
        self.down: str | None = None  # why the last delivery failed, while the store cannot be reached
        self.failed_attempts = 0
        self.longest_wait = 0.0  # the longest the driver blocked on one failed delivery
        self.retried = 0  # writes that landed after waiting in the queue
        self.rejected: list[str] = []

    def put(self, kind: str, *args) -> bool:
        self.queue.add(kind, *args)
        return self.flush()

    def flush(self, force: bool = False) -> bool:
        """Deliver what is pending, in order; True when nothing is left. Between the retry times
        (see the module doc) it only queues, unless forced."""
        if not self.queue.writes:
            return True
        if not force and time.monotonic() < self.next_try:
            if self.queue.dirty:
                self.queue.mark_queued()
                self.queue.save()
            return False
        landed = 0
        while self.queue.writes:
            w = self.queue.head()
            t0 = time.monotonic()
            try:
                with short_http():
                    self.deliver(w)
            except Exception as e:  # the store's or the network's: a sweep never stops for tracking
                if not rejected(e):
                    self._failed(e, time.monotonic() - t0)
                    return False
                msg = f"MLflow {self.where} refused a write ({KINDS[w.kind]}); dropped: {first_line(e)}"
                self.rejected.append(msg)
                self.say(msg)
            else:
                landed += w.queued
            self.queue.pop()
        self.retried += landed
        if self.down is not None:
            self.say(f"MLflow {self.where} answers again: {landed} queued write(s) logged")
            self.down = None
        self.interval = RETRY_S
        self.queue.save()
        return True

    def _failed(self, e: Exception, waited: float) -> None:
        self.failed_attempts += 1
        self.longest_wait = max(self.longest_wait, waited)
        if self.down is None:
            kept = f"; kept in {self.queue.path} until then" if self.queue.path else ""
            self.say(
                f"MLflow {self.where} cannot be reached ({first_line(e)}): training goes on, "
                f"its writes are queued and retried{kept}"
            )
        self.down = first_line(e)
        self.next_try = time.monotonic() + self.interval
        self.interval = min(RETRY_MAX_S, self.interval * 2)
        self.queue.mark_queued()
        self.queue.save()

    def drain(self, wait_s: float | None = None) -> bool:
        """Retry until nothing is pending or `wait_s` (END_WAIT_S) has passed; True when all landed."""
        deadline = time.monotonic() + (END_WAIT_S if wait_s is None else wait_s)
        while not self.flush(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(RETRY_S, left))
        return True

    def report(self) -> list[str]:
        """What happened to the writes: retried ones, and one line per kind still not logged."""
        lines = []
        if self.retried:
            lines.append(
                f"MLflow: {self.retried} write(s) waited while {self.where} could not be reached and were "
                f"logged later ({self.failed_attempts} failed attempt(s), the longest blocked the driver "
                f"{self.longest_wait:.1f} s)"
            )
        pending = self.queue.summary()
        lines += [f"MLflow: NOT logged to {self.where}: {ln}" for ln in pending]
        if pending:
            lines.append(
                f"MLflow: the writes not logged are kept in {self.queue.path}; the same sweep command with "
                "--resume replays them"
                if self.queue.path
                else "MLflow: the writes not logged were kept in memory only and are lost"
            )
        return lines
