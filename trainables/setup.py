"""What the worker loop needs before its first step: device, seeds, models, loaders, optimizer,
schedule, AMP and the extra trainable modules the loss terms ask for."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables import checkpoint
from trainables.data import DataError, build_dataset, class_names, held_out_split, pad_collate
from trainables.data.base import SeededSampler
from trainables.losses import Term
from trainables.models import model_from_config
from trainables.taps import tap


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device='cuda' but no CUDA device is visible (allowed: auto, cpu, cuda)")
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def placement(device: torch.device) -> dict[str, str]:
    """Where this process trains, reported with every epoch as strings (the sweep's driver tags the
    trial's MLflow run with them; metrics skip strings): the host, the Ray node id inside Ray, and
    the device: "cpu", or "cuda:N <GPU name>" plus the CUDA_VISIBLE_DEVICES that Ray set."""
    import os
    import socket
    import sys

    out = {"host": socket.gethostname(), "device": "cpu"}
    ray = sys.modules.get("ray")  # only a process that runs in Ray has imported it
    if ray is not None and ray.is_initialized():
        out["ray_node"] = ray.get_runtime_context().get_node_id()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        out["device"] = f"cuda:{index} {torch.cuda.get_device_name(index)}" + (
            f" (CUDA_VISIBLE_DEVICES={visible})" if visible else ""
        )
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_teacher(teacher_cfg: dict | None, classes: list[str], device: torch.device) -> nn.Module | None:
    """The frozen teacher in eval mode (it never switches to train mode), or None."""
    if not teacher_cfg:
        return None
    state = checkpoint.load(teacher_cfg["checkpoint"])
    if list(state["classes"]) != list(classes):
        raise ValueError(
            f"teacher checkpoint {teacher_cfg['checkpoint']!r} was trained on classes "
            f"{list(state['classes'])}, but the data has {classes}"
        )
    teacher = model_from_config(state["model_cfg"], len(classes))
    teacher.load_state_dict(state["model"])
    teacher.to(device).eval().requires_grad_(False)
    return teacher


def teacher_store(config: dict, device: torch.device):
    """The teacher-output cache of `teacher.cache` (trainables.teacher_outputs), None when it is off.
    Its key holds the precision and memory format the teacher runs in, resolved as amp_setup and
    build_trainer resolve them, and the checkpoint's sha256."""
    from trainables.teacher_outputs import file_digest, open_store

    t = config.get("teacher") or {}
    if not (t.get("cache") or {}).get("enabled"):
        return None
    amp = config["optim"]["amp"]
    amp = ("bf16" if device.type == "cuda" else "off") if amp == "auto" else amp
    channels_last = bool(config["run"].get("channels_last")) and device.type == "cuda"
    ckpt = Path(t["checkpoint"])
    digest = file_digest(ckpt / checkpoint.FILE if ckpt.is_dir() else ckpt)
    say = lambda line: print(f"[{config['name']}] {line}", flush=True)  # noqa: E731
    return open_store(config, digest, amp, device.type, channels_last, say)


def make_loaders(
    config: dict, device: torch.device, seed: int, rank: int = 0, world: int = 1
) -> tuple[DataLoader, DataLoader, list[str]]:
    """Train loader: this rank's shard (`SeededSampler`: shuffle and augmentations from (seed, epoch,
    index); seed * 100_003 so seed s's epoch e+1 is not seed s+1's epoch e). Both loaders' base seeds
    come from their own generators, so loading never draws from the global RNG the step uses, and
    data.workers changes nothing trained (tests/test_loop.py)."""
    data = config["data"]
    train_set = build_dataset(data, data["train_split"], train=True)
    val_set = build_dataset(data, data["val_split"], train=False)
    gen = torch.Generator().manual_seed(seed)
    workers = data["workers"]
    common = dict(
        num_workers=workers, collate_fn=pad_collate, pin_memory=device.type == "cuda", persistent_workers=workers > 0
    )
    sampler = SeededSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed * 100_003)
    train = DataLoader(
        train_set,
        batch_size=data["batch_size"],
        sampler=sampler,
        drop_last=len(sampler) > data["batch_size"],
        generator=gen,
        worker_init_fn=_seed_worker,
        **common,
    )
    # its own generator too: each new iterator of a loader without persistent workers draws a base
    # seed, from the global RNG unless given one, so data.workers 0 would shift the step's dropout
    val = DataLoader(
        val_set, batch_size=data["batch_size"], shuffle=False, generator=torch.Generator().manual_seed(seed), **common
    )
    return train, val, class_names(data)


