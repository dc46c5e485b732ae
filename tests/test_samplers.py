"""`search.algorithm` is each of Optuna's samplers (orchestrator.spec.samplers): built with the
spec's choices (seed; TPE's constant liar when trials run at once, multivariate + group with
`when:`), options checked against the sampler's own, fall-backs said, `auto`'s rule; initial points
validated and run first. On Ray: every sampler runs a small sweep on the quickstart's space with
every trial COMPLETE in the persisted study (a Pareto one with nsga2)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import ray
import yaml

import sweep_stubs
from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.run import study
from orchestrator.run.sweep import run_sweep
from orchestrator.spec import samplers
from orchestrator.spec.samplers import sampler_plan
from orchestrator.spec.sweep import load_sweep_spec, parse_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
ray.cloudpickle.register_pickle_by_value(sweep_stubs)  # Ray workers cannot import tests/
stub_worker = sweep_stubs.stub_worker


def quick(*sets: str):
    return load_sweep_spec(QUICKSTART, list(sets))


def test_tpe_gets_the_constant_liar_when_trials_run_at_once_and_groups_with_when():
    p = sampler_plan(quick())  # max_concurrent 2, a space with when:
    assert p.cls == "TPESampler"
    assert p.kwargs == {"seed": 0, "n_startup_trials": 3, "constant_liar": True, "multivariate": True, "group": True}
    one = sampler_plan(quick("resources.max_concurrent=1"))
    assert "constant_liar" not in one.kwargs
    mine = sampler_plan(quick("search.sampler_options.constant_liar=false", "search.sampler_options.gamma=null"))
    assert mine.kwargs["constant_liar"] is False  # the user's option wins


@pytest.mark.parametrize("algorithm, cls", [(a, c) for a, c in samplers.CLASSES.items()] + [("auto", "TPESampler")])
def test_each_algorithm_is_optunas_own_sampler_seeded(algorithm, cls):
    sets = [f"search.algorithm={algorithm}", "search.seed=7"]
    if algorithm not in ("tpe", "gp", "cmaes"):
        sets.append("search.n_startup_trials=null")
    p = sampler_plan(quick(*sets))
    built = p.build()
    assert type(built).__name__ == cls and p.kwargs["seed"] == 7
    assert isinstance(built, getattr(optuna.samplers, cls))  # NSGA-II/III: a subclass that pickles


def test_every_sampler_survives_tunes_pickle_in_a_fresh_process(tmp_path):
    """Tune saves its searcher, sampler included, with pickle; Optuna's NSGA-II/III hold a thread
    lock, which pickle refuses ("cannot pickle '_thread.lock' object" failed every NSGA sweep)."""
    import pickle
    import subprocess
    import sys

    for algorithm in samplers.CLASSES:
        sets = [f"search.algorithm={algorithm}"] + (
            [] if algorithm in ("tpe", "gp", "cmaes") else ["search.n_startup_trials=null"]
        )
        path = tmp_path / f"{algorithm}.pkl"
        path.write_bytes(pickle.dumps(sampler_plan(quick(*sets)).build()))
        code = "import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); print(type(s).__name__)"
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.strip() == samplers.CLASSES[algorithm], out.stderr[-2000:]


def test_fall_backs_are_said():
    notes = sampler_plan(quick("search.algorithm=cmaes")).notes
    assert len(notes) == 1 and "student, distill.method, distill.cam, distill.beta" in notes[0]
    assert "independent sampler" in notes[0]
    gp = sampler_plan(quick("search.algorithm=gp")).notes
    assert gp and "distill.beta, distill.cam" in gp[0] and "student" not in gp[0]  # GP models categoricals


def test_auto_rule():
    space = quick().space
    assert samplers.auto(space, 2)[0] == "nsga2"
    assert samplers.auto(space, 1)[0] == "tpe"
    numeric = {k: v for k, v in space.items() if k in ("distill.alpha", "distill.tau")}
    assert samplers.auto(numeric, 1) == ("gp", "numeric keys only")


@pytest.mark.parametrize(
    "sets, says",
    [
        (["search.sampler_options.foo=1"], "search.sampler_options.foo: not an option of optuna's TPESampler ("),
        (["search.algorithm=nsga2"], "search.n_startup_trials: nsga2 (NSGAIISampler) has no random start-up"),
        (["search.algorithm=grid"], "space.distill.alpha: a grid needs discrete values"),  # continuous ranges
        (
            ["search.algorithm=cmaes", "objective=[{metric: val_miou, mode: max}, {metric: latency_ms, mode: min}]"],
            "Optuna's CmaEsSampler optimises one objective",
        ),
        (
            ["search.initial_points=[{distill.gamma: 1}]"],
            "search.initial_points[0].distill.gamma: not a key of the space",
        ),
        (
            ["search.initial_points=[{distill.method: pi, distill.beta: 1.0}]"],
            "search.initial_points[0].distill.beta: inactive at this point",
        ),
        (["search.initial_points=[{distill.alpha: 9.0}]"], "search.initial_points[0].distill.alpha: 9.0 is outside"),
        (["search.initial_points=[{student: resnet}]"], "search.initial_points[0].student: 'resnet' is outside"),
    ],
)
def test_bad_search_settings_are_one_line_errors(sets, says, tmp_path, capsys, no_ray):
    err = refused(sets, tmp_path, capsys)
    assert says in err, err


def refused(sets: list[str], tmp_path: Path, capsys) -> str:
    """The one-line error of the quickstart's dry run with these `--set`s (exit 2 asserted)."""
    args = ["sweep", str(QUICKSTART), "--dry-run", "--set", f"results={tmp_path}"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_dry_run_prints_the_sampler_its_fall_backs_and_the_initial_points(tmp_path, capsys, no_ray):
    args = ["sweep", str(QUICKSTART), "--dry-run", "--set", f"results={tmp_path}", "--set", "search.algorithm=cmaes"]
    args += ["--set", "search.initial_points=[{distill.method: xgd, distill.alpha: 1.0, distill.beta: 1.0}]"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "CmaEsSampler(seed=0, n_startup_trials=3)" in out and "independent sampler" in out, out
    assert "1 initial point(s) run first" in out


# ------------------------------------------------------------------ on Ray


def sweep_raw(tmp_path: Path, algorithm: str, **search) -> dict:
    """The quickstart's space and students over the stub trainer (no teacher: nothing reads it)."""
    q = yaml.safe_load(QUICKSTART.read_text())
    return {
        "name": f"s-{algorithm}",
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 4, "num_val": 2, "image_size": 64, "crop": 64},
            "optim": {"epochs": 2},
            "run": {"max_steps_per_epoch": 1, "out_dir": str(tmp_path / "runs")},
        },
        "students": q["students"],
        "space": q["space"],
        "search": {"algorithm": algorithm, "num_samples": 4, "seed": 0, **search},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    }


