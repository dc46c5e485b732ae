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


def as_uri(path: str | None, storage: str | None) -> str | None:
    """A path Ray reports on an object store ('bucket/prefix/...': pyarrow's paths drop the scheme)
    as a URI of the storage's scheme, so it can be read back from anywhere; local paths unchanged."""
    if not path or not storage or not is_uri(storage) or is_uri(path):
        return path
    return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"


def fetch(uri: str, folder: Path) -> Path | None:
    """Copy one object-store file into `folder` (pyarrow's filesystem for the URI, which takes the
    endpoint and credentials from the standard AWS variables); None when there is no such file."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    out = Path(folder, path.rsplit("/", 1)[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(out), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return out
