"""Where the MLflow store is. Every command picks it the same way (`resolve_store`): the
`--tracking-uri` flag, else $MLFLOW_TRACKING_URI, else the spec's `mlflow.tracking_uri` (sweep and
ablate), else sqlite:///<abs>/results/mlflow.db; the first line a command prints names the store
and where it came from (`Store.line`).

A SQLite store is a file, and its URI is parsed here only: the sweep checks the file's folder is
writable, keeps artifacts beside it and makes a relative URI absolute (Tune changes each trial's
working directory); `report`, `export` and `ui` refuse a file that does not exist rather than
create an empty store. Nothing heavy is imported here: the CLI's parsers use `add_tracking_uri`."""

from __future__ import annotations

import os
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
    return resolve_store().uri


ENV_URI = "MLFLOW_TRACKING_URI"
FLAG = "--tracking-uri"
PRECEDENCE = f"{FLAG}, else ${ENV_URI}, else the spec's mlflow.tracking_uri, else sqlite:///<abs>/results/mlflow.db"


class Store:
    """A store's URI and where it came from: the flag, the environment, the spec or the default.
    (A plain class: dataclasses imports inspect, which `--help` of every command would pay for.)"""

    __slots__ = ("uri", "source")

    def __init__(self, uri: str, source: str):
        self.uri, self.source = uri, source

    def line(self) -> str:
        """What each command prints first."""
        return f"store: {self.uri} ({self.source})"


def resolve_store(flag: str | None = None, spec_uri: str | None = None, results: str | Path = DEFAULT_RESULTS) -> Store:
    """The store a command uses: `flag` > $MLFLOW_TRACKING_URI > `spec_uri` > the results folder's
    SQLite file. A spec_uri equal to that default counts as the default (a resolved spec always
    holds one). A relative SQLite path is made absolute here, once, for every process after."""
    default = results_store(results)
    env = os.environ.get(ENV_URI)
    spec_uri = None if spec_uri in (None, "", default) else spec_uri
    overridden = f"; the spec's mlflow.tracking_uri {spec_uri} is overridden" if spec_uri else ""
    for uri, source in (
        (flag, FLAG + overridden),
        (env, ENV_URI + overridden),
        (spec_uri, "the spec's mlflow.tracking_uri"),
    ):
        if uri:
            return Store(absolute_uri(uri), source)
    return Store(default, "default")


def add_tracking_uri(parser) -> None:
    """The `--tracking-uri` option every command that touches the store takes."""
    parser.add_argument(
        FLAG,
        dest="tracking_uri",
        default=None,
        metavar="URI",
        help=f"MLflow store (sqlite:///path.db or http://host:5000); precedence: {PRECEDENCE}",
    )


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
        check_sqlite(uri)
        return
    import urllib.error
    import urllib.request

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


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_sqlite(uri: str) -> None:
    """Refuse, in one line naming the URI, a `sqlite:///` store whose file exists but is not an
    SQLite database, or is one without MLflow's tables (MLflow would print a SQLAlchemy traceback,
    or add its tables to someone else's database). A missing file is the callers' to judge."""
    db = sqlite_path(uri)
    if db is None or ":memory:" in uri or not db.is_file():
        return
    try:
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as e:
        raise UserError(f"the MLflow store {uri} cannot be read ({e.strerror}); check its permissions") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(
            f"the MLflow store {uri} is not an SQLite database; point --tracking-uri at an mlflow.db "
            "(or a new file, which a sweep creates)"
        )
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        raise UserError(f"the MLflow store {uri} cannot be opened ({e}); point --tracking-uri elsewhere") from None
    if tables and "alembic_version" not in tables:
        raise UserError(
            f"the MLflow store {uri} is an SQLite database without MLflow's tables; point --tracking-uri "
            "at an mlflow.db (or a new file, which a sweep creates)"
        )


def open_client(uri: str):
    """An MlflowClient on `uri` that has answered once: a store MLflow cannot open (a schema it
    cannot migrate, a locked or unreadable file) is one line naming the URI, not a traceback."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # MLflow wraps SQLAlchemy's and alembic's errors in several types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:200]
        raise UserError(f"the MLflow store {uri} cannot be opened ({first}); point --tracking-uri elsewhere") from None
    return client
