"""The sweep's searcher on a persisted study that is ahead of Tune's restored snapshot (a driver
killed after Optuna recorded a trial's end, before Tune snapshotted it): the trial's repeated
results must not stop the sweep."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from orchestrator.run.tuner import _searcher_class


def _restored_after_kill(cls):
    """A searcher whose study holds trial 'a' as COMPLETE while the searcher (as restored from a
    snapshot taken before that) still thinks 'a' runs."""
    space = {"alpha": optuna.distributions.FloatDistribution(0.1, 1.0)}
    searcher = cls(space=space, metric="val_miou", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("a")
    searcher.on_trial_result("a", {"val_miou": 0.4, "training_iteration": 1})
    searcher.on_trial_complete("a", {"val_miou": 0.5, "training_iteration": 2})
    searcher._completed_trials.discard("a")  # the snapshot predates the tell
    return searcher


def test_a_finished_trial_reporting_again_is_skipped_not_fatal():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # what stopped the sweep in CI
        _restored_after_kill(OptunaSearch).on_trial_result("a", {"val_miou": 0.5, "training_iteration": 2})

    searcher = _restored_after_kill(_searcher_class())
    searcher.on_trial_result("a", {"val_miou": 0.5, "training_iteration": 2})
    searcher.on_trial_complete("a", {"val_miou": 0.5, "training_iteration": 2})
    (trial,) = searcher._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.5  # the first end stays