def make_test_loader(config: dict, device: torch.device) -> DataLoader | None:
    """The held-out split (eval transforms, in order; `data.test_split`), or None when the data
    has none. Built before the first epoch so a missing split fails the run at once."""
    data = config["data"]
    split = held_out_split(data)
    if split is None:
        return None
    try:
        test_set = build_dataset(data, split, train=False)
    except DataError as e:
        raise DataError(
            f"{e} (data.test_split is {data.get('test_split')!r}; null runs without a test split)"
        ) from None
    return DataLoader(
        test_set,
        batch_size=data["batch_size"],
        shuffle=False,
        num_workers=data["workers"],
        collate_fn=pad_collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # never the global RNG (see make_loaders)
    )


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_optimizer(optim: dict, params: list[nn.Parameter], total_steps: int):
    if optim["name"] == "sgd":
        opt = torch.optim.SGD(params, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])
    else:
        opt = torch.optim.AdamW(params, lr=optim["lr"], weight_decay=optim["weight_decay"])
    total = max(1, total_steps)
    schedules = {
        "poly": lambda it: (1 - min(it, total) / total) ** 0.9,
        "cosine": lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total) / total)),
        "constant": lambda it: 1.0,
    }
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedules[optim["schedule"]])


def amp_setup(amp: str, device: torch.device):
    """(autocast context factory, GradScaler) for the configured precision."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return nullcontext, torch.amp.GradScaler(enabled=False)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), torch.amp.GradScaler(enabled=amp == "fp16")


def collect_taps(
    terms: list[tuple[str, Term, float]], distill: dict, student: nn.Module, teacher: nn.Module | None
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Union of the dotted paths the active terms tap: student, teacher, and the teacher taps that
    must be autograd leaves (CAM gradients). Only those are cut: cutting the graph at a plain
    feature tap (e.g. the decoder output) would disconnect a CAM layer below it from the logits."""
    s_paths: dict[str, str] = {}
    t_paths: dict[str, str] = {}
    t_leaf: dict[str, str] = {}
    for _, term, _ in terms:
        if term.student_taps:
            s_paths.update(term.student_taps(distill, student))
        if term.teacher_taps and teacher is not None:
            (t_leaf if term.teacher_grad else t_paths).update(term.teacher_taps(distill, teacher))
    return s_paths, {k: v for k, v in t_paths.items() if k not in t_leaf}, t_leaf


@torch.no_grad()
def build_extras(
    terms,
    distill: dict,
    student: nn.Module,
    teacher: nn.Module | None,
    s_paths: dict[str, str],
    t_paths: dict[str, str],
    sample: torch.Tensor,
) -> nn.ModuleDict:
    """Trainable modules (connectors, attention) that terms build from the tapped feature shapes."""
    builders = [(name, term) for name, term, _ in terms if term.build]
    if not builders:
        return nn.ModuleDict()
    was = student.training
    student.eval()
    with tap(student, s_paths) as s_feats:
        student(sample)
    student.train(was)
    t_feats: dict[str, Any] = {}
    if teacher is not None:
        with tap(teacher, t_paths) as t_feats:
            teacher(sample)
    s_shapes = {k: v.shape for k, v in s_feats.items()}
    t_shapes = {k: v.shape for k, v in t_feats.items()}
    return nn.ModuleDict({name: term.build(s_shapes, t_shapes, distill) for name, term in builders})
