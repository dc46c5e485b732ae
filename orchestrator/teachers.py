"""The sweep's teacher: a given checkpoint, or a recipe trained once and cached by content hash.

Cache layout: <results>/teachers/<sha256 of the canonical recipe>[:16]/ with recipe.json,
result.json and the run folder teacher/ (best.pt, checkpoint.pt, metrics.jsonl). The hash ignores
where the run writes (run.out_dir), its name and its test split (evaluated after training, it does
not change the weights), so moving results or renaming never retrains.
The recipe trains as a Ray task with the resources a trial would get, so on a cluster it lands on
a node with GPUs; the results folder must then be on storage every node sees.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from orchestrator.specs import TrainSpec
from orchestrator.sweep_spec import SweepSpec, canonical

RUN_NAME = "teacher"


@dataclass
class Teacher:
    checkpoint: str
    recipe_hash: Optional[str] = None
    dir: Optional[str] = None
    metrics: dict = field(default_factory=dict)
    cached: bool = False
    run_id: Optional[str] = None  # its MLflow run, when tracked


def recipe_spec(spec: SweepSpec) -> TrainSpec:
    """The recipe as a TrainSpec writing into its cache folder."""
    recipe = dict(spec.teacher.recipe)
    key = recipe_hash(recipe)
    out = Path(spec.results) / "teachers" / key
    recipe = {**recipe, "name": RUN_NAME, "run": {**recipe.get("run", {}), "out_dir": str(out)}}
    return TrainSpec.model_validate(recipe)


def recipe_hash(recipe: dict) -> str:
    """sha256 over the canonical recipe with defaults filled in (equal recipes, equal hash)."""
    full = TrainSpec.model_validate({**recipe, "name": RUN_NAME}).model_dump()
    full["run"].pop("out_dir", None)
    full["data"].pop("test_split", None)
    full.pop("name", None)
    return hashlib.sha256(canonical(full).encode()).hexdigest()[:16]


def cached(spec: SweepSpec) -> Optional[Teacher]:
    """The cached teacher for this recipe, or None when it has not been trained (completely)."""
    key = recipe_hash(spec.teacher.recipe)
    folder = Path(spec.results) / "teachers" / key
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not Path(result.get("checkpoint", "")).is_file():
        return None
    return Teacher(result["checkpoint"], key, str(folder), result.get("metrics", {}), cached=True)


def train_teacher(spec: SweepSpec, progress: Optional[Callable[[int, int, dict], None]] = None) -> Teacher:
    """Train the recipe as a Ray task (Ray must be up) and cache it; `progress(epoch, epochs,
    metrics)` is called as the run's metrics.jsonl grows."""
    import ray

    from orchestrator.training import run_training

    tspec = recipe_spec(spec)
    folder = Path(tspec.run.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.json").write_text(json.dumps(spec.teacher.recipe, indent=2, sort_keys=True))
    cpus = spec.teacher.cpus or spec.resources.per_trial["CPU"]
    gpus = spec.teacher.gpus if spec.teacher.gpus is not None else min(1.0, spec.resources.per_trial["GPU"])
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
    out = {"checkpoint": result["checkpoint"], "metrics": _jsonable(result.get("metrics", {})),
           "trained_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    (folder / "result.json").write_text(json.dumps(out, indent=2))
    return Teacher(result["checkpoint"], folder.name, str(folder), out["metrics"], cached=False)


def _poll(log: Path, seen: int, epochs: int, progress: Optional[Callable]) -> int:
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
