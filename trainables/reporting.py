"""Where a run reports to: Ray Train (inside a trial) or a folder (plain Python). The loop calls
the same three methods either way, so it reads the same in both."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Optional

from trainables import checkpoint


def in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_size()
        return True
    except Exception:
        return False


class FolderReporter:
    """Writes `<out_dir>/<name>/`: checkpoint.pt (latest), best.pt, metrics.jsonl."""

    def __init__(self, config: dict):
        self.dir = Path(config["run"]["out_dir"]) / config["name"]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resume_from: Optional[str] = config["run"].get("resume")
        self.rank = 0
        if not self.resume_from:  # a fresh run starts a fresh metrics log
            (self.dir / "metrics.jsonl").unlink(missing_ok=True)

    def restore(self) -> Optional[dict[str, Any]]:
        return checkpoint.load(self.resume_from) if self.resume_from else None

    def report(self, metrics: dict, state: Optional[dict], best: Optional[dict]) -> None:
        val = f" val_miou {metrics['val_miou']:.4f}" if "val_miou" in metrics else ""
        print(f"[{self.dir.name}] epoch {metrics['epoch']}: loss {metrics['train_loss']:.4f}{val} "
              f"({metrics['step_time_s']:.3f} s/step)", flush=True)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_finite(metrics)) + "\n")
        if best is not None:
            checkpoint.save(best, self.dir / "best.pt")
        if state is not None:
            checkpoint.save(state, self.dir / checkpoint.FILE)

    def finish(self, final: dict) -> None:
        (self.dir / "metrics.json").write_text(json.dumps(_finite(final), indent=2))


class RayReporter:
    """ray.train.report with a checkpoint directory holding checkpoint.pt and best.pt (rank 0 only)."""

    def __init__(self, config: dict):
        import ray.train

        self.train = ray.train
        self.rank = ray.train.get_context().get_world_rank()
        self.best: Optional[dict] = None

    def restore(self) -> Optional[dict[str, Any]]:
        ckpt = self.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = checkpoint.load(Path(d) / checkpoint.FILE)
            best = Path(d) / "best.pt"
            self.best = checkpoint.load(best) if best.exists() else None
        return state

    def report(self, metrics: dict, state: Optional[dict], best: Optional[dict]) -> None:
        if best is not None:
            self.best = best
        if state is None or self.rank != 0:
            self.train.report(_finite(metrics), checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, Path(d) / checkpoint.FILE)
            if self.best is not None:
                checkpoint.save(self.best, Path(d) / "best.pt")
            self.train.report(_finite(metrics), checkpoint=self.train.Checkpoint.from_directory(d))

    def finish(self, final: dict) -> None:
        pass


def make_reporter(config: dict):
    return RayReporter(config) if in_ray_train() else FolderReporter(config)


def _finite(metrics: dict) -> dict:
    """Drop NaN metrics (e.g. a class's IoU that is undefined); a NaN loss never gets here: the
    loop raises on it first."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
