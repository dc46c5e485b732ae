"""`ui`: the MLflow UI on the project's store (sqlite:///<abs>/results/mlflow.db unless told
otherwise), bound to 127.0.0.1. It prints the URL and a link per sweep, and runs until Ctrl-C.

The UI has no login: anyone who can reach the port can read and delete runs. Bind to another
interface (--host 0.0.0.0) only on a network you trust; MLflow then also checks the Host header
against --allowed-hosts (default: localhost and private addresses).
"""

from __future__ import annotations

import argparse

from orchestrator.tracking.store import add_tracking_uri


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ui",
        help="serve the MLflow UI on the project's store (127.0.0.1 by default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_tracking_uri(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--artifacts-root",
        default=None,
        help="artifact root for experiments created from the UI (default: mlartifacts/ beside the sqlite store)",
    )
    p.add_argument("--allowed-hosts", default=None, help="passed to mlflow server (Host headers it accepts)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.add_argument(
        "--optuna",
        nargs="?",
        const="",
        default=None,
        metavar="SWEEP",
        help="serve optuna-dashboard on the sweep's Optuna study (<results>/optuna/SWEEP.log) instead; "
        "SWEEP may be left out when there is one study",
    )
    p.add_argument("--results", default="results", help="results folder of the sweeps (with --optuna)")
    p.set_defaults(run=run)


def optuna_ui(args) -> int:
    from orchestrator.run import study
    from orchestrator.tracking.server import serve_dashboard

    sweep = args.optuna or study.only_study(args.results)
    return serve_dashboard(study.study_path(args.results, sweep), sweep, args.host, args.port, args.startup_timeout)


def run(args) -> int:
    if args.optuna is not None:
        return optuna_ui(args)
    from orchestrator.tracking.server import serve
    from orchestrator.tracking.store import resolve_store

    store = resolve_store(args.tracking_uri)
    print(store.line(), flush=True)
    return serve(
        store.uri,
        args.host,
        args.port,
        args.artifacts_root,
        args.workers,
        args.allowed_hosts,
        args.startup_timeout,
    )
