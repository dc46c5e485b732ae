"""One sweep trial, run by one of two executors (resources.executor):

- "tune": the Tune trial runs the worker loop in its own process, holding the worker's CPUs/GPUs.
  One process per trial, reused from trial to trial (Tune's reuse_actors), so a trial starts in
  about a second instead of the ~15 s a Train run costs on 2 CPUs (controller and worker processes,
  each importing torch, and the controller's 2 s polls). Checkpoints are persisted by the trial's
  own report, so a retried trial resumes from the last epoch it reported. "auto" picks this for
  one worker.
- "train": a Tune function trainable that builds and fits a TorchTrainer (Ray Train V2), needed
  for DDP (num_workers > 1). The Tune trial only waits on its Train run, so it reserves a token
  (1 byte of the `memory` resource; Tune refuses an all-zero request) and the CPUs/GPUs go to the
  Train workers: a CPU-holding trial actor next to CPU-holding workers is how 2 concurrent trials
  on 2 CPUs deadlock. The Train run is named after the Tune trial id and stored under the sweep
  folder, so a restarted or resumed trial finds its own run and its last checkpoint.

The worker loop reports through trainables.reporting.session_api() and reads the same under both.
A failure no retry can fix (NaN loss, CUDA OOM: orchestrator.run.failures) leaves a marker in the
trial's run folder, and a retry that finds it fails again at once instead of redoing epochs
towards the same end (and the driver then allows no further retry: callback.DriverCallback).
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.run.failures import FatalTrialError, fatal_cause
from orchestrator.run.storage import read_text, write_text
from orchestrator.spec import space as S
from orchestrator.spec.paths import join
from trainables.reporting import EPOCHS_DONE, with_epochs_done  # noqa: F401 (EPOCHS_DONE re-exported)

TRIAL_RESOURCES = {"CPU": 0, "memory": 1}  # a trial that only waits on its Train run
FATAL_FILE = "xgd_fatal.txt"  # in the trial's run folder: why it failed for good


@dataclass
class TrialPlan:
    """Everything a trial needs, pickled with the trainable (no live handles in here)."""

    base: dict  # the TrainSpec dict every trial starts from (teacher set)
    students: dict[str, dict]
    worker: Callable[[dict], object]
    train_storage: str  # storage_path of the Train runs: <sweep dir>/train
    num_workers: int = 1
    use_train: bool = False  # the "train" executor (see the module doc)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    reaper_name: str | None = None
    out_dir: str = ""  # run.out_dir for the trial configs (only plain-Python runs write there)
    extra: dict = field(default_factory=dict)


def trial_dirname(trial) -> str:
    """A trial's folder in the sweep: its id (Tune's default packs the params into the name,
    mangled: a gradcam++ trial's folder said distill_cam=gradcam)."""
    return f"trial_{trial.trial_id}"


def trial_config(plan: TrialPlan, point: dict, trial_id: str) -> dict:
    """The full trainer config of one trial: base + sampled point, named after the trial."""
    cfg = S.resolve(plan.base, point, plan.students)
    cfg["name"] = trial_id
    if plan.out_dir:
        cfg["run"]["out_dir"] = plan.out_dir
    return cfg


# Ray internals this module overrides or patches ("module:attribute", "params" = its parameter names |
# "reads" = names its code looks up); tests/test_ray_internals.py checks them against the installed Ray.
RAY_INTERNALS = (
    (
        "ray.tune.integration.ray_train:TuneReportCallback.after_report",
        "params",
        ("self", "run_context", "metrics", "checkpoint"),
    ),
    # _replace_ray_cleaner swaps this module global, which TorchTrainer looks up when it builds its callbacks
    ("ray.train.v2.api.data_parallel_trainer:PlacementGroupCleanerCallback", "attrs", ()),
    ("ray.train.torch:TorchTrainer._create_default_callbacks", "reads", ("PlacementGroupCleanerCallback",)),
)


