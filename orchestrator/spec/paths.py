"""Paths in specs: local folders or object-store URIs (s3://, gs://, ...). Local ones are made
absolute when a spec is loaded, because Tune and Ray Train change each trial's working directory."""

from __future__ import annotations

from pathlib import Path


def is_uri(path: str) -> bool:
    return "://" in path


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if is_uri(root) else str(Path(root, *parts))


def absolute(path: str | None) -> str | None:
    return path if path is None or is_uri(path) else str(Path(path).expanduser().resolve())
