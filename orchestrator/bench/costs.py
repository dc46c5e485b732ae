"""The `time` budget of `compare` (orchestrator.run.compare): one training step of each method,
timed on this machine, so each method's epochs can be set to give it the same trainer seconds."""

from __future__ import annotations

import statistics
import time

from orchestrator.errors import UserError
from orchestrator.spec.sweep import SweepSpec


def measure_costs(spec: SweepSpec, methods: list[str], iters: int) -> dict[str, float]:
    """Median seconds of one training step per method: the spec's train: student, crop and batch,
    and the teacher's architecture freshly initialised (the trained teacher may not exist yet),
    timed round-robin after one warm-up round. On CPU the figure is the CPU seconds of a step on one
    thread, not wall time: other processes on a shared machine would otherwise decide the epochs."""
    import torch

    from orchestrator.bench.steps import fixed_batch
    from trainables.data import class_names
    from trainables.models import model_from_config
    from trainables.setup import pick_device
    from trainables.step import build_trainer, train_step

    base = spec.base_config()
    device = pick_device(base["run"]["device"])
    classes = class_names(base["data"])
    teacher = model_from_config(_teacher_model(spec), len(classes)).to(device).eval().requires_grad_(False)
    x, y = (t.to(device) for t in fixed_batch(base))
    steps = {}
    for m in methods:
        cfg = {**base, "distill": {**base["distill"], "method": m}}
        torch.manual_seed(0)
        student = model_from_config(cfg["model"], len(classes)).to(device)
        tr = build_trainer(cfg, student, teacher if m != "none" else None, x[:2], device, total_steps=10 * (iters + 1))
        steps[m] = lambda tr=tr: train_step(tr, x, y)
    times: dict[str, list[float]] = {m: [] for m in methods}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # CPU seconds of one thread count work; idle-spinning pool threads would not
    try:
        _rounds(steps, methods, iters, device, times)
    finally:
        torch.set_num_threads(threads)
    return {m: statistics.median(v) for m, v in times.items()}


def _rounds(steps, methods, iters, device, times) -> None:
    from orchestrator.bench.steps import timed

    for r in range(iters + 1):  # the first round warms up
        for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
            c0 = time.process_time()
            wall = timed(steps[m], device)
            t = time.process_time() - c0 if device.type == "cpu" else wall
            if r:
                times[m].append(t)


def _teacher_model(spec: SweepSpec) -> dict:
    src = spec.teacher
    if src is None:
        raise UserError("compare --budget time: the spec has no teacher to time the distillation steps with")
    if src.recipe is not None:
        return dict(src.recipe["model"])
    import torch

    return dict(torch.load(src.checkpoint, map_location="cpu", weights_only=False)["model_cfg"])
