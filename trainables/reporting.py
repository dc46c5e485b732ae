"""Where a run reports to: Ray Train (a multi-worker trial), Ray Tune (a single-process trial) or
a folder (plain Python). The loop calls the same three methods either way, so it reads the same in
all three."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from trainables import checkpoint

EPOCHS_DONE = "epochs_done"  # 1-based epoch count added to every sweep result: ASHA's time axis
METRICS_FILE = "metrics.json"  # in each reported checkpoint: the metrics of the epoch it closes
# An array in the loop's metrics that is saved as a file beside the checkpoint, never reported as a
# metric: the per-image test confusion counts (trainables.loop.evaluate_best). The sweep's driver
# logs the file as an artifact of the trial's MLflow run (orchestrator.tracking.writer).
TEST_CONFUSION = "test_confusion"
FILES = {TEST_CONFUSION: "test_confusion.npz"}


def split_files(metrics: dict) -> tuple[dict, dict[str, Any]]:
    """(metrics, {file name: array}), the FILES entries taken out of `metrics` in place, so the
    loop's final metrics (returned, written to metrics.json, logged) never hold the array."""
    files = {FILES[k]: metrics.pop(k) for k in list(metrics) if k in FILES}
    return metrics, files


def save_files(files: dict[str, Any], folder: Path) -> None:
    import numpy as np

    for name, array in files.items():
        np.savez_compressed(folder / name, counts=np.asarray(array))


def in_ray_train() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_size()
        return True
    except Exception:
        return False


def in_ray_tune() -> bool:
    try:
        import warnings

        import ray.tune

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ray.tune.get_context().get_trial_id() is not None
    except Exception:
        return False


def with_epochs_done(metrics: dict) -> dict:
    """`epochs_done` = epoch + 1: the scheduler's clock, which (unlike Tune's training_iteration)
    survives a trial that is restarted from its checkpoint."""
    if isinstance(metrics.get("epoch"), (int, float)):
        return {**metrics, EPOCHS_DONE: int(metrics["epoch"]) + 1}
    return metrics


class TuneSession:
    """ray.tune's report/get_checkpoint in the shape of ray.train's, for a trial that runs the loop
    in its own process (no Train run): rank 0 of a world of one, `epochs_done` added to each report."""

    def __init__(self):
        import ray.tune

        self.tune, self.Checkpoint = ray.tune, ray.tune.Checkpoint

    def get_checkpoint(self):
        return self.tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.tune.report(with_epochs_done(metrics), checkpoint=checkpoint)


def replay_restored_epoch(api, metrics: dict | None) -> None:
    """Report a restored Train checkpoint's epoch once more, without the checkpoint. A Train run
    persists its checkpoint before the sweep's driver hears of the report, so a driver killed in
    between never logged that epoch, and the resumed run would start after it. The resumed driver
    logs it now, and skips it when it had it (MLflow holds each epoch once). A one-process trial
    needs none of this: Tune snapshots its checkpoint only after the driver has the result."""
    if metrics is not None and in_ray_train():
        api.report(metrics, checkpoint=None)


def session_api():
    """Who takes reports here: ray.train in a Train worker, a TuneSession in a Tune trial, None in
    plain Python. Both have report(metrics, checkpoint=), get_checkpoint() and Checkpoint."""
    if in_ray_train():
        import ray.train

        return ray.train
    return TuneSession() if in_ray_tune() else None


class FolderReporter:
    """Writes `<out_dir>/<name>/`: checkpoint.pt (latest), best.pt, metrics.jsonl. `best` is the
    best-on-val state so far (the test split is evaluated with it at the end)."""

    def __init__(self, config: dict):
        self.dir = Path(config["run"]["out_dir"]) / config["name"]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resume_from: str | None = config["run"].get("resume")
        self.rank = 0
        self.best: dict | None = None
        if not self.resume_from:  # a fresh run starts a fresh metrics log
            (self.dir / "metrics.jsonl").unlink(missing_ok=True)

    def restore(self) -> dict[str, Any] | None:
        """The resume checkpoint, and the best.pt beside it when that is no newer (a best.pt written
        after the checkpoint is of an epoch the resumed run trains again)."""
        if not self.resume_from:
            return None
        state = checkpoint.load(self.resume_from)
        best = Path(self.resume_from).parent / "best.pt"
        if best.exists():
            kept = checkpoint.load(best)
            self.best = kept if kept.get("epoch", math.inf) <= state["epoch"] else None
        self._truncate_log(state["epoch"])
        return state

    def _truncate_log(self, epoch: int) -> None:
        """Keep the log's lines up to the checkpoint's epoch: a line is written before its
        checkpoint, so a kill between the two left a line of an epoch the resumed run trains again."""
        log = self.dir / "metrics.jsonl"
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", math.inf) <= epoch:
                    kept.append(line + "\n")
            except ValueError:  # a line cut short by the kill
                continue
        log.write_text("".join(kept))

    def report(self, metrics: dict, state: dict | None, best: dict | None) -> None:
        if best is not None:
            self.best = best
        metrics, files = split_files(metrics)
        save_files(files, self.dir)
        val = f" val_miou {metrics['val_miou']:.4f}" if "val_miou" in metrics else ""
        print(
            f"[{self.dir.name}] epoch {metrics['epoch']}: loss {metrics['train_loss']:.4f}{val} "
            f"({metrics['step_time_s']:.3f} s/step)",
            flush=True,
        )
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_finite(metrics)) + "\n")
        if best is not None:
            checkpoint.save(best, self.dir / "best.pt")
        if state is not None:
            checkpoint.save(state, self.dir / checkpoint.FILE)

    def finish(self, final: dict) -> None:
        final, files = split_files(final)  # a report took them already, unless the run resumed finished
        save_files(files, self.dir)
        (self.dir / "metrics.json").write_text(json.dumps(_finite(final), indent=2))


class RayReporter:
    """Ray's report with a checkpoint directory holding checkpoint.pt and best.pt (rank 0 only)."""

    def __init__(self, api):
        self.train = api
        self.rank = api.get_context().get_world_rank() if hasattr(api, "get_context") else 0
        self.best: dict | None = None

    def restore(self) -> dict[str, Any] | None:
        ckpt = self.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            state = checkpoint.load(Path(d) / checkpoint.FILE)
            best = Path(d) / "best.pt"
            self.best = checkpoint.load(best) if best.exists() else None
            metrics = Path(d) / METRICS_FILE
            last = json.loads(metrics.read_text()) if metrics.exists() else None
        replay_restored_epoch(self.train, last)
        return state

    def report(self, metrics: dict, state: dict | None, best: dict | None) -> None:
        if best is not None:
            self.best = best
        metrics, files = split_files(metrics)
        metrics = _finite(metrics)
        if state is None or self.rank != 0:
            self.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, Path(d) / checkpoint.FILE)
            if self.best is not None:
                checkpoint.save(self.best, Path(d) / "best.pt")
            (Path(d) / METRICS_FILE).write_text(json.dumps(metrics))
            save_files(files, Path(d))
            self.train.report(metrics, checkpoint=self.train.Checkpoint.from_directory(d))

    def finish(self, final: dict) -> None:
        pass


def make_reporter(config: dict):
    api = session_api()
    return FolderReporter(config) if api is None else RayReporter(api)


def _finite(metrics: dict) -> dict:
    """Drop NaN metrics (e.g. a class's IoU that is undefined); a NaN loss never gets here: the
    loop raises on it first."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