def told(spec) -> list:
    return optuna.load_study(
        study_name=spec.name, storage=study.open_storage(study.study_path(spec.results, spec.name))
    ).trials


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("algorithm", ["tpe", "random", "qmc", "gp", "cmaes", "nsga2", "nsga3", "auto"])
def test_each_sampler_runs_a_sweep_on_the_quickstart_space(ray_cluster, tmp_path, algorithm):
    raw = sweep_raw(tmp_path, algorithm)
    if algorithm == "nsga2":  # a Pareto sweep of accuracy against size, under a latency constraint
        raw["objective"] = [{"metric": "val_miou", "mode": "max"}, {"metric": "gflops", "mode": "min"}]
        raw["constraints"] = [{"metric": "latency_ms", "max": 15}]
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec, worker=stub_worker)
    assert sorted(r.state for r in out.rows) == ["completed"] * 4
    trials = told(spec)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    if algorithm == "nsga2":
        assert all(len(t.values) == 2 for t in trials)
        assert all(t.system_attrs["constraints"] == [t.user_attrs["latency_ms"] - 15] for t in trials)
        front = {r.trial_id: r for r in out.rows if r.trial_id in out.pareto}
        assert front and all(r.result["latency_ms"] <= 15 for r in front.values()), out.pareto


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_initial_points_are_the_first_trials(ray_cluster, tmp_path):
    points = [
        {
            "student": "dlv3p_r18",
            "distill.method": "xgd",
            "distill.alpha": 1.0,
            "distill.tau": 1.0,
            "distill.beta": 1.0,
        },
        {"distill.method": "pi", "distill.alpha": 0.5},  # the rest drawn by the sampler
    ]
    spec = parse_sweep_spec(sweep_raw(tmp_path, "tpe", initial_points=points))
    run_sweep(spec, worker=stub_worker)
    trials = sorted(told(spec), key=lambda t: t.number)
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t, point in zip(trials[:2], points):
        assert {k: t.params[k] for k in point} == point, (t.params, point)
    with pytest.raises(SpecError):
        parse_sweep_spec(sweep_raw(tmp_path, "tpe", initial_points=[{"distill.alpha": -1.0}]))


def test_a_grid_takes_no_sampler_options_or_initial_points(tmp_path):
    raw = sweep_raw(tmp_path, "grid")
    raw["space"] = {"distill.alpha": {"type": "choice", "values": [0.5, 1.0]}}
    raw["search"].pop("num_samples")
    parse_sweep_spec(raw)
    for key, value in (("sampler_options", {"gamma": 1}), ("initial_points", [{"distill.alpha": 0.5}])):
        with pytest.raises(SpecError, match=f"search.{key}: a grid runs its own points"):
            parse_sweep_spec({**raw, "search": {**raw["search"], key: value}})
