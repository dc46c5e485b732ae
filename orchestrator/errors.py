"""The errors a user can fix: a bad spec, argument, dataset path or store. The CLI prints each as
one line and exits with code 2 (orchestrator.cli); nothing already stored is touched. Library
code raises them from here, so no stage imports the command line."""

from __future__ import annotations


class UserError(Exception):
    """A one-line error for the user (exit code 2)."""


class SpecError(ValueError):
    """A one-line, user-facing error about a spec (exit code 2): it names the key and what is allowed."""
