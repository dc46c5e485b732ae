"""Paths that may be local folders or object-store URIs (s3://, gs://, ...): sweep storage
and the small text files the sweep keeps there (its spec, a trial's fatal marker)."""
from __future__ import annotations

from pathlib import Path


def is_uri(path: str) -> bool:
    return "://" in path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))


def write_text(path: str, text: str) -> None:
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_output_stream(p) as f:
            f.write(text.encode())
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)


def read_text(path: str) -> str:
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(p) as f:
            return f.read().decode()
    return Path(path).read_text()
