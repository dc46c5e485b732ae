"""`report [SWEEP ...]`: the paper's tables and plots for sweeps, read from MLflow only.

Writes results/reports/<sweep>/: trials.parquet/.csv (one row per trial), <layout>.md/.tex/.csv
(mean +- std over seeds per cell), report.md, plots/*.png; logs them to the sweep's parent run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.tracking.store import add_tracking_uri

DEFAULT_OUT = "results/reports"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="tables (rich, Markdown, LaTeX, Parquet, CSV) and plots of sweeps from MLflow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweeps", nargs="*", metavar="SWEEP", help="sweep names (default: every sweep in the store)")
    add_tracking_uri(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output root (default {DEFAULT_OUT})")
    p.add_argument(
        "--metric",
        default="val_miou",
        help="metric for plots and importances (default val_miou; a finished trial's val metric is its "
        "best-on-val epoch's, best_val_*)",
    )
    p.add_argument("--mode", choices=("max", "min"), default="max")
    p.add_argument(
        "--gallery",
        type=int,
        default=1,
        metavar="K",
        help="saliency galleries for the K best trials (needs their checkpoints and data; 0: none)",
    )
    p.add_argument("--no-log", action="store_true", help="do not log tables and plots to the parent MLflow run")
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console
    from rich.markup import escape

    from orchestrator.results.report import make_report
    from orchestrator.tracking import reader
    from orchestrator.tracking.pending import pending_path
    from orchestrator.tracking.store import resolve_store

    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the tables into 80 columns
        console = Console(width=200)
    store = resolve_store(args.tracking_uri)
    console.print(store.line(), highlight=False, soft_wrap=True)
    uri = store.uri
    client = reader.open_store(uri)
    names = args.sweeps or reader.list_sweeps(client)
    if not names:
        raise UserError(f"the MLflow store {uri} holds no sweeps (no run tagged xgd.kind=sweep)")
    done = 0
    for name in names:
        waiting = pending_path(Path(args.out).parent, name)  # <results>/reports -> <results>
        if waiting.exists():  # said first: the report below may fail for want of those writes
            console.print(
                f"[yellow]note:[/] some of {escape(name)}'s MLflow writes never reached the store; they wait in "
                f"{escape(str(waiting))}: run the sweep again with --resume to deliver them"
            )
        try:
            rep = make_report(
                client, name, args.out, args.metric, args.mode == "max", not args.no_log, console, args.gallery
            )
        except UserError as e:
            if args.sweeps:  # a sweep the user named: its problem is the answer
                raise
            console.print(f"[yellow]skipped[/] {escape(str(e))}")  # every sweep in the store: report the others
            continue
        done += 1
        for note in rep.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        logged = "" if args.no_log else " and logged to the parent run's artifacts (report/)"
        if rep.log_error:
            logged = f"; [yellow]not logged to MLflow[/] ({rep.log_error})"
        console.print(
            f"[green]{rep.sweep}[/]: {rep.counted}/{rep.trials} trials; wrote {len(rep.files)} files "
            f"under {rep.dir}{logged}"
        )
    if not done:
        raise UserError(f"none of the {len(names)} sweeps in {uri} has a finished trial to report")
    return 0
