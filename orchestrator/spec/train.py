"""The train spec: typed, validated at the edge; the trainer receives `spec.model_dump()`, a plain dict.

Every way a spec can be wrong ends in one `SpecError` whose message is a single line naming the
key and what is allowed (orchestrator.spec.load); the CLI prints it and exits with code 2. Names
the trainer defines (model names, CAM methods, distillation methods and their weights) are
checked against its registries, imported when a spec is validated, not when the CLI starts.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from orchestrator.spec.load import Strict, apply_overrides, read_yaml, validate


class DataSpec(Strict):
    kind: Literal["synthetic", "ttpla", "voc", "voc_aug", "cityscapes", "ade20k", "camvid", "folder"] = "synthetic"
    root: str | None = None  # dataset folder; not used by `synthetic`
    classes: list[str] | None = None  # `folder` only: class names, index = mask value
    # `folder` only: the class that is no object (cam_classes 'foreground' leaves it out), or null for
    # none (e.g. sky, road, car); the other kinds declare theirs (trainables.data.KINDS)
    background: str | None = None
    # label conventions, for kinds that read mask files (trainables.data.labels; docs/datasets.md):
    # mask id -> class index or 255 (ignore); ids to ignore; 0 -> ignore and k -> k-1 (null: the kind's)
    label_map: dict[int, int] = Field(default_factory=dict)
    ignore_ids: list[int] = Field(default_factory=list)
    reduce_zero_label: bool | None = None
    train_split: str = "train"
    val_split: str = "val"
    # held-out split, evaluated once with the best-on-val weights; auto: the kind's (trainables.data.held_out_split)
    test_split: str | None = "auto"
    # synthetic scene set
    num_train: int = Field(96, ge=1)
    num_val: int = Field(24, ge=1)
    num_test: int = Field(24, ge=1)
    image_size: int = Field(96, ge=32)
    data_seed: int = 0
    # transforms and loading
    crop: int = Field(64, ge=16)  # training crop (square)
    eval_size: int | None = Field(None, ge=16)  # eval: resize the shorter side to this; None keeps it
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
        if self.kind != "folder" and self.background is not None:
            raise ValueError(
                f"data.background is for data.kind='folder' only; data.kind={self.kind!r} declares its own"
            )
        from trainables.data import DataError, background_index, check_labels

        try:
            background_index(self.model_dump())
            check_labels(self.model_dump())
        except DataError as e:
            raise ValueError(str(e)) from None
        if self.test_split is not None and self.test_split in (self.train_split, self.val_split):
            raise ValueError(
                f"data.test_split {self.test_split!r} is also the train or val split; name a held-out "
                "split, 'auto' (the dataset's own) or null (none)"
            )
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"data.scale must be (low, high) with 0 < low <= high, got {list(self.scale)}")
        return self


class ModelSpec(Strict):
    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # None | "imagenet" | path to a local state_dict file

    @model_validator(mode="after")
    def _check(self):
        from trainables.models import check_model_names

        check_model_names(self.arch, self.encoder)
        return self


class TeacherCacheSpec(Strict):
    """The frozen teacher's outputs cached per augmented item and reused by every run of the same
    items (trainables.teacher_outputs; docs/teacher-outputs.md)."""

    enabled: bool | None = None  # null: on in sweeps, ablations and confirmations; off for `train`
    path: str | None = None  # a local folder; null: <results>/teacher_outputs (sweeps), results/teacher_outputs
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # float32 keeps the live values exactly
    max_gb: float = Field(20.0, gt=0)  # oldest entries are deleted past this

    @field_validator("path")
    @classmethod
    def _local(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(f"teacher.cache.path {v!r} is a URI; it must be a local (or mounted) folder")
        return v


class TeacherSpec(Strict):
    checkpoint: str  # a checkpoint written by `orchestrator train` (holds its own model spec)
    cache: TeacherCacheSpec = Field(default_factory=TeacherCacheSpec)


class DistillSpec(Strict):
    method: str = "xgd"  # a name from trainables.losses.METHODS
    alpha: float = Field(1.0, ge=0.0)  # weight of PI (pixel-wise KL)
    beta: float = Field(1.0, ge=0.0)  # weight of the saliency MSE
    tau: float = Field(1.0, gt=0.0)  # softmax temperature of PI
    cam: str = "gradcam"  # a name from trainables.cams.CAMS
    cam_target: Literal["gt", "teacher"] = "gt"  # which masks define the class scores
    # foreground: the dataset's background class left out of the CAM target (it must declare one:
    # check_cam_classes); the default is trainables.saliency.DEFAULT_CAM_CLASSES (tested equal)
    cam_classes: Literal["all", "foreground"] = "foreground"
    cam_reduce: Literal["sum", "per_class"] = "sum"
    # how the CAM gradient's BatchNorm statistics are differentiated (trainables.batchnorm.CAM_BN_GRADS)
    cam_bn_grad: Literal["constant", "exact"] = "constant"
    teacher_layer: str | None = None  # dotted module path; None -> first decoder layer (docs/method.md)
    student_layer: str | None = None
    weights: dict[str, float] = Field(default_factory=dict)  # extra per-term weights (baselines)

    @field_validator("cam")
    @classmethod
    def _cam(cls, name: str) -> str:
        from trainables.cams import CAMS

        if name not in CAMS:
            raise ValueError(f"{name!r} is not a CAM method; allowed: {', '.join(CAMS)}")
        return name

    @model_validator(mode="after")
    def _check(self):
        from trainables.losses import HYPERPARAMS, METHODS, TERMS

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
    grad_clip: float | None = Field(5.0, gt=0.0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU

    @field_validator("amp", mode="before")
    @classmethod
    def _bare_off(cls, v):
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` (amp: off, --set optim.amp=off) as false


class RunSpec(Strict):
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(1, ge=1)
    out_dir: str = "results/train"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the encoders (trainables.step.compile_off_cam_path)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    explain: bool = True  # explanation metrics (CAM/logit alignment, focus, FSS) at the end, with a teacher
    resume: str | None = None  # a checkpoint.pt (or its folder) to continue from exactly


class TrainSpec(Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: TeacherSpec | None = None  # None trains without distillation (e.g. the teacher)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    @model_validator(mode="after")
    def _check(self):
        check_cam_classes(self, self.teacher is not None)
        return self


def reads_cam_classes(spec: TrainSpec, with_teacher: bool) -> bool:
    """Whether a run of `spec` builds a CAM target: only with a teacher, in an active term that reads
    distill.cam_classes (methods.READS) or in the explanation metrics (run.explain)."""
    from trainables.losses import active_terms
    from trainables.losses.methods import READS

    if not with_teacher:
        return False
    terms = active_terms(spec.distill.model_dump(), True)
    return spec.run.explain or any("cam_classes" in READS.get(name, ()) for name, _, _ in terms)


def check_cam_classes(spec: TrainSpec, with_teacher: bool) -> None:
    """cam_classes 'foreground' needs the dataset's background class: refused where a run would
    build the target and the dataset declares none (a sweep passes `with_teacher` for its trials)."""
    from trainables.data import background_index

    if spec.distill.cam_classes != "foreground" or not reads_cam_classes(spec, with_teacher):
        return
    if background_index(spec.data.model_dump()) is None:
        raise ValueError(
            f"distill.cam_classes 'foreground' leaves out the background class, and data.kind={spec.data.kind!r} "
            "declares none: set data.background to one of data.classes or choose distill.cam_classes: all"
        )


def load_train_spec(path: str | Path, overrides: list[str] | None = None) -> TrainSpec:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(TrainSpec, raw)
