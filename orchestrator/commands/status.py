"""`python -m orchestrator status SWEEP [--json] [--tracking-uri URI]`: one sweep's trials by
state, its best, a rough ETA, MLflow writes still waiting, and the driver running it."""

from __future__ import annotations

from orchestrator.tracking.store import add_tracking_uri


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="one sweep: trials by state, best, ETA, pending MLflow writes, its driver")
    p.add_argument("sweep", help="the sweep's name (python -m orchestrator ls lists them)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    add_tracking_uri(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.run.status import TRIAL_STATES, as_json, one_sweep
    from orchestrator.tracking.reader import open_store
    from orchestrator.tracking.store import resolve_store

    store = resolve_store(args.tracking_uri)
    console = Console(highlight=False, soft_wrap=True)
    client = open_store(store.uri)
    s = one_sweep(client, args.sweep)
    if args.json:
        print(as_json(s))
        return 0
    console.print(store.line())
    console.print(f"sweep {s.name} ({s.kind}): {s.state}, {s.done}/{s.total} trials ended")
    counts = ", ".join(f"{n} {state}" for state in TRIAL_STATES if (n := s.trials.get(state)))
    not_started = max(s.total - sum(s.trials.values()), 0)
    console.print(f"trials: {counts or 'none yet'}" + (f", {not_started} not started" if not_started else ""))
    if s.best is not None:
        console.print(f"best so far: {s.metric} {s.best:.4f} (trial {s.best_trial})")
    eta = s.eta_s()
    if eta is not None:
        console.print(f"ETA: about {_duration(eta)} (rough: the time per ended trial so far x the trials left)")
    if s.pending_writes is None:
        console.print("MLflow writes waiting: unknown (the sweep's results folder is not visible here)")
    else:
        console.print(f"MLflow writes waiting: {s.pending_writes}")
    if s.state in ("running", "driver gone"):
        console.print(
            f"driver: {s.driver or 'unknown'}"
            + (" (no longer holds the sweep's lock)" if s.state == "driver gone" else "")
        )
    return 0


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"
