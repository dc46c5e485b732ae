"""A stand-in for trainables.loop.train_loop in sweep tests where the orchestration is the point:
same contract (a report every epoch through trainables.reporting.session_api(), with a checkpoint
holding checkpoint.pt and best.pt; resume from its get_checkpoint()), no model. It runs under
both executors (a Train worker or the Tune trial's own process). val_miou grows with distill.alpha, so the
search has something to find and ASHA something to stop. Knobs ride on trainer fields the stub
does not otherwise use: run.max_steps_per_epoch = tenths of a second per epoch (default 2),
data.data_seed = 666 or 667 makes the trial raise."""

from __future__ import annotations

import json
import os
import tempfile
import time


def stub_worker(config: dict, api=None) -> dict:
    from trainables.reporting import replay_restored_epoch, session_api

    api = api or session_api()
    epochs = config["optim"]["epochs"]
    sleep_s = (config["run"].get("max_steps_per_epoch") or 2) / 10
    fail = config["data"].get("data_seed") in (666, 667)
    start, best = 0, -1.0
    ckpt = api.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.load(open(os.path.join(d, "checkpoint.json")))
        start, best = state["epoch"] + 1, state["best"]
        replay_restored_epoch(api, state.get("metrics"))  # as trainables.reporting.RayReporter does
    out: dict = {}
    for epoch in range(start, epochs):
        time.sleep(sleep_s)
        if fail:
            raise RuntimeError("stub trial failed on purpose")
        miou = min(1.0, config["distill"]["alpha"] / 2.0) * (epoch + 1) / epochs
        best = max(best, miou)
        out = {
            "epoch": epoch,
            "train_loss": 1.0 / (epoch + 1),
            "train_seg": 0.5 / (epoch + 1),
            "val_miou": miou,
            "best_val_miou": best,
            "lr": 0.01,
            "step_time_s": 0.01,
        }
        if epoch == epochs - 1:
            out.update(params=1000.0, gflops=1.5 + config["distill"]["tau"], latency_ms=10.0 * config["distill"]["tau"])
        with tempfile.TemporaryDirectory() as d:
            json.dump({"epoch": epoch, "best": best, "metrics": out}, open(os.path.join(d, "checkpoint.json"), "w"))
            open(os.path.join(d, "best.pt"), "w").write("stub")
            api.report(out, checkpoint=api.Checkpoint.from_directory(d))
    return out


def resume_marking_worker(config: dict, api=None) -> dict:
    """stub_worker that leaves <run.out_dir>/markers/<trial>-resumed-<epoch> when it starts
    from a checkpoint, so a test can see that a resumed trial continued instead of restarting."""
    from trainables.reporting import session_api

    api = api or session_api()
    ckpt = api.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            epoch = json.load(open(os.path.join(d, "checkpoint.json")))["epoch"]
        marks = os.path.join(config["run"]["out_dir"], "markers")
        os.makedirs(marks, exist_ok=True)
        open(os.path.join(marks, f"{config['name']}-resumed-{epoch}"), "w").close()
    return stub_worker(config, api)


def ddp_probe_worker(config: dict) -> dict:
    """The real trainables.loop.train_loop, plus a record per rank of the world it ran in and a
    digest of its final weights (DDP keeps the replicas identical; without it they would differ)."""
    import hashlib

    import ray.train
    import ray.train.torch
    import torch

    from trainables.loop import train_loop

    captured = {}
    original = ray.train.torch.prepare_model

    def capture(model, *args, **kwargs):
        captured["model"] = model
        return original(model, *args, **kwargs)

    ray.train.torch.prepare_model = capture
    try:
        out = train_loop(config)
    finally:
        ray.train.torch.prepare_model = original
    ctx = ray.train.get_context()
    model = captured.get("model")
    digest = (
        None
        if model is None
        else hashlib.sha256(
            b"".join(p.detach().cpu().contiguous().numpy().tobytes() for p in model.parameters())
        ).hexdigest()
    )
    folder = os.path.join(config["run"]["out_dir"], "ddp_probe")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{ctx.get_world_rank()}.json"), "w") as f:
        json.dump(
            {
                "world_size": ctx.get_world_size(),
                "params": digest,
                "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            },
            f,
        )
    return out
