"""Typed, validated specs at the edge; the trainer receives `spec.model_dump()`, a plain dict.

Every way a spec can be wrong ends in one `SpecError` whose message is a single line naming the
key and what is allowed; the CLI prints it and exits with code 2.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "eigengradcam", "layercam")


class SpecError(ValueError):
    """A one-line, user-facing error about a spec (exit code 2)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(Strict):
    kind: Literal["synthetic", "ttpla", "voc", "folder"] = "synthetic"
    root: Optional[str] = None  # dataset folder; not used by `synthetic`
    classes: Optional[list[str]] = None  # `folder` only: class names, index = mask value
    train_split: str = "train"
    val_split: str = "val"
    # held-out split, evaluated once with the best-on-val weights; auto: the kind's (trainables.data.held_out_split)
    test_split: Optional[str] = "auto"
    # synthetic scene set
    num_train: int = Field(96, ge=1)
    num_val: int = Field(24, ge=1)
    num_test: int = Field(24, ge=1)
    image_size: int = Field(96, ge=32)
    data_seed: int = 0
    # transforms and loading
    crop: int = Field(64, ge=16)  # training crop (square)
    eval_size: Optional[int] = Field(None, ge=16)  # eval: resize the shorter side to this; None keeps it
    scale: tuple[float, float] = (0.75, 1.5)
    flip: bool = True
    jitter: float = Field(0.2, ge=0.0, le=1.0)
    batch_size: int = Field(8, ge=1)
    workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for data.kind={self.kind!r}")
        if self.kind == "folder" and not self.classes:
            raise ValueError("data.classes (list of class names) is required for data.kind='folder'")
        if self.test_split is not None and self.test_split in (self.train_split, self.val_split):
            raise ValueError(f"data.test_split {self.test_split!r} is also the train or val split; name a held-out "
                             "split, 'auto' (the dataset's own) or null (none)")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"data.scale must be (low, high) with 0 < low <= high, got {list(self.scale)}")
        return self


class ModelSpec(Strict):
    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None  # None | "imagenet" | path to a local state_dict file

    @model_validator(mode="after")
    def _check(self):
        from trainables.models import check_model_names

        check_model_names(self.arch, self.encoder)
        return self


class TeacherSpec(Strict):
    checkpoint: str  # a checkpoint written by `orchestrator train` (holds its own model spec)


class DistillSpec(Strict):
    method: str = "xgd"  # a name from trainables.losses.METHODS
    alpha: float = Field(1.0, ge=0.0)  # weight of PI (pixel-wise KL)
    beta: float = Field(1.0, ge=0.0)  # weight of the saliency MSE
    tau: float = Field(1.0, gt=0.0)  # softmax temperature of PI
    cam: Literal[CAM_METHODS] = "gradcam"  # type: ignore[valid-type]
    cam_target: Literal["gt", "teacher"] = "gt"  # which masks define the class scores
    cam_classes: Literal["all", "foreground"] = "all"  # foreground: class 0 left out of the CAM target
    cam_reduce: Literal["sum", "per_class"] = "sum"
    teacher_layer: Optional[str] = None  # dotted module path; None -> first decoder layer (docs/method.md)
    student_layer: Optional[str] = None
    weights: dict[str, float] = Field(default_factory=dict)  # extra per-term weights (baselines)

    @model_validator(mode="after")
    def _check(self):
        from trainables.baselines import HYPERPARAMS
        from trainables.losses import METHODS, TERMS

        if self.method not in METHODS:
            raise ValueError(f"distill.method {self.method!r} is not one of {sorted(METHODS)}")
        allowed = set(TERMS) | set(HYPERPARAMS)
        for key in self.weights:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
                raise ValueError(f"distill.weights has unknown key {key!r}; {hint}")
        return self


class OptimSpec(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    epochs: int = Field(10, ge=1)
    grad_clip: Optional[float] = Field(5.0, gt=0.0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU


class RunSpec(Strict):
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    out_dir: str = "results/train"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the encoders (trainables.step.compile_off_cam_path)
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)
    explain: bool = True  # explanation metrics (CAM/logit alignment, focus, FSS) at the end, with a teacher
    resume: Optional[str] = None  # a checkpoint.pt (or its folder) to continue from exactly


class TrainSpec(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: Optional[TeacherSpec] = None  # None trains without distillation (e.g. the teacher)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    run: RunSpec = Field(default_factory=RunSpec)


# ---------------------------------------------------------------- loading and errors


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec file {str(p)!r}{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"spec file {str(p)!r} cannot be read: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {str(p)!r} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML scalars/lists."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=0.01")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"--set {item!r}: {part!r} is not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return raw


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at the parent of `loc`, for did-you-mean."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cls = cand
                break
        else:
            return []
    return list(getattr(cls, "model_fields", {}))


def format_validation_error(model: type[BaseModel], err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not isinstance(p, int) or True)
    key = prefix + ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        known = _fields_at(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"
        return f"unknown key {key!r}{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error" or not loc:
        return msg if not loc else f"{key}: {msg}"
    got = e.get("input")
    got_s = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {msg}{got_s}"


def validate(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(model, err, prefix)) from None


def load_train_spec(path: str | Path, overrides: list[str] | None = None) -> TrainSpec:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(TrainSpec, raw)
