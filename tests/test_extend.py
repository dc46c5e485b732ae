"""A sweep that grows: `--resume` with a larger search.num_samples runs only the missing trials, in
a second Tune experiment whose Optuna sampler starts from the persisted study of the first; every
trial is a child of the one MLflow parent run; a study that lost its trials is told them again.
And what a resumed sweep may not change, and the study's trials a killed driver left running."""

from __future__ import annotations

import optuna
import pytest
import ray.cloudpickle
from rich.console import Console

import sweep_stubs
from orchestrator.errors import UserError
from orchestrator.run import study
from orchestrator.run.storage import saved_spec
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import reader
from test_sweep import merge, mlflow_runs, stub_raw

ray.cloudpickle.register_pickle_by_value(sweep_stubs)

ASKED: list[tuple[int, list[int]]] = []  # (trial number, numbers of the study's COMPLETE trials when it was asked)


class RecordingTPE(optuna.samplers.TPESampler):
    """TPE that notes which finished trials the study held when each new trial was asked."""

    def before_trial(self, study, trial):
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        ASKED.append((trial.number, sorted(t.number for t in done)))
        super().before_trial(study, trial)


def recording_sampler(spec):
    from orchestrator.spec.sweep import sampler

    _, define = sampler(spec)
    return RecordingTPE(seed=spec.search.seed, n_startup_trials=2), define


def grow_raw(tmp_path, n: int) -> dict:
    return stub_raw(
        tmp_path,
        "grow",
        train={"optim": {"epochs": 2}, "run": {"max_steps_per_epoch": 1}},
        search={"num_samples": n},
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweep_grows_from_4_to_8_trials_with_the_sampler_starting_from_the_first_4(
    ray_cluster, tmp_path, monkeypatch
):
    import orchestrator.run.tuner

    monkeypatch.setattr(orchestrator.run.tuner, "sampler", recording_sampler)
    ASKED.clear()
    first = run_sweep(parse_sweep_spec(grow_raw(tmp_path, 4)), worker=sweep_stubs.stub_worker)
    assert first.status == "completed" and len(first.rows) == 4
    spec = parse_sweep_spec(grow_raw(tmp_path, 8))
    storage = study.study_path(spec.results, spec.name)
    assert study.finished_trials(storage, spec.name) == 4  # the study outlived its driver

    ASKED.clear()
    out = run_sweep(spec, resume=True, worker=sweep_stubs.stub_worker)
    assert out.status == "completed" and len(out.rows) == 8, [r.state for r in out.rows]
    new = [(n, done) for n, done in ASKED if n >= 4]
    assert [n for n, _ in new] == [4, 5, 6, 7], ASKED  # only the 4 missing trials were sampled
    assert new[0][1] == [0, 1, 2, 3]  # the first new trial was sampled knowing the first 4 results

    loaded = optuna.load_study(study_name=spec.name, storage=study.open_storage(storage))
    assert [t.state for t in loaded.trials] == [optuna.trial.TrialState.COMPLETE] * 8
    first_alphas = sorted(r.point["distill.alpha"] for r in first.rows)
    assert sorted(t.params["distill.alpha"] for t in loaded.trials[:4]) == pytest.approx(first_alphas)

    client, parents, children = mlflow_runs(spec)
    assert len(parents) == 1 and len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    table = reader.trials_table(client, reader.find_sweep(client, spec.name))
    assert table.num_rows == 8  # what `report` reads: one sweep with all 8 trials

    # a study lost (or a sweep from before studies were persisted): growing tells it the 8 again first
    storage.rename(storage.with_name("lost.log.bak"))
    ASKED.clear()
    spec = parse_sweep_spec(grow_raw(tmp_path, 9))
    again = run_sweep(spec, resume=True, worker=sweep_stubs.stub_worker)
    assert len(again.rows) == 9 and again.status == "completed"
    assert ASKED[-1] == (8, list(range(8))), ASKED
    assert len(mlflow_runs(spec)[2]) == 9


def test_trials_a_killed_driver_left_running_in_the_study_are_failed_at_the_end(tmp_path):
    spec = parse_sweep_spec(grow_raw(tmp_path, 4))
    s = optuna.create_study(study_name=spec.name, storage=study.open_storage(study.study_path(spec.results, "grow")))
    s.tell(s.ask(), 0.5)
    s.ask()  # asked, never told: its driver died before Tune's snapshot
    assert study.fail_stale(spec) == [1]
    states = [
        t.state
        for t in optuna.load_study(
            study_name="grow", storage=study.open_storage(study.study_path(spec.results, "grow"))
        ).trials
    ]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_resume_refuses_a_changed_space_and_keeps_the_saved_spec_otherwise(tmp_path):
    from orchestrator.run.storage import save_spec

    spec = parse_sweep_spec(grow_raw(tmp_path, 4))
    save_spec(spec)
    console = Console(record=True, width=200)
    wider = parse_sweep_spec(merge(grow_raw(tmp_path, 4), {"space": {"distill.alpha": {"high": 3.0}}}))
    with pytest.raises(UserError, match=r"^--resume: space\.distill\.alpha\.high is 3\.0 here but 2\.0"):
        saved_spec(wider, console)
    with pytest.raises(UserError, match=r"objective\.metric"):
        saved_spec(parse_sweep_spec({**grow_raw(tmp_path, 4), "objective": {"metric": "val_pixel_acc"}}), console)

    grown = saved_spec(parse_sweep_spec(grow_raw(tmp_path, 8)), console)
    assert grown.num_samples == 8 and "growing sweep 'grow' from 4 to 8 trials" in console.export_text()
    assert study.stages(grown, study.grown(grown))[1].name == "grow~8"
    assert study.stages(grown, study.grown(grown))[1].num_samples == 4

    other = saved_spec(parse_sweep_spec(merge(grow_raw(tmp_path, 2), {"train": {"optim": {"lr": 0.5}}})), console)
    assert other.num_samples == 4 and other.train.optim.lr == spec.train.optim.lr  # saved values kept
    assert "the spec changed since the sweep started (train.optim.lr, search.num_samples)" in console.export_text()
