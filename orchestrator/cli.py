"""`python -m orchestrator <command>`: each command is a module in `orchestrator/commands/`
with `add_parser(subparsers)` and `run(args) -> int`.

Errors a user can fix (bad spec, bad data, bad checkpoint, bad arguments) print one line and
exit with code 2; nothing already stored is touched.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

COMMANDS = ("train", "sweep", "ablate", "report", "export", "ui", "bench")


class UserError(Exception):
    """A one-line error for the user (exit code 2)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from orchestrator.specs import SpecError
    from trainables.data import DataError

    return (UserError, SpecError, DataError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator",
                                     description="XGD distillation: train, sweep, ablate, report, export, ui, bench")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"orchestrator.commands.{name}") is not None:
            importlib.import_module(f"orchestrator.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
