"""The small text files a sweep keeps in its storage, a local folder or an object-store URI
(s3://, gs://, ...; orchestrator.spec.paths): its spec, and a trial's fatal marker; and the check
that an object-store storage path takes writes before Ray starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.spec.load import canonical
from orchestrator.spec.paths import is_uri, join
from orchestrator.spec.search import BUDGET_KEYS
from orchestrator.spec.sweep import SweepSpec

SPEC_FILE = "xgd_sweep.json"
PROBE_FILE = ".xgd-write-check"  # written and deleted by check_object_store
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # what pyarrow's S3 filesystem reads, first wins


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


KEPT = ("space", "objective", "search", "students", "cells", "constraints")  # what the searcher was built on


def saved_spec(spec: SweepSpec, console) -> SweepSpec:
    """Resume with the spec the sweep started with, except a larger search.num_samples, which grows
    the sweep (orchestrator.run.study), and the budgets (search.time_budget, stop_when,
    max_failed_trials), which this run applies as given. A changed space, objective, search,
    constraints or students would mislead the searcher: refused in one line. Other changes are
    noted and the saved values kept."""
    try:
        saved = SweepSpec.model_validate(json.loads(read_text(join(spec.experiment_dir, SPEC_FILE))))
    except (OSError, ValueError):
        return spec
    from orchestrator.errors import UserError
    from orchestrator.spec.space import flatten

    old, new = flatten(json.loads(canonical(saved.model_dump()))), flatten(json.loads(canonical(spec.model_dump())))
    budget = tuple(f"search.{k}" for k in BUDGET_KEYS)
    changed = [
        k
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k) and k != "search.num_samples" and not k.startswith(budget)
    ]
    for key in changed:
        if key.split(".")[0] in KEPT:
            raise UserError(
                f"--resume: {key} is {new.get(key)!r} here but {old.get(key)!r} in sweep {spec.name!r}; a resumed "
                f"sweep keeps its space, objective, search and students (only search.num_samples may grow): "
                f"start another with --set name={spec.name}-2"
            )
    if spec.num_samples > saved.num_samples:
        console.print(
            f"growing sweep {spec.name!r} from {saved.num_samples} to {spec.num_samples} trials; "
            "the sampler starts from the finished ones",
            highlight=False,
        )
        saved = saved.model_copy(update={"search": saved.search.model_copy(update={"num_samples": spec.num_samples})})
    elif spec.num_samples < saved.num_samples:
        changed.append("search.num_samples")
    budgets = {k: getattr(spec.search, k) for k in BUDGET_KEYS}
    if budgets != {k: getattr(saved.search, k) for k in BUDGET_KEYS}:
        console.print("the sweep's budgets for this run are the ones given now", highlight=False)
        saved = saved.model_copy(update={"search": saved.search.model_copy(update=budgets)})
    if changed:
        console.print(
            f"[yellow]the spec changed since the sweep started ({', '.join(changed[:5])}"
            f"{', ...' if len(changed) > 5 else ''}); resuming with the saved one[/]"
        )
    return saved


def saved_objectives(spec: SweepSpec):
    """name -> [(metric, mode)] of a sweep in this storage, from its saved spec (None if it has none)."""

    def of(name: str) -> list[tuple[str, str]] | None:
        try:
            saved = SweepSpec.model_validate(json.loads(read_text(join(spec.storage_path or "", name, SPEC_FILE))))
        except (OSError, ValueError):
            return None
        return [(o.metric, o.mode) for o in saved.objectives]

    return of


def check_object_store(key: str, uri: str) -> None:
    """The bucket must exist and take a write (a probe object, deleted again), or one line naming
    the URI and the endpoint. pyarrow gives up on a closed port after its retries (about 6 s)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    where = f" at {endpoint}" if endpoint and uri.startswith("s3://") else ""
    if "?" in uri:
        raise UserError(
            f"{key} {uri!r}: options in the URI are not supported (folders are appended to it); "
            "give the endpoint with AWS_ENDPOINT_URL"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise UserError(f"{key} {uri!r}: bucket {bucket!r} does not exist{where}; create it or use another")
        probe = f"{path.rstrip('/')}/{PROBE_FILE}"
        with fs.open_output_stream(probe) as f:
            f.write(b"")
        fs.delete_file(probe)
    except (OSError, ValueError, pa.ArrowException) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{key} {uri!r} cannot be written{where}: {first}") from None
