"""The small text files a sweep keeps in its storage, a local folder or an object-store URI
(s3://, gs://, ...; orchestrator.spec.paths): its spec, and a trial's fatal marker."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.spec.load import canonical
from orchestrator.spec.paths import is_uri, join
from orchestrator.spec.sweep import SweepSpec

SPEC_FILE = "xgd_sweep.json"


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


def save_spec(spec: SweepSpec) -> None:
    write_text(join(spec.experiment_dir, SPEC_FILE), canonical(spec.model_dump()))


def saved_spec(spec: SweepSpec, console) -> SweepSpec:
    """Resume with the spec the sweep started with (a changed space would confuse the searcher)."""
    try:
        saved = SweepSpec.model_validate(json.loads(read_text(join(spec.experiment_dir, SPEC_FILE))))
    except (OSError, ValueError):
        return spec
    if canonical(saved.model_dump()) != canonical(spec.model_dump()):
        console.print("[yellow]the spec changed since the sweep started; resuming with the saved one[/]")
    return saved
