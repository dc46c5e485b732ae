"""The XGD worker loop: one function that runs under Ray Train or as plain Python.

Per batch: student forward (taps on), teacher forward (frozen, eval mode; graph only from its
CAM layer when the saliency term is on), the registered loss terms, one backward. Per epoch:
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
from trainables.losses import Step, active_terms
from trainables.models import count_flops, count_params, measure_latency, model_from_config
from trainables.reporting import in_ray_train, make_reporter
from trainables.setup import (amp_setup, build_extras, collect_taps, load_teacher, make_loaders,
                              make_optimizer, pick_device, seed_everything)
from trainables.taps import tap


def train_loop(config: dict) -> dict:
    seed_everything(config["seed"])
    reporter = make_reporter(config)
    device = pick_device(config["run"]["device"])
    train_dl, val_dl, classes = make_loaders(config, device, config["seed"])
    student = model_from_config(config["model"], len(classes)).to(device)
    teacher = load_teacher(config.get("teacher"), classes, device)
    distill, optim, run = config["distill"], config["optim"], config["run"]
    terms = active_terms(distill, teacher is not None)
    needs_teacher = teacher is not None and any(t.needs_teacher for _, t, _ in terms)
    s_paths, t_paths, t_leaf = collect_taps(terms, distill, student, teacher)
    sample = next(iter(val_dl))[0][:2].to(device)
    extras = build_extras(terms, distill, student, teacher, s_paths, {**t_paths, **t_leaf}, sample).to(device)
    steps = min(len(train_dl), run["max_steps_per_epoch"] or len(train_dl))
    opt, sched = make_optimizer(optim, [*student.parameters(), *extras.parameters()], steps * optim["epochs"])
    autocast, scaler = amp_setup(optim["amp"], device)
    channels_last = run["channels_last"] and device.type == "cuda"
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher is not None and teacher.to(memory_format=torch.channels_last)

    start, best_miou = 0, -1.0
    state = reporter.restore()
    if state is not None:  # exact resume: weights, optimizer, schedule, scaler, RNG, epoch
        student.load_state_dict(state["model"])
        extras.load_state_dict(state["extras"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best_miou = state["epoch"] + 1, state["best_miou"]
    model, train_dl, sync_extras = _distribute(student, extras, train_dl)

    out: dict = {}
    for epoch in range(start, optim["epochs"]):
        _set_epoch(train_dl, epoch, config["seed"])
        student.train()
        sums = torch.zeros(len(terms) + 1, device=device)
        sal_time, t0 = 0.0, time.perf_counter()
        for i, (x, y) in zip(range(steps), train_dl):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                with tap(student, s_paths) as s_feats:
                    s_logits = model(x)
                t_logits, t_feats = None, {}
                if needs_teacher:
                    # frozen teacher: a graph exists only from its CAM-layer leaves to its logits
                    with torch.set_grad_enabled(bool(t_leaf)), tap(teacher, t_paths) as t_feats, \
                            tap(teacher, t_leaf, leaf=True) as t_leaves:
                        t_logits = teacher(x)
                    t_feats = {**t_feats, **t_leaves}
                step = Step(x, y, s_logits, t_logits, s_feats, t_feats, dict(extras.items()))
                losses = torch.stack([term.fn(step, distill) for _, term, _ in terms])
                loss = (losses * losses.new_tensor([w for _, _, w in terms])).sum()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            sync_extras()
            if optim["grad_clip"]:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], optim["grad_clip"])
            scaler.step(opt)
            scaler.update()
            sched.step()
            sums += torch.cat([loss.detach()[None], losses.detach()]).float()
            sal_time += step.timings.get("saliency", 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        avg = (sums / steps).tolist()  # the one host sync per epoch
        if not math.isfinite(avg[0]):
            raise FloatingPointError(f"training loss became {avg[0]} at epoch {epoch}; trial stopped")
        out = {"epoch": epoch, "lr": sched.get_last_lr()[0], "train_loss": avg[0],
               **{f"train_{n}": v for (n, _, _), v in zip(terms, avg[1:])},
               "step_time_s": epoch_time / steps, "saliency_time_s": sal_time / steps, "epoch_time_s": epoch_time}
        last = epoch == optim["epochs"] - 1
        if (epoch + 1) % run["eval_every"] == 0 or last:
            out.update(evaluate(student, val_dl, classes, device, autocast, channels_last))
        best = None
        if out.get("val_miou", -1.0) > best_miou:
            best_miou = out["val_miou"]
            best = _model_state(student, config, classes, epoch, out)
        out["best_val_miou"] = best_miou
        state = None
        if (epoch + 1) % run["checkpoint_every"] == 0 or last:
            state = {**_model_state(student, config, classes, epoch, out), "extras": extras.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "rng": rng_state(), "best_miou": best_miou}
        if last:
            out.update(costs(student, config["data"]))
            if teacher is not None and run["explain"]:
                out.update(explanation_metrics(student, teacher, val_dl, distill))
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
