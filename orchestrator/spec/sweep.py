"""The sweep spec: fixed trainer settings, teacher, named students, search space, objective(s),
search algorithm, early stopping, per-trial resources, storage and MLflow.

Validated like `train` specs (orchestrator.spec.train): every way it can be wrong is one SpecError line
that names the key. The space is checked against TrainSpec at load time by validating every bound
of every entry, so a sweep never fails hours in because a sampled value is out of range.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from orchestrator.errors import SpecError
from orchestrator.spec import space as S
from orchestrator.spec.compare import CompareSpec
from orchestrator.spec.load import Strict, apply_overrides, canonical, read_yaml, validate
from orchestrator.spec.paths import absolute, join
from orchestrator.spec.search import HELD_OUT_PREFIX, METRIC_PREFIXES, METRICS, Constraint, SearchSpec, check_metric
from orchestrator.spec.train import ModelSpec, TeacherCacheSpec, TrainSpec
from orchestrator.tracking import tags as T
from orchestrator.tracking.store import absolute_uri, results_store

DEFAULT_SAMPLES = 10


class TeacherSource(Strict):
    """A teacher checkpoint, or a recipe (a train spec) the sweep trains once and caches."""

    checkpoint: str | None = None
    recipe: dict[str, Any] | None = None
    cpus: float | None = Field(None, gt=0)  # recipe training; default: a trial's CPUs
    gpus: float | None = Field(None, ge=0)  # default: 1 if trials use GPUs, else 0
    cache: TeacherCacheSpec = Field(default_factory=TeacherCacheSpec)  # its outputs, shared by the trials

    @model_validator(mode="after")
    def _one(self):
        if (self.checkpoint is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'checkpoint' (a file) or 'recipe' (a train spec)")
        return self


class Objective(Strict):
    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _known(self):
        check_metric(self.metric, "objective")
        return self


class EarlyStopping(Strict):
    kind: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)  # default: the most epochs a trial can have


class Resources(Strict):
    """Per trial: `num_workers` workers (DDP over Ray Train when > 1), each with these CPUs/GPUs.
    executor: "tune" runs a one-worker trial's loop in the Tune trial's own (reused) process,
    "train" always goes through a Ray Train run, "auto" is "tune" for one worker (orchestrator.run.trial)."""

    num_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)  # fractional shares a GPU between trials
    max_concurrent: int = Field(1, ge=1)
    max_failures: int = Field(0, ge=-1)  # Tune retries of a failed trial (resume from its checkpoint)
    executor: Literal["auto", "tune", "train"] = "auto"

    @model_validator(mode="after")
    def _one_process(self) -> Resources:
        if self.executor == "tune" and self.num_workers > 1:
            raise ValueError(
                f"executor 'tune' runs a trial in one process but num_workers is {self.num_workers}: "
                "use 'train' or 'auto' for DDP"
            )
        return self

    @property
    def use_train(self) -> bool:
        return self.executor == "train" or (self.executor == "auto" and self.num_workers > 1)

    @property
    def per_trial(self) -> dict[str, float]:
        return {"CPU": self.num_workers * self.cpus_per_worker, "GPU": self.num_workers * self.gpus_per_worker}


class MlflowSpec(Strict):
    tracking_uri: str | None = None  # default sqlite:///<abs results>/mlflow.db
    experiment: str = "xgd"


class SweepSpec(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    results: str = "results"  # teachers/, sweeps/ and mlflow.db go here
    storage_path: str | None = None  # Tune/Train storage: a path or URI; default <results>/sweeps
    train: TrainSpec = Field(default_factory=TrainSpec)  # fixed settings of every trial
    teacher: TeacherSource | None = None
    students: dict[str, ModelSpec] = Field(default_factory=dict)
    space: dict[str, S.Param]
    objective: Objective | list[Objective] = Field(default_factory=Objective)
    search: SearchSpec = Field(default_factory=SearchSpec)
    # feasibility bounds on reported metrics (orchestrator.spec.search.Constraint): the sampler is told
    # them, and the best trial, the Pareto front and export choose among the trials that meet them
    constraints: list[Constraint] = Field(default_factory=list)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    resources: Resources = Field(default_factory=Resources)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    # Ablations (orchestrator.spec.ablation): listed cells, each crossed with the space's grid (grid only),
    # and extra tags on the parent MLflow run (e.g. xgd.layouts for the report).
    cells: list[dict[str, S.Scalar]] | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    compare: CompareSpec | None = None  # read by `compare` only (orchestrator.spec.compare); a sweep ignores it

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]

    @property
    def num_samples(self) -> int:
        if self.search.algorithm == "grid":
            return len(self.grid())
        return self.search.num_samples or DEFAULT_SAMPLES

    @property
    def max_epochs(self) -> int:
        if "optim.epochs" in self.space:
            return int(max(self.space["optim.epochs"].probes()))
        listed = [c["optim.epochs"] for c in self.cells or [] if "optim.epochs" in c]
        return int(max(listed)) if listed else self.train.optim.epochs

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point: the space's grid, crossed with the listed cells when there are any."""
        points = S.grid_points(self.space)
        return points if self.cells is None else [{**c, **p} for c in self.cells for p in points]

    @property
    def experiment_dir(self) -> str:
        return join(self.storage_path or "", self.name)

    def base_config(self) -> dict:
        return self.train.model_dump()


