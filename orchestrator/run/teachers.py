"""The sweep's teacher: a given checkpoint, or a recipe trained once and cached by content hash.

Cache layout: <results>/teachers/<sha256 of the canonical recipe>[:16]/ with recipe.json,
result.json and the run folder teacher/ (best.pt, checkpoint.pt, metrics.jsonl). The hash covers
what changes the teacher's weights (`recipe_hash`, NOT_THE_TEACHER): moving results or the dataset,
renaming, loader workers or a new distill default never retrain; a changed crop, class list or
training file does.
The recipe trains as a Ray task with the resources a trial would get, so on a cluster it lands on
a node with GPUs; the results folder must then be on storage every node sees.

Shared recipes: `obtain` trains under the cache folder's file lock (orchestrator.run.lock), so two
sweeps or ablations with one recipe started together train it once; the second waits, saying for
whom, and reuses it. The run checkpoints every `run.checkpoint_every` epochs, and a training that
was killed resumes exactly from its last checkpoint when the recipe is asked for again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.run import lock
from orchestrator.spec.load import canonical
from orchestrator.spec.sweep import SweepSpec, teacher_gpus
from orchestrator.spec.train import TrainSpec

RUN_NAME = "teacher"


@dataclass
class Teacher:
    checkpoint: str
    recipe_hash: str | None = None
    dir: str | None = None
    metrics: dict = field(default_factory=dict)
    cached: bool = False
    run_id: str | None = None  # its MLflow run, when tracked


def recipe_spec(spec: SweepSpec) -> TrainSpec:
    """The recipe as a TrainSpec writing into its cache folder."""
    recipe = dict(spec.teacher.recipe)
    key = recipe_hash(recipe)
    out = Path(spec.results) / "teachers" / key
    recipe = {**recipe, "name": RUN_NAME, "run": {**recipe.get("run", {}), "out_dir": str(out)}}
    return TrainSpec.model_validate(recipe)


# Settings that never change the teacher's weights: where it writes and resumes from, loader processes
# (items are drawn from (seed, epoch, index) whatever the worker count: tests/test_loop.py), how often
# it checkpoints (resume is exact), the test split (scored after training) and the dataset's path
# (the dataset enters as its fingerprint). A teacher trains without distillation: `distill` is out too.
NOT_THE_TEACHER = {
    "data": ("root", "workers", "test_split"),
    "run": ("out_dir", "resume", "checkpoint_every", "explain"),
}
# Keys added after teachers were cached, left out of the key while at these defaults: a recipe that
# does not use them keeps the key it had, and its cached teacher (tests/test_labels.py pins one).
ADDED_LATER = {"data": {"label_map": {}, "ignore_ids": [], "reduce_zero_label": None}}


def recipe_hash(recipe: dict) -> str:
    """sha256 over the canonical recipe with defaults filled in, less NOT_THE_TEACHER, with the
    dataset as the fingerprint of its train and val files (trainables.data.fingerprint): equal
    teachers, equal key. A dataset that cannot be read here (a dry run on a machine without it) is
    named by its root instead."""
    full = _filled(recipe)
    data = dict(full["data"])
    for section, keys in NOT_THE_TEACHER.items():
        for key in keys:
            full[section].pop(key, None)
    full["data"]["fingerprint"] = _fingerprint(canonical(data))
    return _digest(full)


def _filled(recipe: dict) -> dict:
    """The recipe with its defaults, without its name and `distill` (a teacher trains without it)."""
    full = TrainSpec.model_validate({**recipe, "name": RUN_NAME}).model_dump()
    full.pop("distill", None)
    full.pop("name", None)
    for section, defaults in ADDED_LATER.items():
        for key, default in defaults.items():
            if full[section].get(key) == default:
                full[section].pop(key)
    return full


def _digest(full: dict) -> str:
    return hashlib.sha256(canonical(full).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _fingerprint(data_json: str) -> str | None:
    from trainables.data import DataError, fingerprint

    data = json.loads(data_json)
    if data["kind"] == "synthetic":
        return None
    try:
        return fingerprint(data, (data["train_split"], data["val_split"]))
    except (DataError, OSError):
        return f"root:{data['root']}"


def legacy_hash(recipe: dict) -> str:
    """The key of cache entries made before NOT_THE_TEACHER and the fingerprint: `cached` still
    finds them, so an upgrade never retrains a teacher it has."""
    full = _filled(recipe)
    full["run"].pop("out_dir", None)
    full["data"].pop("test_split", None)
    return _digest(full)


def cached(spec: SweepSpec) -> Teacher | None:
    """The cached teacher for this recipe, or None when it has not been trained (completely)."""
    for key in dict.fromkeys((recipe_hash(spec.teacher.recipe), legacy_hash(spec.teacher.recipe))):
        folder = Path(spec.results) / "teachers" / key
        try:
            result = json.loads((folder / "result.json").read_text())
        except (OSError, ValueError):
            continue
        if Path(result.get("checkpoint", "")).is_file():
            return Teacher(result["checkpoint"], key, str(folder), result.get("metrics", {}), cached=True)
    return None


def obtain(
    spec: SweepSpec, say: Callable[[str], None], progress: Callable[[int, int, dict], None] | None = None
) -> Teacher:
    """The recipe's teacher: cached, or trained now under the cache folder's lock (see the module doc)."""
    hit = cached(spec)
    if hit is not None:
        return hit
    key = recipe_hash(spec.teacher.recipe)
    with lock.hold(
        Path(spec.results) / "teachers" / key,
        by=f"sweep {spec.name!r}",
        waiting=lambda who: say(f"waiting for the teacher {key} trained by {who}"),
    ):
        hit = cached(spec)  # trained by the holder while we waited
        if hit is not None:
            return hit
        say(f"training the teacher recipe {key} ({spec.teacher.recipe.get('model', {})}) once; later sweeps reuse it")
        return train_teacher(spec, progress, say)


def train_teacher(
    spec: SweepSpec, progress: Callable[[int, int, dict], None] | None = None, say: Callable[[str], None] = print
) -> Teacher:
    """Train the recipe as a Ray task (Ray must be up) and cache it; `progress(epoch, epochs,
    metrics)` is called as the run's metrics.jsonl grows. A checkpoint left by a killed training
    of this recipe is resumed (the loop's resume is exact)."""
    import ray

    from orchestrator.run.train import run_training

    tspec = recipe_spec(spec)
    folder = Path(tspec.run.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    left = folder / RUN_NAME / "checkpoint.pt"
    if left.is_file():
        say(f"resuming the teacher {folder.name} from {left}")
        tspec = tspec.model_copy(update={"run": tspec.run.model_copy(update={"resume": str(left)})})
    (folder / "recipe.json").write_text(json.dumps(spec.teacher.recipe, indent=2, sort_keys=True))
    cpus = spec.teacher.cpus or spec.resources.per_trial["CPU"]
    gpus = teacher_gpus(spec)
    if tspec.run.device == "auto" and gpus > 0:  # given a GPU: train on it, or fail saying it is not visible
        tspec = tspec.model_copy(update={"run": tspec.run.model_copy(update={"device": "cuda"})})
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_training)
    ref = task.remote(tspec)
    log = folder / RUN_NAME / "metrics.jsonl"
    seen = 0
    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        seen = _poll(log, seen, tspec.optim.epochs, progress)
        if ready:
            break
    result = ray.get(ref)  # raises the task's error
    _poll(log, seen, tspec.optim.epochs, progress)
    out = {
        "checkpoint": result["checkpoint"],
        "metrics": _jsonable(result.get("metrics", {})),
        "trained_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (folder / "result.json").write_text(json.dumps(out, indent=2))
    return Teacher(result["checkpoint"], folder.name, str(folder), out["metrics"], cached=False)


def _poll(log: Path, seen: int, epochs: int, progress: Callable | None) -> int:
    if progress is None or not log.is_file():
        return seen
    lines = log.read_text().splitlines()
    for line in lines[seen:]:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        progress(int(m.get("epoch", 0)) + 1, epochs, m)
    return len(lines)


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
