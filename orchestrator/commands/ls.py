"""`python -m orchestrator ls [--tracking-uri URI]`: the store's sweeps, newest first."""

from __future__ import annotations

from orchestrator.tracking.store import add_tracking_uri


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list the store's sweeps: kind, state, trials done/total, best so far, started")
    add_tracking_uri(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from orchestrator.errors import UserError
    from orchestrator.run.status import all_sweeps
    from orchestrator.tracking.reader import open_store
    from orchestrator.tracking.store import resolve_store

    console = Console() if Console().is_terminal else Console(width=200)
    store = resolve_store(args.tracking_uri)
    console.print(store.line(), highlight=False, soft_wrap=True)
    sweeps = all_sweeps(open_store(store.uri))
    if not sweeps:
        raise UserError(f"the MLflow store {store.uri} holds no sweeps (no run tagged xgd.kind=sweep)")
    table = Table("sweep", "kind", "state", "trials done/total", "best so far", "started (UTC)")
    for s in sweeps:
        best = "-" if s.best is None else f"{s.metric} {s.best:.4f}"
        table.add_row(s.name, s.kind, s.state, f"{s.done}/{s.total}", best, _when(s.started))
    console.print(table)
    return 0


def _when(t: float | None) -> str:
    import time

    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
