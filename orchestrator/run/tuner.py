"""The Tune experiment of one sweep stage: OptunaSearch on the sweep's persisted study
(orchestrator.run.study), ASHA, and the run config; and the driver's quiet logging."""

from __future__ import annotations

import logging
import warnings

from orchestrator.run import study
from orchestrator.run.trial import EPOCHS_DONE, trial_dirname
from orchestrator.spec.sweep import SweepSpec, sampler

# OptunaSearch's record of the trials it has told (PersistedStudySearch adds to it); checked by
# tests/test_ray_internals.py
RAY_INTERNALS = (
    ("ray.tune.search.optuna:OptunaSearch.on_trial_result", "reads", ("_completed_trials",)),
    ("ray.tune.search.optuna:OptunaSearch.on_trial_complete", "reads", ("_completed_trials", "_ot_trials")),
)
# stored on each Optuna trial as user attributes when reported (with the constrained metrics), so
# the constraints of a later sweep started from this one (search.warm_start_from) can be evaluated
COSTS = ("params", "gflops", "latency_ms")


def _searcher_class():
    from optuna.exceptions import UpdateFinishedTrialError
    from ray.tune.search.optuna import OptunaSearch

    class PersistedStudySearch(OptunaSearch):
        """OptunaSearch on a study persisted outside Tune's snapshot. After the driver was killed,
        the study can be ahead of the restored snapshot: a trial it already holds as finished runs
        again from its checkpoint and reports an epoch once more (CI saw a resumed Train trial do
        this, and Optuna's report then raised and stopped the sweep). That trial's end is in the
        study already: its later results and its completion are not told again."""

        stored: tuple[str, ...] = COSTS  # metrics kept on the Optuna trial (see COSTS)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            try:
                super().on_trial_result(trial_id, result)
            except UpdateFinishedTrialError:
                self._completed_trials.add(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            """The last result's constrained metrics go on the Optuna trial before it is told:
            the sampler's constraints_func reads them there (orchestrator.spec.samplers.Feasibility)."""
            ot_trial = self._ot_trials.get(trial_id)
            if result and ot_trial is not None and trial_id not in self._completed_trials:
                for metric in self.stored:
                    value = result.get(metric)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        try:
                            ot_trial.set_user_attr(metric, float(value))
                        except UpdateFinishedTrialError:
                            break
            super().on_trial_complete(trial_id, result, error)

    return PersistedStudySearch


def new_tuner(spec: SweepSpec, stage: study.Stage, trainable, concurrent: int, callback, verbose: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    OptunaSearch = _searcher_class()

    obj = spec.objectives
    optuna_sampler, define = sampler(spec)
    multi = len(obj) > 1
    searcher = OptunaSearch(
        space=define,
        sampler=optuna_sampler,
        metric=[o.metric for o in obj] if multi else obj[0].metric,
        mode=[o.mode for o in obj] if multi else obj[0].mode,
        # every stage of the sweep asks and tells through one study: a grown sweep's sampler
        # starts from the trials of the stages before it
        storage=study.open_storage(study.study_path(spec.results, spec.name)),
        study_name=spec.name,
    )
    searcher.stored = tuple(dict.fromkeys(COSTS + tuple(c.metric for c in spec.constraints)))
    es = spec.early_stopping
    scheduler = None
    if es.kind == "asha":
        scheduler = ASHAScheduler(
            time_attr=EPOCHS_DONE,
            metric=obj[0].metric,
            mode=obj[0].mode,
            max_t=es.max_t or spec.max_epochs,
            grace_period=es.grace_period,
            reduction_factor=es.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        # reuse_actors: a one-process trial hands its warm process (torch imported) to the next
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=stage.num_samples,
            max_concurrent_trials=concurrent,
            reuse_actors=not spec.resources.use_train,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=stage.name,
            storage_path=spec.storage_path,
            callbacks=[callback],
            verbose=2 if verbose else 0,
            # one checkpoint per one-process trial (it holds best.pt too); Tune
            # then snapshots the experiment at each, so --resume starts a trial
            # from the checkpoint it reported last, not from a 10 s old snapshot
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        ),
    )


def quiet() -> None:
    """The live view owns the terminal: MLflow, Optuna and Tune keep their INFO lines to themselves.
    Called after they are imported (they set their own levels on import)."""
    import mlflow  # noqa: F401
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a retried Train trial counts its iterations from 1 again; Optuna keeps the first report of each
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=", category=UserWarning)
    for name in ("mlflow", "alembic", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # with the auto loggers off, Tune's ResultGrid warns it has no result files: results are tracked here
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # num_to_keep=1 snapshots at every checkpoint: short trials make Tune warn that it snapshots often
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)
    searcher_log = logging.getLogger("ray.tune.search.optuna.optuna_search")
    if not any(isinstance(f, _GridDone) for f in searcher_log.filters):
        searcher_log.addFilter(_GridDone())


class _GridDone(logging.Filter):
    """Optuna's GridSampler stops its study after the last grid point; outside Optuna's own loop
    that raises, and Tune's searcher logs it as a warning. The trial is recorded either way. Also
    dropped: the searcher's notes that a trial the persisted study holds as finished (see
    PersistedStudySearch) reported or completed again."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(m in message for m in ("Study.stop", "Received additional", "can not be updated"))
