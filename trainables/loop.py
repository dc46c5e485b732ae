"""The XGD worker loop: one function that runs under Ray Train or as plain Python.

Per batch: `trainables.step.train_step` (student forward with taps, frozen teacher forward with a
graph only from its CAM layer when the saliency term is on, the registered loss terms, one
backward; the benchmark times this same step). Per epoch: averaged terms, the epoch's peak
memory and GPU utilisation (trainables.device_stats), val mIoU from one confusion matrix, the
student's static costs (params, GFLOPs, latency: measured once before the first epoch, so a
trial stopped early still reports them to a Pareto search), a report with a checkpoint that holds
all an exact resume needs. The last report adds, once, explanation metrics and the held-out test
split, both of the best-on-val weights. Teacher training is this loop without a teacher.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext

import torch

from trainables import metrics as M
from trainables.checkpoint import rng_state, set_rng_state
from trainables.constants import IMAGENET_MEAN, IMAGENET_STD, TEACHER_COUNTS
from trainables.device_stats import DeviceStats
from trainables.explain import explanation_metrics
from trainables.models import count_flops, count_params, measure_latency, model_from_config
from trainables.reporting import TEST_CONFUSION, in_ray_train, make_reporter
from trainables.setup import (
    load_teacher,
    make_loaders,
    make_test_loader,
    pick_device,
    placement,
    seed_everything,
    teacher_store,
)
from trainables.step import build_trainer, train_step
from trainables.timing import SpanTimer


def train_loop(config: dict) -> dict:
    seed_everything(config["seed"])
    reporter = make_reporter(config)
    device = pick_device(config["run"]["device"])
    where = placement(device)  # host, Ray node, device: tags on the trial's run
    rank, world = _world()
    train_dl, val_dl, classes = make_loaders(config, device, config["seed"], rank, world)
    student = model_from_config(config["model"], len(classes)).to(device)
    teacher = load_teacher(config.get("teacher"), classes, device)
    optim, run = config["optim"], config["run"]
    steps = min(len(train_dl), run["max_steps_per_epoch"] or len(train_dl))  # train_dl is this rank's shard
    sample = next(iter(val_dl))[0][:2].to(device)
    store = teacher_store(config, device) if teacher is not None else None  # teacher outputs, shared
    tr = build_trainer(config, student, teacher, sample, device, steps * optim["epochs"], store)
    static = costs(student, config["data"]) if reporter.rank == 0 else {}  # eval mode, no RNG drawn
    test_dl = make_test_loader(config, device)
    if test_dl is None and reporter.rank == 0:
        print(f"[{config['name']}] {_no_test_split(config['data'])}: no test_* metrics", flush=True)

    start, best_miou = 0, -1.0
    restored = reporter.restore()
    if restored is not None:  # exact resume: weights, optimizer, schedule, scaler, RNG, epoch
        student.load_state_dict(restored["model"])
        tr.extras.load_state_dict(restored["extras"])
        tr.opt.load_state_dict(restored["optimizer"])
        tr.sched.load_state_dict(restored["scheduler"])
        tr.scaler.load_state_dict(restored["scaler"])
        set_rng_state(restored["rng"])
        start, best_miou = restored["epoch"] + 1, restored["best_miou"]
    tr.model, tr.sync_extras = _distribute(student, tr.extras, world)

    out: dict = {}
    stats = DeviceStats(device)
    for epoch in range(start, optim["epochs"]):
        train_dl.sampler.set_epoch(epoch)  # shuffle and augmentations from (seed, epoch, index)
        student.train()
        sums = torch.zeros(len(tr.terms) + 1, device=device)
        saliency, t0, taken = SpanTimer(device), time.perf_counter(), 0
        stats.start()  # peak memory from here; GPU utilisation sampled until stop()
        order, bs = [i for i, _ in train_dl.sampler], train_dl.batch_size  # batch b: order[b*bs:(b+1)*bs]
        tr.counts = dict.fromkeys(TEACHER_COUNTS, 0)
        for b, (x, y) in enumerate(itertools.islice(train_dl, steps)):
            out_step = train_step(tr, x, y, (epoch, order[b * bs : (b + 1) * bs]))
            sums += torch.cat([out_step.loss[None], out_step.losses]).float()
            saliency.add(out_step.saliency)
            taken += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        device_figures = stats.stop()
        avg = (sums / taken).tolist()  # the one host sync per epoch
        sal_time = saliency.seconds()  # CUDA: device time from the step's events, read after the sync
        if not math.isfinite(avg[0]):
            raise FloatingPointError(f"training loss became {avg[0]} at epoch {epoch}; trial stopped")
        out = {
            "epoch": epoch,
            "lr": tr.sched.get_last_lr()[0],
            "steps": taken,
            "train_loss": avg[0],
            **{f"train_{n}": v for (n, _, _), v in zip(tr.terms, avg[1:])},
            "step_time_s": epoch_time / taken,
            "saliency_time_s": sal_time / taken,
            "epoch_time_s": epoch_time,
            **tr.counts,  # this rank's teacher forwards and cache hits, misses, bytes written
            **device_figures,
            **where,
            **static,
        }
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
            state = {
                **_model_state(student, config, classes, epoch, out),
                "extras": tr.extras.state_dict(),
                "optimizer": tr.opt.state_dict(),
                "scheduler": tr.sched.state_dict(),
                "scaler": tr.scaler.state_dict(),
                "rng": rng_state(),
                "best_miou": best_miou,
            }
        if last:
            out.update(closing(student, teacher, best or reporter.best, val_dl, test_dl, classes, tr, run))
        reporter.report(out, state, best)
        if store is not None and reporter.rank == 0:
            store.evict()  # oldest entries past teacher.cache.max_gb
    if start == optim["epochs"]:  # resumed from the last epoch's checkpoint: killed before it finished
        out = {**restored["metrics"], **closing(student, teacher, reporter.best, val_dl, test_dl, classes, tr, run)}
    reporter.finish(out)
    return out


def closing(student, teacher, best: dict | None, val_dl, test_dl, classes, tr, run: dict) -> dict:
    """The last report's extras, once, both of the best-on-val weights: explanation metrics and the
    held-out test split (nothing selects on either)."""
    out = {}
    if teacher is not None and run["explain"]:
        out.update(explain_best(student, teacher, best, val_dl, tr.distill))
    if test_dl is not None:
        out.update(evaluate_best(student, best, test_dl, classes, tr.device, tr.autocast, tr.channels_last))
    return out


def explain_best(student, teacher, best: dict | None, loader, distill: dict) -> dict:
    """Explanation metrics (trainables.explain) of the best-on-val weights (`best`, as in best.pt),
    the weights the test split scores, not the last epoch's; the student gets its own back after."""
    if best is None:  # no finite val mIoU in the whole run
        print("no best-on-val weights to explain: no expl_* metrics", flush=True)
        return {}
    own = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(best["model"])
    try:
        return explanation_metrics(student, teacher, loader, distill)
    finally:
        student.load_state_dict(own)


