"""One holder at a time for a folder shared through the file system: the teacher cache (a second
sweep waits, `hold`) and a running sweep's driver (a second copy is refused, `exclusive`).

The lock is `filelock.FileLock` (an OS file lock: released by the kernel when its holder dies, so a
killed sweep never leaves a stale lock). Beside it, `owner.json` names the holder (host, pid, what
it runs, since when) so that a second sweep can say whom it waits for.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_NAME = ".lock"
OWNER_NAME = "owner.json"


def owner(folder: Path) -> str:
    """Who holds (or last held) the folder's lock, in words; "another process" when unknown."""
    try:
        o = json.loads((folder / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return "another process"
    return f"{o.get('by', '?')} (pid {o.get('pid', '?')} on {o.get('host', '?')}, since {o.get('since', '?')})"


class Held(Exception):
    """The folder's lock is held by a live process; the message names it (`owner`)."""


@contextmanager
def exclusive(folder: Path, by: str) -> Iterator[None]:
    """Hold `folder`'s lock for the block, or raise Held naming the holder at once."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise Held(owner(folder)) from None
    try:
        _write_owner(folder, by)
        yield
    finally:
        lock.release()


def _write_owner(folder: Path, by: str) -> None:
    info = {"by": by, "pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    (folder / OWNER_NAME).write_text(json.dumps(info))


@contextmanager
def hold(folder: Path, by: str, waiting: Callable[[str], None], poll_s: float = 0.5) -> Iterator[None]:
    """Hold `folder`'s lock for the block; if another process has it, call `waiting(<who>)` once
    and block until it is released."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        waiting(owner(folder))
        lock.acquire(poll_interval=poll_s)
    try:
        _write_owner(folder, by)
        yield
    finally:
        lock.release()
