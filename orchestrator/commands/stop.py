"""`python -m orchestrator stop SWEEP [--wait S] [--tracking-uri URI]`: ask the sweep's running
driver to stop cleanly, from any shell that sees the store: it reads the request from its parent
run within 5 s, then stops as Ctrl-C would (Tune saves the experiment, trials keep their
checkpoints, their MLflow runs end KILLED); the same command with --resume continues the sweep."""

from __future__ import annotations

from orchestrator.tracking.store import add_tracking_uri


def add_parser(sub) -> None:
    p = sub.add_parser("stop", help="ask a running sweep's driver to stop cleanly (it stays resumable)")
    p.add_argument("sweep", help="the sweep's name (python -m orchestrator ls lists them)")
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the driver to stop (default: do not wait)",
    )
    add_tracking_uri(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import time

    from orchestrator.errors import UserError
    from orchestrator.run.status import one_sweep, request_stop
    from orchestrator.tracking.reader import open_store
    from orchestrator.tracking.store import resolve_store

    store = resolve_store(args.tracking_uri)
    print(store.line())
    client = open_store(store.uri)
    asked, before = request_stop(client, args.sweep)
    print(f"asked {args.sweep}'s driver ({before.driver or 'unknown'}) to stop ({asked}); it looks every 5 s")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        state = one_sweep(client, args.sweep).state
        if state != "running":
            print(f"sweep {args.sweep} is {state}; continue it with the same command and --resume")
            return 0
        time.sleep(1.0)
    if args.wait:
        raise UserError(f"sweep {args.sweep!r} still running after {args.wait:g} s; its driver may be busy")
    return 0
