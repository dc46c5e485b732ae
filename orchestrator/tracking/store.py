"""Where the MLflow store is. A SQLite store is a file, and its URI is parsed here only: the
sweep checks the file's folder is writable, keeps artifacts beside it and makes a relative URI
absolute (Tune changes each trial's working directory); `report`, `export` and `ui` refuse a
file that does not exist rather than create an empty store."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.errors import UserError

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


REACH_TIMEOUT_S = 5.0  # MLflow's own client retries an unreachable server for minutes before failing


def check_reachable(uri: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Refuse, in one line naming the URI, a tracking server that does not answer its /health page.

    Checked before a command talks to the store, because MLflow's client retries a dead server
    with backoff for minutes. SQLite stores are files: their checks are the callers'."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:  # refused, unknown host, timed out
        reason = str(getattr(e, "reason", e))
    raise UserError(
        f"the MLflow tracking server {uri} cannot be reached ({reason}); start it "
        "(mlflow server ...) or point --tracking-uri / mlflow.tracking_uri elsewhere"
    )
