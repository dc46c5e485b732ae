"""Where the MLflow store is. A SQLite store is a file, and its URI is parsed here only: the
sweep checks the file's folder is writable, keeps artifacts beside it and makes a relative URI
absolute (Tune changes each trial's working directory); `report`, `export` and `ui` refuse a
file that does not exist rather than create an empty store."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE = "sqlite:///"
STORE_FILE = "mlflow.db"
DEFAULT_RESULTS = "results"


def results_store(results: str | Path) -> str:
    """The store of a results folder: sqlite:///<absolute results>/mlflow.db (a sweep's default)."""
    return f"{SQLITE}{Path(results).resolve()}/{STORE_FILE}"


def default_tracking_uri() -> str:
    """The commands' default store: $MLFLOW_TRACKING_URI, else the project's results/mlflow.db."""
    return os.environ.get("MLFLOW_TRACKING_URI") or results_store(DEFAULT_RESULTS)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (as written: relative or absolute), else None."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def absolute_uri(uri: str) -> str:
    """`sqlite:///rel/path.db` -> absolute, because Tune changes each trial's working directory."""
    db = sqlite_path(uri)
    if db is None or db.is_absolute() or ":memory:" in uri:
        return uri
    return SQLITE + str(db.resolve())


def artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (never the cwd-relative ./mlruns); servers choose their own."""
    db = sqlite_path(uri)
    return None if db is None else db.parent.joinpath("mlartifacts").as_uri()