@torch.no_grad()
def evaluate(
    model, loader, classes, device, autocast=nullcontext, channels_last=False, prefix="val_", per_image=False
) -> dict:
    """Confusion matrix over the whole split. The student is evaluated in eval mode and put back.
    With `per_image`, the (N_images, K, K) int64 counts of each image, in the loader's order, go
    under TEST_CONFUSION as a numpy array (the reporter saves it as a file, never as a metric)."""
    was = model.training
    model.eval()
    k = len(classes)
    cm = torch.zeros(k, k, dtype=torch.int64, device=device)
    images = []
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            pred = model(x).argmax(1)
        if per_image:
            images.append(M.per_image_confusion(pred, y, k))
            cm += images[-1].sum(0)
        else:
            cm += M.confusion_matrix(pred, y, k)
    model.train(was)
    out = M.summarize(cm.cpu(), classes, prefix)
    if per_image:
        out[TEST_CONFUSION] = (torch.cat(images) if images else torch.zeros(0, k, k, dtype=torch.int64)).cpu().numpy()
    return out


def evaluate_best(model, best: dict | None, loader, classes, device, autocast=nullcontext, channels_last=False) -> dict:
    """test_miou, test_pixel_acc, test_iou_<class> of the best-on-val weights (`best`, as in
    best.pt), not the last epoch's, and their per-image confusion counts (TEST_CONFUSION: the
    confirmation's bootstrap over test images); the model gets its own weights back afterwards."""
    if best is None:  # no finite val mIoU in the whole run
        print("no best-on-val weights to evaluate on the test split: no test_* metrics", flush=True)
        return {}
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best["model"])
    try:
        return evaluate(model, loader, classes, device, autocast, channels_last, prefix="test_", per_image=True)
    finally:
        model.load_state_dict(own)


def _no_test_split(data: dict) -> str:
    if data.get("test_split") is None:
        return "data.test_split is null"
    return f"data.kind {data['kind']!r} has no test split here (data.test_split: {data.get('test_split')})"


def costs(model, data: dict) -> dict:
    """Params, GFLOPs and latency (ms) of one forward at the crop size; they do not depend on the
    weights, so the loop measures them once and reports them with every epoch."""
    size = data["crop"]
    return {
        "params": count_params(model),
        "gflops": count_flops(model, size) / 1e9,
        "latency_ms": 1000 * measure_latency(model, size, warmup=1, iters=3),
    }


def _model_state(student, config: dict, classes: list[str], epoch: int, metrics: dict) -> dict:
    return {
        "model": {k: v.detach().clone() for k, v in student.state_dict().items()},
        "model_cfg": dict(config["model"]),
        "classes": list(classes),
        "epoch": epoch,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "input": {
            "crop": config["data"]["crop"],
            "eval_size": config["data"]["eval_size"],
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
    }


def _world() -> tuple[int, int]:
    """(rank, world size) of this Ray Train worker; (0, 1) outside Ray Train."""
    if not in_ray_train():
        return 0, 1
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _distribute(student, extras, world: int):
    """DDP with several Ray Train workers (the loader is already this rank's shard); the terms'
    extras (connectors, attention) get their gradients averaged across ranks. Taps stay on the
    unwrapped modules; val runs whole on every rank (exact metrics, no padded shards)."""
    if world == 1:
        return student, lambda: None
    import ray.train.torch
    import torch.distributed as dist

    def sync_extras():
        for p in extras.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world

    return ray.train.torch.prepare_model(student, move_to_device=False), sync_extras
