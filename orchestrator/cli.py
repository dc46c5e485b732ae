"""`python -m orchestrator <command>` (the `xgd` console script): each command is a module in
`orchestrator/commands/` with `add_parser(subparsers)` and `run(args) -> int`. Building the parser
imports no heavy module (torch, Ray, MLflow, Optuna, the trainer): each command imports them in
`run`, so `--help` answers at once (tests/test_cli.py measures it).

Errors a user can fix (bad spec, bad data, bad checkpoint, bad arguments) print one line and
exit with code 2; nothing already stored is touched.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from orchestrator.errors import SpecError, UserError

COMMANDS = ("train", "sweep", "ablate", "confirm", "compare", "ls", "status", "stop", "report", "export", "ui", "bench")
DISTRIBUTION = "xgd-orchestrator"


def _user_errors() -> tuple[type[BaseException], ...]:
    from trainables.cam_path import CamPathError
    from trainables.data import DataError

    return (UserError, SpecError, DataError, CamPathError)


def version() -> str:
    """The installed distribution's version ("unknown" when run from a checkout that is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata is not free at start-up)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{DISTRIBUTION} {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="XGD distillation: train, sweep, ablate, confirm, compare, ls, status, stop, report, export, "
        "ui, bench",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"orchestrator.commands.{name}") is not None:
            importlib.import_module(f"orchestrator.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        # Tune warns of any driver callback over 0.5 s (read when ray.tune is first imported, which is
        # after this line); on 2 busy cores the driver's result processing took 0.5-0.96 s (seen with a
        # pip install running alongside) and the warnings broke the live view. --verbose keeps Ray's default.
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
    try:
        return int(args.run(args) or 0)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
