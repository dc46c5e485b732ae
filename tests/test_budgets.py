"""Budgets, constraints and warm starts (orchestrator.spec.search, orchestrator.run.budgets,
orchestrator.run.study.warm_start): each budget stops a sweep for its reason (MLflow's
xgd.stop_reason, the summary) and `--resume` continues it; constraints reach the sampler and the
best trial is a feasible one; a sweep warm-started from another holds that one's trials first and
counts what it skipped. The sweeps run the stub trainer on the shared Ray."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
import ray
from rich.console import Console

import sweep_stubs
from orchestrator.cli import main
from orchestrator.errors import SpecError, UserError
from orchestrator.run import study
from orchestrator.run.budgets import Budgets
from orchestrator.run.storage import save_spec, saved_spec
from orchestrator.run.sweep import run_sweep
from orchestrator.spec.samplers import CONSTRAINTS_ATTR, Feasibility
from orchestrator.spec.search import SearchSpec, seconds
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T
from test_samplers import QUICKSTART, refused, sweep_raw, told
from test_sweep import mlflow_runs

ray.cloudpickle.register_pickle_by_value(sweep_stubs)  # Ray workers cannot import tests/
stub_worker = sweep_stubs.stub_worker


# ------------------------------------------------------------------ the rules, without Ray


@pytest.mark.parametrize(
    "text, s", [("12h", 43200), ("1h30m", 5400), ("45m", 2700), ("90s", 90), ("2d", 172800), (30, 30), ("0.5h", 1800)]
)
def test_durations(text, s):
    assert seconds(text) == s


def test_the_clock_counts_this_drivers_time():
    b = Budgets(SearchSpec(time_budget="10s"), t0=100.0)
    assert b.clock(now=109.9) is None
    assert b.clock(now=110.0).startswith("time budget 10s spent")


def test_stop_when_ignores_an_epoch_the_driver_already_had():
    b = Budgets(SearchSpec(stop_when={"metric": "val_miou", ">=": 0.5}))
    b.started("t1", {"epochs_done": 3, "val_miou": 0.7})  # restored: its epoch 3 was seen before
    assert b.result("t1", {"distill.alpha": 1.0}, {"epochs_done": 3, "val_miou": 0.7}) is None  # the replay
    assert b.result("t1", {}, {"epochs_done": 4, "val_miou": 0.4}) is None
    said = b.result("t1", {"distill.alpha": 1.0}, {"epochs_done": 5, "val_miou": 0.6})
    assert said.startswith("val_miou >= 0.5 reached: trial t1 val_miou 0.6"), said
    below = Budgets(SearchSpec(stop_when={"metric": "train_loss", "<=": 0.1}))
    assert below.result("t2", {}, {"epochs_done": 1, "train_loss": 0.2}) is None
    assert below.result("t2", {}, {"epochs_done": 2, "train_loss": 0.1}) is not None


def test_failures_are_counted_to_the_bound():
    b = Budgets(SearchSpec(max_failed_trials=2))
    assert b.failure() is None
    assert b.failure() == "2 trial(s) failed (search.max_failed_trials 2)"


def test_feasibility_is_optunas_convention(tmp_path):
    f = Feasibility.of(parse_sweep_spec(constrained_raw(tmp_path, "nsga2")).constraints)
    assert f.values({"latency_ms": 12.0, "params": 200.0}) == [-3.0, 100.0]
    assert f.values({"params": 50.0}) == [float("inf"), -50.0]  # never reported: infeasible
    assert optuna.samplers._base._CONSTRAINTS_KEY == CONSTRAINTS_ATTR


@pytest.mark.parametrize(
    "sets, says",
    [
        (["search.time_budget=soon"], "search.time_budget: 'soon' is not a duration"),
        (["search.time_budget=0s"], "must be longer than 0 s"),
        (["search.stop_when={metric: val_miou}"], "give one bound"),
        (["search.stop_when={metric: val_mio, '>=': 0.5}"], "did you mean 'val_miou'"),
        (["search.stop_when={metric: test_miou, '>=': 0.5}"], "held-out test split"),
        (["search.max_failed_trials=0"], "search.max_failed_trials"),
        (["constraints=[{metric: latency_ms}]"], "give one bound"),
        (["constraints=[{metric: latncy_ms, max: 3}]"], "did you mean 'latency_ms'"),
        (
            ["search.algorithm=random", "search.n_startup_trials=null", "constraints=[{metric: latency_ms, max: 15}]"],
            "constraints: search.algorithm random (RandomSampler) takes no constraints",
        ),
        (["search.warm_start_from=quickstart"], "search.warm_start_from: 'quickstart' is this sweep"),
        (["search.warm_start_from=../x"], "search.warm_start_from"),
    ],
)
def test_bad_budgets_and_constraints_are_one_line_errors(sets, says, tmp_path, capsys, no_ray):
    err = refused(sets, tmp_path, capsys)
    assert says in err, err


def test_dry_run_shows_constraints_budgets_and_the_warm_start(tmp_path, capsys, no_ray):
    args = ["sweep", str(QUICKSTART), "--dry-run", "--set", f"results={tmp_path}"]
    for s in (
        "search.algorithm=nsga2",
        "search.n_startup_trials=null",
        "constraints=[{metric: latency_ms, max: 15}]",
        "search.time_budget=12h",
        "search.stop_when={metric: val_miou, '>=': 0.6}",
        "search.max_failed_trials=3",
        "search.warm_start_from=pilot",
    ):
        args += ["--set", s]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "constraints_func=Feasibility(latency_ms <= 15)" in out, out
    assert "constraints latency_ms <= 15" in out
    assert "time budget 12h00m (this driver's wall time); stop when val_miou >= 0.6; stop after 3 failed" in out
    assert "starts from the finished trials of sweep 'pilot'" in out


def test_a_resume_may_change_its_budgets_not_its_constraints(tmp_path):
    raw = constrained_raw(tmp_path, "tpe")
    spec = parse_sweep_spec(raw)
    save_spec(spec)
    quiet = Console(file=io.StringIO())
    changed = {**raw, "search": {**raw["search"], "time_budget": "2h", "max_failed_trials": 5}}
    resumed = saved_spec(parse_sweep_spec(changed), quiet)
    assert (resumed.search.time_budget, resumed.search.max_failed_trials) == ("2h", 5)
    with pytest.raises(UserError, match="--resume: constraints"):
        saved_spec(parse_sweep_spec({**raw, "constraints": [{"metric": "latency_ms", "max": 30}]}), quiet)


def test_a_grid_takes_no_constraints_or_warm_start(tmp_path):
    raw = sweep_raw(tmp_path, "grid")
    raw["space"] = {"distill.alpha": {"type": "choice", "values": [0.5, 1.0]}}
    raw["search"].pop("num_samples")
    with pytest.raises(SpecError, match="constraints: a grid runs every point"):
        parse_sweep_spec({**raw, "constraints": [{"metric": "latency_ms", "max": 15}]})
    with pytest.raises(SpecError, match="search.warm_start_from: a grid runs its own points"):
        parse_sweep_spec({**raw, "search": {**raw["search"], "warm_start_from": "other"}})


# ------------------------------------------------------------------ on Ray


def grid_raw(tmp_path: Path, name: str, values: list, key: str = "distill.alpha", **search) -> dict:
    """One trial at a time over listed values of `key`, 3 stub epochs each: a stop lands between trials."""
    raw = sweep_raw(tmp_path, "grid")
    raw["name"] = name
    raw["train"]["optim"]["epochs"] = 3
    raw["space"] = {key: {"type": "grid", "values": values}}
    raw["search"] = {"algorithm": "grid", **search}
    raw["resources"]["max_concurrent"] = 1
    return raw


def parent_tags(spec) -> dict:
    _, parents, _ = mlflow_runs(spec)
    assert len(parents) == 1
    return parents[0].data.tags


def stop_then_resume(tmp_path, raw: dict, why: str, n: int) -> None:
    """The sweep stops for `why` with fewer than its n trials ended; resumed without the budget, all n complete."""
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec, worker=stub_worker, console=Console(file=io.StringIO(), width=200))
    assert out.status == "interrupted" and out.stop_reason and why in out.stop_reason, (out.status, out.stop_reason)
    assert why in parent_tags(spec)[T.STOP_REASON]
    assert sum(r.state in ("completed", "failed") for r in out.rows) < n
    search = {k: v for k, v in raw["search"].items() if k not in ("time_budget", "stop_when", "max_failed_trials")}
    again = run_sweep(parse_sweep_spec({**raw, "search": search}), resume=True, worker=stub_worker)
    assert again.stop_reason is None and again.status in ("completed", "failed")
    assert len([r for r in again.rows if r.state in ("completed", "failed")]) == n, [r.state for r in again.rows]
    assert T.STOP_REASON not in parent_tags(spec)  # the finished run says nothing was cut short


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stop_when_stops_the_sweep_and_resume_continues_it(ray_cluster, tmp_path):
    # the stub's val_miou is alpha/2 at the last epoch: two of the four reach 0.9, so (in whatever
    # order the grid runs them) the first of those stops the sweep with a trial still to run
    raw = grid_raw(tmp_path, "reached", [0.4, 1.9, 0.2, 1.95], stop_when={"metric": "val_miou", ">=": 0.9})
    stop_then_resume(tmp_path, raw, "val_miou >= 0.9 reached", 4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_max_failed_trials_stops_the_sweep_and_resume_continues_it(ray_cluster, tmp_path):
    # data_seed 666: the stub raises; two of the four do, so the first failure leaves a trial to run
    raw = grid_raw(tmp_path, "failing", [666, 1, 667, 2], key="data.data_seed", max_failed_trials=1)
    stop_then_resume(tmp_path, raw, "1 trial(s) failed (search.max_failed_trials 1)", 4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_time_budget_stops_the_sweep_and_resume_continues_it(ray_cluster, tmp_path):
    raw = grid_raw(tmp_path, "timed", [0.2, 0.4, 0.6, 0.8, 1.0], time_budget="2s")
    stop_then_resume(tmp_path, raw, "time budget 2s spent", 5)


def constrained_raw(tmp_path: Path, algorithm: str) -> dict:
    raw = sweep_raw(tmp_path, algorithm)
    raw["constraints"] = [{"metric": "latency_ms", "max": 15}, {"metric": "params", "max": 100}]
    if algorithm == "tpe":
        raw["constraints"] = raw["constraints"][:1]
    return raw


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_constraints_reach_the_sampler_and_the_best_trial_is_feasible(ray_cluster, tmp_path):
    """The stub's latency is 10 x tau; its val_miou grows with alpha. Two initial points make one
    trial the most accurate but too slow; the best trial is the feasible one."""
    raw = constrained_raw(tmp_path, "tpe")
    raw["search"]["num_samples"] = 3
    raw["search"]["initial_points"] = [
        {"student": "dlv3p_r18", "distill.method": "pi", "distill.alpha": 1.9, "distill.tau": 2.0},
        {"student": "dlv3p_r18", "distill.method": "pi", "distill.alpha": 1.0, "distill.tau": 1.0},
    ]
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec, worker=stub_worker)
    trials = sorted(told(spec), key=lambda t: t.number)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for t in trials:  # Optuna's own record: <= 0 feasible
        assert t.system_attrs[CONSTRAINTS_ATTR] == [t.user_attrs["latency_ms"] - 15.0], t.system_attrs
    assert trials[0].system_attrs[CONSTRAINTS_ATTR][0] > 0 and trials[1].system_attrs[CONSTRAINTS_ATTR][0] <= 0
    assert out.best.result["latency_ms"] <= 15 and out.best.point["distill.tau"] <= 1.5, out.best
    _, _, children = mlflow_runs(spec)
    feasible = {c.data.tags[T.TRIAL_ID]: c.data.tags[T.FEASIBLE] for c in children}
    assert sorted(feasible.values()).count("false") >= 1 and feasible[out.best.trial_id] == "true", feasible
    assert parent_tags(spec)[T.CONSTRAINTS] == "latency_ms <= 15"

    # the report marks them: infeasible.csv lists the slow trial, the fronts hold feasible trials only
    from mlflow import MlflowClient

    from orchestrator.results.report import make_report

    rep = make_report(MlflowClient(spec.mlflow.tracking_uri), spec.name, tmp_path / "report", log=False, galleries=0)
    bad = {k for k, v in feasible.items() if v == "false"}
    listed = (rep.dir / "infeasible.csv").read_text()
    assert all(t in listed for t in bad) and out.best.trial_id not in listed, listed
    front = (rep.dir / "pareto.csv").read_text()
    assert out.best.trial_id in front and not any(t in front for t in bad), front
    assert "## Constraints: latency_ms <= 15" in (rep.dir / "report.md").read_text()

    # export chooses among the feasible trials: the most accurate trial misses the latency bound
    import pyarrow as pa

    from orchestrator.results.export import choose
    from orchestrator.tracking import reader

    client = MlflowClient(spec.mlflow.tracking_uri)
    table = reader.trials_table(client, reader.find_sweep(client, spec.name))
    top = max(table.to_pylist(), key=lambda r: r["best_val_miou"])
    assert top["feasible"] is False or top["feasible"] == 0, top  # the alpha 1.9, tau 2 point
    picked = [c.row["trial_id"] for c in choose(table, "val_miou", top=3)]
    assert top["trial_id"] not in picked and picked[0] == out.best.trial_id, picked
    nobody = table.set_column(table.column_names.index("feasible"), "feasible", pa.array([False] * len(table)))
    with pytest.raises(UserError, match="meets the sweep's constraints"):
        choose(nobody, "val_miou")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_warm_start_adds_the_earlier_sweeps_trials_first_and_counts_what_it_skipped(ray_cluster, tmp_path):
    first = sweep_raw(tmp_path, "tpe")
    first["name"] = "pilot"
    pilot = parse_sweep_spec(first)
    run_sweep(pilot, worker=stub_worker)
    earlier = [t for t in told(pilot) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(earlier) == 4

    second = sweep_raw(tmp_path, "tpe", warm_start_from="pilot", num_samples=2)
    second["name"] = "full"
    # a narrower alpha range: the pilot's trials outside it are skipped and counted
    low, high = sorted(t.params["distill.alpha"] for t in earlier)[1], 2.0
    second["space"]["distill.alpha"] = {"type": "uniform", "low": low, "high": high}
    spec = parse_sweep_spec(second)
    said = io.StringIO()
    run_sweep(spec, worker=stub_worker, console=Console(file=said, width=300))
    inside = [t for t in earlier if t.params["distill.alpha"] >= low]
    skipped = len(earlier) - len(inside)
    assert skipped >= 1
    assert f"warm start: {len(inside)} finished trial(s) of sweep 'pilot' added" in said.getvalue(), said.getvalue()
    assert f"{skipped} skipped ({skipped} distill.alpha outside this space)" in said.getvalue()
    trials = sorted(told(spec), key=lambda t: t.number)
    assert len(trials) == len(inside) + 2
    for t, old in zip(trials, sorted(inside, key=lambda t: t.number)):  # the first trials: the pilot's
        assert t.user_attrs[study.WARM_SOURCE] == "pilot" and t.user_attrs[study.WARM_TRIAL] == old.number
        assert t.params == old.params and t.values == old.values
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(study.WARM_SOURCE not in t.user_attrs for t in trials[len(inside) :])

    objective = {**second, "name": "other", "objective": {"metric": "latency_ms", "mode": "min"}}
    with pytest.raises(UserError, match="search.warm_start_from: sweep 'pilot' optimised val_miou max"):
        run_sweep(parse_sweep_spec(objective), worker=stub_worker)
    missing = {**second, "name": "other2", "search": {**second["search"], "warm_start_from": "nope"}}
    with pytest.raises(UserError, match="search.warm_start_from: no study of sweep 'nope'"):
        run_sweep(parse_sweep_spec(missing), worker=stub_worker)