def make_report_callback():
    """TuneReportCallback plus `epochs_done`, so the scheduler's clock survives a trial restart
    (Tune's training_iteration starts again at 1 when a trial is resumed from its Train checkpoint)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class TrialReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            super().after_report(run_context, [with_epochs_done(metrics[0]), *metrics[1:]], checkpoint)

    return TrialReport()


def _replace_ray_cleaner(link) -> bool:
    """Put our link where Ray Train creates its own PlacementGroupCleanerCallback (this trial's
    process only). Ray's cleaner is a detached actor per run that asks the dashboard whether the
    controller lives; without a dashboard every stopped trial leaves one behind (~240 MB each).
    The link does the same job through the sweep's reaper. False: Ray moved, keep both."""
    try:
        from ray.train.v2.api import data_parallel_trainer as dpt
    except ImportError:  # pragma: no cover
        return False
    if not hasattr(dpt, "PlacementGroupCleanerCallback"):
        return False
    dpt.PlacementGroupCleanerCallback = lambda *args, **kwargs: link
    return True


def _read(path: str) -> str:
    try:
        return read_text(path).strip()
    except (OSError, ValueError):
        return ""


def fatal_marker(plan: TrialPlan, trial_id: str) -> str:
    return join(plan.train_storage, trial_id, FATAL_FILE)


def _run_marking_fatal(fn: Callable[[], object], marker: str) -> None:
    earlier = _read(marker)
    if earlier:  # a retry cannot fix this (NaN loss, CUDA OOM): fail again at once
        raise FatalTrialError(earlier)
    try:
        fn()
    except Exception:
        cause = fatal_cause(traceback.format_exc())
        if cause:
            write_text(marker, cause)
        raise


def free_cuda_cache() -> None:
    """Hand the CUDA blocks torch's allocator keeps cached back to the device, so the next trial in
    this reused process, or another process sharing the GPU, can have them. No-op until CUDA is used."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()  # modules with hooks hold reference cycles: free them before emptying the cache
        torch.cuda.empty_cache()


def run_and_release(fn: Callable[[], object], marker: str) -> None:
    """A one-process trial: `_run_marking_fatal`, then let go of what it held. A failed loop's
    frames (its models, optimizer, batches) stay reachable from the exception's traceback: they are
    cleared before the exception leaves, and the cached CUDA memory is freed either way."""
    try:
        _run_marking_fatal(fn, marker)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        free_cuda_cache()


def make_trainable(plan: TrialPlan):
    """The Tune trainable, with its resources, for this plan's executor."""
    from ray import tune

    if not plan.use_train:

        def xgd_trial_in_process(config: dict) -> None:
            trial_id = tune.get_context().get_trial_id()
            cfg = trial_config(plan, config, trial_id)
            run_and_release(lambda: plan.worker(cfg), fatal_marker(plan, trial_id))

        need = {"CPU": plan.cpus_per_worker, **({"GPU": plan.gpus_per_worker} if plan.gpus_per_worker > 0 else {})}
        return tune.with_resources(xgd_trial_in_process, need)

    def xgd_trial(config: dict) -> None:
        import ray.train
        from ray.train.torch import TorchTrainer

        from orchestrator.run.reaper import make_link

        trial_id = tune.get_context().get_trial_id()
        per_worker = {"CPU": plan.cpus_per_worker}
        if plan.gpus_per_worker > 0:
            per_worker["GPU"] = plan.gpus_per_worker
        callbacks = [make_report_callback()]
        link = make_link(trial_id, plan.reaper_name)
        if link is not None and not _replace_ray_cleaner(link):
            callbacks.append(link)
        trainer = TorchTrainer(
            plan.worker,
            train_loop_config=trial_config(plan, config, trial_id),
            scaling_config=ray.train.ScalingConfig(
                num_workers=plan.num_workers, use_gpu=plan.gpus_per_worker > 0, resources_per_worker=per_worker
            ),
            run_config=ray.train.RunConfig(
                name=trial_id,
                storage_path=plan.train_storage,
                callbacks=callbacks,
                # retries belong to Tune (resources.max_failures): a Tune retry restarts this
                # function, which finds the same Train run and resumes from its checkpoint
                failure_config=ray.train.FailureConfig(max_failures=0),
                # the last checkpoint holds best.pt too: older ones are only disk
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            ),
        )
        _run_marking_fatal(trainer.fit, fatal_marker(plan, trial_id))

    return tune.with_resources(xgd_trial, TRIAL_RESOURCES)
