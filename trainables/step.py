"""One training step, shared by the worker loop and the benchmark (`orchestrator bench`), so the
figures the bench reports are those of the code that trains.

`build_trainer` turns a config plus the models into a `Trainer` (terms, taps, extras, optimizer,
schedule, AMP, memory format); `train_step` runs one batch: student forward (taps on), frozen
teacher forward (autograd only from its CAM-layer leaves, see below), the registered loss terms,
one backward, the optimizer step. Its phases carry torch.profiler labels (step.*). Nothing in it
waits on the device (no .item(), .cpu(), numpy): the step returns device tensors and the caller
decides when to read them. The student's convolutions and BatchNorms after its CAM layer become
the drop-in classes of `trainables.cam_path` (same forward; a cheap double backward, and a CAM
gradient that treats the batch statistics as constants, so each image's CAM is its own).

Teacher graph: the teacher's parameters never require grad and its input does not either, so
under `set_grad_enabled(True)` autograd records nothing up to the CAM layer; the leaf tap there
(`tap(..., leaf=True)`) starts the only graph the teacher has, from the CAM activations to the
logits, which is what the teacher's CAM gradient needs. Without a saliency term the teacher runs
under no_grad.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from trainables.cam_path import prepare_cam_path
from trainables.constants import TEACHER_COUNTS
from trainables.losses import Step, Term, active_terms
from trainables.saliency import with_background
from trainables.setup import amp_setup, build_extras, collect_taps, make_optimizer
from trainables.taps import tap
from trainables.teacher_outputs import OutputStore
from trainables.teacher_step import TeacherCache, make_cache, teacher_outputs
from trainables.timing import SpanTimer


@dataclass
class Trainer:
    """Everything `train_step` needs; the loop also checkpoints `extras`, `opt`, `sched`, `scaler`."""

    student: nn.Module
    teacher: nn.Module | None
    terms: list[tuple[str, Term, float]]
    distill: dict
    s_paths: dict[str, str]
    t_paths: dict[str, str]
    t_leaf: dict[str, str]
    extras: nn.ModuleDict
    weights: Tensor  # the terms' weights, on the device once (no host->device copy per step)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Callable
    device: torch.device
    grad_clip: float | None = None
    channels_last: bool = False
    needs_teacher: bool = False
    model: nn.Module | None = None  # the student or its DDP wrapper (forward goes through this)
    sync_extras: Callable[[], None] = field(default=lambda: None)
    cache: TeacherCache | None = None  # the teacher-output cache (trainables.teacher_step), None: live
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TEACHER_COUNTS, 0))

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.student


@dataclass
class StepOut:
    loss: Tensor  # detached total, on the device
    losses: Tensor  # detached per-term values (order of `Trainer.terms`)
    saliency: SpanTimer  # the saliency terms' time (CUDA: events, read by the caller after its sync)


def build_trainer(
    config: dict,
    student: nn.Module,
    teacher: nn.Module | None,
    sample: Tensor,
    device: torch.device,
    total_steps: int,
    store: OutputStore | None = None,
) -> Trainer:
    """The step's state for `config` (TrainSpec dict); models already on `device`, teacher frozen;
    `store` (trainables.teacher_outputs) serves the teacher's outputs where the terms allow it."""
    distill, optim, run = with_background(config), config["optim"], config["run"]  # + the data's background class
    terms = active_terms(distill, teacher is not None)
    s_paths, t_paths, t_leaf = collect_taps(terms, distill, student, teacher)
    extras = build_extras(terms, distill, student, teacher, s_paths, {**t_paths, **t_leaf}, sample).to(device)
    opt, sched = make_optimizer(optim, [*student.parameters(), *extras.parameters()], total_steps)
    autocast, scaler = amp_setup(optim["amp"], device)
    channels_last = bool(run.get("channels_last")) and device.type == "cuda"
    if channels_last:
        student.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    cam_layers = [s_paths[k] for k in t_leaf if k in s_paths]  # student side of the CAM terms
    if cam_layers:  # per-image CAM gradients, differentiated again cheaply
        prepare_cam_path(student, cam_layers, sample)
    if run.get("compile"):
        compile_off_cam_path(student, s_paths)
        if teacher is not None:
            compile_off_cam_path(teacher, {**t_paths, **t_leaf})
    return Trainer(
        student=student,
        teacher=teacher,
        terms=terms,
        distill=distill,
        s_paths=s_paths,
        t_paths=t_paths,
        t_leaf=t_leaf,
        extras=extras,
        weights=torch.tensor([w for _, _, w in terms], device=device),
        opt=opt,
        sched=sched,
        scaler=scaler,
        autocast=autocast,
        device=device,
        grad_clip=optim["grad_clip"],
        channels_last=channels_last,
        needs_teacher=teacher is not None and any(t.needs_teacher for _, t, _ in terms),
        cache=make_cache(store, teacher, terms, distill, t_leaf),
    )


def compile_off_cam_path(model: nn.Module, paths: dict[str, str]) -> list[str]:
    """`torch.compile` the model's encoder in place when no tap lies inside it; returns what was compiled.

    Only the encoder: it holds most of the FLOPs and sits below every CAM layer, so no
    create_graph backward runs through it (AOTAutograd has no double backward), and dynamo does
    not guard on forward hooks, so a module holding a tap (hooks added and removed every step)
    must stay eager. State-dict keys and module paths are unchanged (nn.Module.compile).
    """
    enc = getattr(model, "encoder", None)
    if enc is None or any(p == "encoder" or p.startswith("encoder.") for p in paths.values()):
        return []
    enc.compile()
    return ["encoder"]


def train_step(tr: Trainer, x: Tensor, y: Tensor, items: tuple[int, list[int]] | None = None) -> StepOut:
    """One optimizer step on batch (x, y); returns device tensors (no host sync). `items`: (epoch,
    the batch's dataset indices), which the teacher-output cache keys on; None runs the teacher live."""
    x, y = x.to(tr.device, non_blocking=True), y.to(tr.device, non_blocking=True)
    if tr.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with tr.autocast():
        with record_function("step.student_forward"), tap(tr.student, tr.s_paths) as s_feats:
            s_logits = tr.model(x)
        t_logits, t_feats, t_cams = None, {}, None
        if tr.needs_teacher:
            with record_function("step.teacher_forward"):
                t_logits, t_feats, t_cams = teacher_outputs(tr, x, y, items)
        with record_function("step.losses"):
            step = Step(x, y, s_logits, t_logits, s_feats, t_feats, dict(tr.extras.items()), t_cams)
            saliency = SpanTimer(tr.device)
            losses = torch.stack([_term_value(term, step, tr.distill, saliency) for _, term, _ in tr.terms])
            loss = (losses * tr.weights.to(losses.dtype)).sum()
    with record_function("step.backward"):
        tr.opt.zero_grad(set_to_none=True)
        tr.scaler.scale(loss).backward()
        tr.sync_extras()
    with record_function("step.optimizer"):
        if tr.grad_clip:
            tr.scaler.unscale_(tr.opt)
            torch.nn.utils.clip_grad_norm_(tr.opt.param_groups[0]["params"], tr.grad_clip)
        tr.scaler.step(tr.opt)
        tr.scaler.update()
        tr.sched.step()
    return StepOut(loss.detach(), losses.detach(), saliency)


def _term_value(term: Term, step: Step, distill: dict, saliency: SpanTimer) -> Tensor:
    """The term's loss, timed by `saliency` when it is a saliency term (`Term.saliency`)."""
    with saliency if term.saliency else nullcontext():
        return term.fn(step, distill)