# ------------------------------------------------------------------ paths


def _abs_weights(model: dict) -> None:
    w = model.get("encoder_weights")
    if w not in (None, "imagenet"):
        model["encoder_weights"] = absolute(w)


# ------------------------------------------------------------------ loading


TRAIN_SECTIONS = set(TrainSpec.model_fields) - {"name"}


def apply_sweep_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set` for sweeps: `space.<entry>[.<field>]=...` addresses dotted entry names,
    and trainer sections (`data.root=...`, `optim.epochs=...`) go to `train:`."""
    plain = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set data.root=/data/ttpla")
        head = key.split(".")[0]
        if head == "space" and key != "space":
            _override_space(raw, key[len("space.") :], value, item)
        elif head in TRAIN_SECTIONS and head not in SweepSpec.model_fields:
            plain.append(f"train.{item}")
        else:
            plain.append(item)
    return apply_overrides(raw, plain)


def _override_space(raw: dict, rest: str, value: str, item: str) -> None:
    space = raw.setdefault("space", {})
    if not isinstance(space, dict):
        raise SpecError(f"--set {item!r}: 'space' is not a mapping")
    parsed = yaml.safe_load(value) if value else None
    for name in sorted(space, key=len, reverse=True):
        if rest == name:
            space[name] = parsed
            return
        if rest.startswith(name + ".") and isinstance(space[name], dict):
            space[name][rest[len(name) + 1 :]] = parsed
            return
    if isinstance(parsed, dict):
        space[rest] = parsed
        return
    raise SpecError(f"--set {item!r}: {rest!r} is not an entry of the space; entries: {', '.join(space) or 'none'}")


def load_sweep_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    raw = apply_sweep_overrides(read_yaml(path), overrides or [])
    return parse_sweep_spec(raw)


def parse_sweep_spec(raw: dict[str, Any]) -> SweepSpec:
    """Validate the parts with their own prefixes first (precise messages), then the whole."""
    raw = copy.deepcopy(raw)
    if not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise SpecError(
            "space: a sweep needs a non-empty 'space' mapping of dotted keys to distributions, "
            "e.g. distill.alpha: {type: loguniform, low: 0.05, high: 2}"
        )
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise SpecError("train: must be a mapping of trainer settings (data, model, distill, optim, run)")
    if train.get("teacher") is not None:
        raise SpecError("train.teacher: set the teacher at the top level (teacher.checkpoint or teacher.recipe)")
    train.pop("teacher", None)
    _part(TrainSpec, train, "train.")
    for name, entry in (raw.get("students") or {}).items():
        if not isinstance(entry, dict):
            raise SpecError(f"students.{name}: must be a model spec, e.g. {{arch: deeplabv3plus, encoder: resnet18}}")
        _part(ModelSpec, entry, f"students.{name}.")
    for name, entry in raw["space"].items():
        if not isinstance(entry, dict):
            raise SpecError(f"space.{name}: must be a mapping like {{type: uniform, low: 0.1, high: 1}}")
        _part(S.Param, entry, f"space.{name}.")
    objective = raw.get("objective")
    if isinstance(objective, dict):
        _part(Objective, objective, "objective.")
    elif isinstance(objective, list):
        for i, o in enumerate(objective):
            if not isinstance(o, dict):
                raise SpecError(f"objective[{i}]: must be a mapping like {{metric: val_miou, mode: max}}")
            _part(Objective, o, f"objective[{i}].")
    teacher = raw.get("teacher")
    if isinstance(teacher, dict) and isinstance(teacher.get("recipe"), dict):
        recipe = teacher["recipe"]
        recipe.setdefault("data", copy.deepcopy(train.get("data", {})))
        if recipe.get("teacher") is not None:
            raise SpecError("teacher.recipe.teacher: a teacher recipe trains without a teacher; remove it")
        _part(TrainSpec, recipe, "teacher.recipe.")
    spec = validate(SweepSpec, raw)
    _check_devices(spec)
    _check_space(spec)
    return _resolved(spec)


def _check_devices(spec: SweepSpec) -> None:
    """A trial or teacher told to train on CUDA must be given a GPU by Ray: without one every trial
    fails on its worker, after Ray started (the trial's device 'auto' becomes 'cuda' with GPUs, in
    _resolved and orchestrator.run.teachers, so it never trains on the CPU unnoticed)."""
    gpus = spec.resources.gpus_per_worker
    if spec.train.run.device == "cuda" and gpus == 0:
        raise SpecError(
            "train.run.device is 'cuda' but resources.gpus_per_worker is 0, so Ray gives a trial no GPU: "
            "set resources.gpus_per_worker > 0, or train.run.device: cpu"
        )
    recipe = (spec.teacher.recipe or {}) if spec.teacher else {}
    if (recipe.get("run") or {}).get("device") == "cuda" and teacher_gpus(spec) == 0:
        raise SpecError(
            "teacher.recipe.run.device is 'cuda' but the teacher gets no GPU (teacher.gpus, else "
            "resources.gpus_per_worker, is 0): set one of them > 0, or teacher.recipe.run.device: cpu"
        )


def teacher_gpus(spec: SweepSpec) -> float:
    """GPUs of the teacher's training task: teacher.gpus, else one trial's (at most 1)."""
    if spec.teacher is not None and spec.teacher.gpus is not None:
        return spec.teacher.gpus
    return min(1.0, spec.resources.per_trial["GPU"])


def _part(model, raw: dict, prefix: str):
    """validate() with the key always named: model-level errors come back without a location."""
    try:
        return validate(model, raw, prefix)
    except SpecError as e:
        msg = str(e)
        if msg.startswith(prefix.rstrip(".")) or msg.startswith("unknown key"):
            raise
        raise SpecError(f"{prefix.rstrip('.')}: {msg}") from None


def _check_space(spec: SweepSpec) -> None:
    space, students = spec.space, spec.students
    try:
        S.ordered(space)
        if spec.search.algorithm == "grid":
            S.grid_points(space)
    except ValueError as e:
        raise SpecError(str(e)) from None
    for name, p in space.items():
        if p.type == "grid" and spec.search.algorithm != "grid":
            raise SpecError(
                f"space.{name}: type grid needs search.algorithm: grid (use choice with {spec.search.algorithm})"
            )
        if name == S.STUDENT:
            if p.values is None:
                raise SpecError("space.student: must be a choice (or grid) over names in 'students'")
            missing = [v for v in p.values if v not in students]
            if missing:
                raise SpecError(
                    f"space.student: {missing[0]!r} is not in students; defined: {', '.join(students) or 'none'}"
                )
        elif name == S.GRID_KEY or name == "name" or name.split(".")[0] == "teacher":
            raise SpecError(f"space.{name}: this key cannot be searched")
    _check_cells(spec)
    from orchestrator.spec import samplers

    samplers.check_search(spec)
    if spec.search.algorithm == "grid" and spec.search.num_samples not in (None, spec.num_samples):
        raise SpecError(
            f"search.num_samples: a grid runs each of its {spec.num_samples} points once; leave num_samples out"
        )
    base = spec.base_config()
    for name, value, point in S.probe_points(space):
        try:
            validate(
                TrainSpec, _with_teacher(spec, S.resolve(base, point, {k: m.model_dump() for k, m in students.items()}))
            )
        except SpecError as e:
            if str(e).startswith("unknown key"):
                raise SpecError(f"space.{name}: {e}") from None
            if _base_error(spec) == str(e):  # the fixed settings are wrong, whatever the point
                raise SpecError(f"train: {e}") from None
            raise SpecError(f"space.{name}: value {value!r} is not allowed ({e})") from None
    es = spec.early_stopping
    if es.kind == "asha" and es.grace_period > (es.max_t or spec.max_epochs):
        raise SpecError(
            f"early_stopping.grace_period ({es.grace_period}) exceeds the epochs a trial runs "
            f"({es.max_t or spec.max_epochs})"
        )
    names = [o.metric for o in spec.objectives]
    if len(set(names)) != len(names):
        raise SpecError(f"objective: metric listed twice in {names}")


def _with_teacher(spec: SweepSpec, cfg: dict) -> dict:
    """A trial config as a trial gets it: with the sweep's teacher (set at run time), so the
    checks of what a teacher run reads (train.check_cam_classes) apply to it."""
    return {**cfg, "teacher": {"checkpoint": "the sweep's teacher"}} if spec.teacher is not None else cfg


def _base_error(spec: SweepSpec) -> str | None:
    """The error of the fixed settings alone as a trial, if any (what a point's error may really be)."""
    try:
        validate(TrainSpec, _with_teacher(spec, spec.base_config()))
    except SpecError as e:
        return str(e)
    return None


RESERVED_TAGS = (T.KIND, T.SWEEP)


def _check_cells(spec: SweepSpec) -> None:
    """Listed cells: grid only, keys like a space's, no key also in the space, every cell a valid config."""
    for key in spec.tags:
        if key in RESERVED_TAGS or key.startswith("mlflow."):
            raise SpecError(f"tags.{key}: set by the sweep itself; choose another tag name")
    if spec.cells is None:
        return
    if spec.search.algorithm != "grid":
        raise SpecError(f"cells: listed cells need search.algorithm: grid (got {spec.search.algorithm})")
    if not spec.cells:
        raise SpecError("cells: give at least one cell, e.g. [{distill.method: none}, {distill.method: xgd}]")
    base, students = spec.base_config(), {k: m.model_dump() for k, m in spec.students.items()}
    _check_labels(spec.cells)
    seen: set[str] = set()
    for i, cell in enumerate(spec.cells):
        where = f"cells[{i}]"
        if not cell:
            raise SpecError(f"{where}: an empty cell; give the settings that differ, e.g. {{distill.method: none}}")
        for key, value in cell.items():
            if key in spec.space:
                raise SpecError(
                    f"{where}.{key}: also an entry of the space; a key is either listed per cell or gridded"
                )
            if key == S.GRID_KEY or key == "name" or key.split(".")[0] == "teacher":
                raise SpecError(f"{where}.{key}: this key cannot be set per cell")
            if key == S.STUDENT and value not in students:
                raise SpecError(
                    f"{where}.student: {value!r} is not in students; defined: {', '.join(students) or 'none'}"
                )
        text = canonical({k: v for k, v in cell.items() if k != S.LABEL})
        if text in seen:
            raise SpecError(f"{where}: the same cell is listed twice ({text})")
        seen.add(text)
        try:
            validate(TrainSpec, _with_teacher(spec, S.resolve(base, cell, students)))
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None


def sampler(spec: SweepSpec):
    """(Optuna sampler, define-by-run fn) for the spec; a grid walks `spec.grid()`, which crosses
    listed cells with the space's grid."""
    if spec.search.algorithm == "grid":
        return S.grid_sampler(spec.grid(), spec.search.seed)
    from orchestrator.spec.samplers import sampler_plan

    return sampler_plan(spec).build(), S.DefineByRun(spec.space)


def _resolved(spec: SweepSpec) -> SweepSpec:
    """Absolute paths everywhere a trial reads a file: Tune and Train change working directories."""
    results = absolute(spec.results)
    train = spec.train.model_dump()
    train["data"]["root"] = absolute(train["data"]["root"])
    train["run"]["out_dir"] = absolute(train["run"]["out_dir"])
    if train["run"]["device"] == "auto" and spec.resources.gpus_per_worker > 0:
        train["run"]["device"] = "cuda"  # Ray gives it a GPU: a trial that cannot see it fails, never trains on CPU
    _abs_weights(train["model"])
    teacher = spec.teacher.model_dump() if spec.teacher else None
    if teacher and teacher["checkpoint"]:
        teacher["checkpoint"] = absolute(teacher["checkpoint"])
    if teacher and teacher["recipe"]:
        rdata = teacher["recipe"].setdefault("data", {})
        if rdata.get("root"):
            rdata["root"] = absolute(rdata["root"])
        _abs_weights(teacher["recipe"].setdefault("model", {}))
    students = {k: m.model_dump() for k, m in spec.students.items()}
    for m in students.values():
        _abs_weights(m)
    return spec.model_copy(
        update={
            "results": results,
            "storage_path": absolute(spec.storage_path) if spec.storage_path else str(Path(results) / "sweeps"),
            "train": TrainSpec.model_validate(train),
            "teacher": TeacherSource.model_validate(teacher) if teacher else None,
            "students": {k: ModelSpec.model_validate(m) for k, m in students.items()},
            "mlflow": spec.mlflow.model_copy(
                update={
                    "tracking_uri": absolute_uri(spec.mlflow.tracking_uri)
                    if spec.mlflow.tracking_uri
                    else results_store(results)
                }
            ),
        }
    )


def _check_labels(cells: list[dict]) -> None:
    """`label:` names a cell's row in the report (e.g. "seg + pi"): on every cell or none, distinct."""
    labels = [c.get(S.LABEL) for c in cells]
    if all(v is None for v in labels):
        return
    for i, v in enumerate(labels):
        if not isinstance(v, str) or not v.strip():
            raise SpecError(f"cells[{i}].label: give every cell a label (text) or none (got {v!r})")
        if labels.index(v) != i:
            raise SpecError(f"cells[{i}].label: {v!r} is also the label of cells[{labels.index(v)}]")


__all__ = ["HELD_OUT_PREFIX", "METRICS", "METRIC_PREFIXES", "SearchSpec", "SweepSpec", "load_sweep_spec"]
