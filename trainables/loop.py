"""The XGD worker loop: one function that runs under Ray Train or as plain Python.

Per batch: `trainables.step.train_step` (student forward with taps, frozen teacher forward with a
graph only from its CAM layer when the saliency term is on, the registered loss terms, one
backward; the benchmark times this same step). Per epoch:
averaged terms, val mIoU from one confusion matrix, a report with a checkpoint that holds all
an exact resume needs. Teacher training is this loop without a teacher.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from trainables import metrics as M
from trainables.checkpoint import rng_state, set_rng_state
from trainables.explain import explanation_metrics
from trainables.models import count_flops, count_params, measure_latency, model_from_config
from trainables.reporting import in_ray_train, make_reporter
from trainables.setup import load_teacher, make_loaders, pick_device, seed_everything
from trainables.step import build_trainer, train_step


def train_loop(config: dict) -> dict:
    seed_everything(config["seed"])
    reporter = make_reporter(config)
    device = pick_device(config["run"]["device"])
    train_dl, val_dl, classes = make_loaders(config, device, config["seed"])
    student = model_from_config(config["model"], len(classes)).to(device)
    teacher = load_teacher(config.get("teacher"), classes, device)
    optim, run = config["optim"], config["run"]
    steps = min(len(train_dl), run["max_steps_per_epoch"] or len(train_dl))
    sample = next(iter(val_dl))[0][:2].to(device)
    tr = build_trainer(config, student, teacher, sample, device, steps * optim["epochs"])

    start, best_miou = 0, -1.0
    state = reporter.restore()
    if state is not None:  # exact resume: weights, optimizer, schedule, scaler, RNG, epoch
        student.load_state_dict(state["model"])
        tr.extras.load_state_dict(state["extras"])
        tr.opt.load_state_dict(state["optimizer"])
        tr.sched.load_state_dict(state["scheduler"])
        tr.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best_miou = state["epoch"] + 1, state["best_miou"]
    tr.model, train_dl, tr.sync_extras = _distribute(student, tr.extras, train_dl)

    out: dict = {}
    for epoch in range(start, optim["epochs"]):
        _set_epoch(train_dl, epoch, config["seed"])
        student.train()
        sums = torch.zeros(len(tr.terms) + 1, device=device)
        sal_time, t0 = 0.0, time.perf_counter()
        for _, (x, y) in zip(range(steps), train_dl):
            out_step = train_step(tr, x, y)
            sums += torch.cat([out_step.loss[None], out_step.losses]).float()
            sal_time += out_step.saliency_s
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        avg = (sums / steps).tolist()  # the one host sync per epoch
        if not math.isfinite(avg[0]):
            raise FloatingPointError(f"training loss became {avg[0]} at epoch {epoch}; trial stopped")
        out = {"epoch": epoch, "lr": tr.sched.get_last_lr()[0], "train_loss": avg[0],
               **{f"train_{n}": v for (n, _, _), v in zip(tr.terms, avg[1:])},
               "step_time_s": epoch_time / steps, "saliency_time_s": sal_time / steps, "epoch_time_s": epoch_time}
        last = epoch == optim["epochs"] - 1
        if (epoch + 1) % run["eval_every"] == 0 or last:
            out.update(evaluate(student, val_dl, classes, device, tr.autocast, tr.channels_last))
        best = None
        if out.get("val_miou", -1.0) > best_miou:
            best_miou = out["val_miou"]
            best = _model_state(student, config, classes, epoch, out)
        out["best_val_miou"] = best_miou
        state = None
        if (epoch + 1) % run["checkpoint_every"] == 0 or last:
            state = {**_model_state(student, config, classes, epoch, out), "extras": tr.extras.state_dict(),
                     "optimizer": tr.opt.state_dict(), "scheduler": tr.sched.state_dict(),
                     "scaler": tr.scaler.state_dict(),
                     "rng": rng_state(), "best_miou": best_miou}
        if last:
            out.update(costs(student, config["data"]))
            if teacher is not None and run["explain"]:
                out.update(explanation_metrics(student, teacher, val_dl, config["distill"]))
        reporter.report(out, state, best)
    reporter.finish(out)
    return out


@torch.no_grad()
def evaluate(model, loader, classes, device, autocast=nullcontext, channels_last=False) -> dict:
    """Confusion matrix over the whole split. The student is evaluated in eval mode and put back."""
    was = model.training
    model.eval()
    cm = torch.zeros(len(classes), len(classes), dtype=torch.int64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            pred = model(x).argmax(1)
        cm += M.confusion_matrix(pred, y, len(classes))
    model.train(was)
    return M.summarize(cm.cpu(), classes)


def costs(model, data: dict) -> dict:
    size = data["crop"]
    return {"params": count_params(model), "gflops": count_flops(model, size) / 1e9,
            "latency_ms": 1000 * measure_latency(model, size, warmup=1, iters=3)}


def _model_state(student, config: dict, classes: list[str], epoch: int, metrics: dict) -> dict:
    return {"model": {k: v.detach().clone() for k, v in student.state_dict().items()},
            "model_cfg": dict(config["model"]), "classes": list(classes), "epoch": epoch,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "input": {"crop": config["data"]["crop"], "eval_size": config["data"]["eval_size"],
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def _distribute(student, extras, train_dl):
    """DDP and a distributed sampler under Ray Train with several workers; the terms' extras
    (connectors, attention) get their gradients averaged across ranks. Taps stay on the
    unwrapped modules; val runs whole on every rank (exact metrics, no padded shards)."""
    if not in_ray_train():
        return student, train_dl, lambda: None
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    world = ray.train.get_context().get_world_size()
    if world == 1:
        return student, train_dl, lambda: None

    def sync_extras():
        for p in extras.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    model = ray.train.torch.prepare_model(student, move_to_device=False)
    return model, ray.train.torch.prepare_data_loader(train_dl, move_to_device=False), sync_extras


def _set_epoch(loader, epoch: int, seed: int) -> None:
    """Shuffle order is a function of (seed, epoch), so a resumed run sees the same batches."""
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
