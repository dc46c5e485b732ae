"""`compare`: each method's own search at equal budget, then their best on the same fresh seeds.
Without Ray: the per-method specs, the time budget, pairs, the CLI's refusals and dry run.
On Ray (slow): the whole protocol, tiny, with the real trainer, linked in MLflow, then report
and --resume. The statistics: tests/test_confirm_stats.py."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.run import compare as R
from orchestrator.spec import compare as C
from orchestrator.spec.sweep import load_sweep_spec, parse_sweep_spec
from orchestrator.tracking import tags as T

QUICK = "search_spaces/quickstart.yaml"


def quick_raw() -> dict:
    return yaml.safe_load(open(QUICK))


def test_each_method_searches_only_the_keys_it_reads():
    space = quick_raw()["space"]
    pi = C.method_space(space, "pi")
    assert set(pi) == {"student", "distill.alpha", "distill.tau"}  # no beta, no CAM, no method
    xgd = C.method_space(space, "xgd")
    assert set(xgd) == {"student", "distill.alpha", "distill.tau", "distill.beta", "distill.cam"}
    assert "when" not in xgd["distill.beta"] and "when" not in xgd["distill.cam"]  # resolved: it holds
    assert set(C.method_space(space, "none")) == {"student"}
    assert space["distill.beta"]["when"] == {"distill.method": "xgd"}  # the input is not changed


def test_a_stage_fixes_its_method_and_keeps_the_shared_budget():
    raw = quick_raw()
    spec = parse_sweep_spec(C.method_raw(raw, "pi", "q-pi", None, {T.COMPARE: "q"}))
    base = parse_sweep_spec(raw)
    assert spec.train.distill.method == "pi" and spec.name == "q-pi" and spec.tags[T.COMPARE] == "q"
    assert spec.num_samples == base.num_samples and spec.search.seed == base.search.seed
    assert spec.early_stopping == base.early_stopping and spec.max_epochs == base.max_epochs
    # nothing to search: one trial, not num_samples copies of it
    raw["space"] = {"distill.method": {"type": "choice", "values": ["none", "pi"]}}
    none = parse_sweep_spec(C.method_raw(raw, "none", "q-none", None, {}))
    assert none.num_samples == 1 and none.train.distill.method == "none"


def test_time_budget_gives_the_costlier_method_fewer_epochs():
    assert C.time_epochs(12, {"pi": 1.0, "xgd": 1.2}) == {"pi": 12, "xgd": 10}  # 12 / 1.2
    assert C.time_epochs(12, {"none": 0.5, "pi": 1.0, "xgd": 3.0}) == {"none": 12, "pi": 6, "xgd": 2}
    assert C.time_epochs(3, {"a": 1.0, "b": 100.0}) == {"a": 3, "b": 1}  # at least one epoch
    raw = quick_raw()
    spec = parse_sweep_spec(C.method_raw(raw, "xgd", "q-xgd", 2, {}))
    assert spec.train.optim.epochs == 2 and spec.early_stopping.grace_period == 2  # grace fits the epochs


def test_pairs_compare_each_method_with_those_listed_before_it():
    assert R.pairs_of(["none", "pi", "xgd"]) == [("pi", "none"), ("xgd", "none"), ("xgd", "pi")]


def test_measured_costs_order_the_methods_by_their_work():
    """One real step per method on the quickstart's student (CPU seconds): PI adds the teacher's
    forward to the plain student's step, XGD adds CAMs on top."""
    spec = load_sweep_spec(QUICK, ["train.data.num_train=4", "train.data.batch_size=2"])
    from orchestrator.bench.costs import measure_costs

    costs = measure_costs(spec, ["none", "pi"], 2)
    assert set(costs) == {"none", "pi"} and all(c > 0 for c in costs.values())
    assert costs["pi"] > costs["none"], costs


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--methods", "xgd"], "compare.methods: give two or more methods"),
        (["--methods", "pi", "kd"], "unknown method(s) ['kd']"),
        (["--methods", "pi", "pi"], "listed twice"),
    ],
)
def test_bad_compare_arguments_are_one_line_errors(argv, says, tmp_path, no_ray, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["compare", QUICK, *argv, "--dry-run", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err, err


def test_time_budget_refuses_a_searched_epoch_count(tmp_path, no_ray, capsys):
    raw = quick_raw()
    raw["space"]["optim.epochs"] = {"type": "choice", "values": [2, 4]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    argv = ["compare", str(tmp_path / "s.yaml"), "--methods", "pi", "xgd", "--budget", "time", "--dry-run"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "take optim.epochs out of the space" in err, err


def test_dry_run_shows_each_methods_search_and_the_confirmation(tmp_path, no_ray, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["compare", QUICK, "--methods", "pi", "xgd", "--seeds", "4", "--dry-run", "--tracking-uri", uri]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "quickstart-compare-pi" in out and "quickstart-compare-xgd" in out
    assert "same 4 fresh seeds" in out and "xgd - pi" in out and "nothing was started" in out


def test_the_specs_compare_block_sets_the_defaults():
    raw = quick_raw()
    raw["compare"] = {"methods": ["none", "xgd"], "budget": "time", "seeds": 4}
    parse_sweep_spec(copy.deepcopy(raw))  # a sweep accepts (and ignores) the block
    cmp = R.plan_compare(raw, None, None, None)
    assert (cmp.methods, cmp.budget, cmp.seeds) == (["none", "xgd"], "time", 4)
    cmp = R.plan_compare(raw, ["pi", "xgd"], "iterations", 2)  # flags win
    assert (cmp.methods, cmp.budget, cmp.seeds) == (["pi", "xgd"], "iterations", 2)
    with pytest.raises(SpecError):
        R.plan_compare({**raw, "compare": {"budget": "flops"}}, None, None, None)


def test_each_methods_tuned_point_comes_from_its_confirmed_cell():
    from orchestrator.results.compare import tuned_points

    cells = [
        {"label": "pi", "value": 0.41, "point": {"distill.alpha": 0.37861, "distill.tau": 1.5, "distill.method": "pi"}},
        {"label": "xgd", "value": 0.46, "point": {"distill.beta": 0.462, "distill.cam": "layercam"}},
        {"label": "none", "point": {"distill.method": "none"}},
    ]
    got = tuned_points(json.dumps(cells))
    assert got == {
        "pi": ("alpha=0.379 tau=1.5", 0.41),
        "xgd": ("beta=0.462 cam=layercam", 0.46),
        "none": ("(defaults)", None),
    }
    assert tuned_points(None) == {} and tuned_points("not json") == {}


# ------------------------------------------------------------------ on Ray


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compare_runs_every_stage_links_them_and_resumes(ray_cluster, tmp_path, capsys):
    from mlflow import MlflowClient

    raw = {
        "name": "tiny",
        "results": str(tmp_path / "results"),
        "train": {
            "data": {
                "kind": "synthetic",
                "num_train": 4,
                "num_val": 2,
                "num_test": 2,
                "image_size": 64,
                "crop": 64,
                "batch_size": 4,
            },
            "model": {"encoder": "mobilenet_v2"},
            "optim": {"epochs": 2},
            "run": {"device": "cpu", "max_steps_per_epoch": 1, "explain": False},
        },
        "teacher": {
            "recipe": {
                "model": {"encoder": "resnet18"},
                "optim": {"epochs": 1},
                "run": {"device": "cpu", "max_steps_per_epoch": 1},
            }
        },
        "space": {
            "distill.method": {"type": "choice", "values": ["pi", "xgd"]},
            "distill.alpha": {"type": "uniform", "low": 0.5, "high": 1.5},
            "distill.beta": {"type": "uniform", "low": 0.5, "high": 1.5, "when": {"distill.method": "xgd"}},
        },
        "search": {"num_samples": 2, "seed": 3},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
        "compare": {"methods": ["pi", "xgd"], "seeds": 2},
    }
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve()}"
    assert main(["compare", str(spec_path), "--tracking-uri", uri]) == 0, capsys.readouterr()
    assert "report tiny-compare-confirm" in capsys.readouterr().out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("xgd").experiment_id
    (cmp_run,) = client.search_runs([exp], T.matching({T.KIND: T.COMPARE_RUN, T.COMPARE: "tiny-compare"}))
    parents = {r.data.tags[T.SWEEP]: r for r in client.search_runs([exp], T.equals(T.KIND, T.SWEEP_RUN))}
    assert set(parents) == {"tiny-compare-pi", "tiny-compare-xgd", "tiny-compare-confirm"}
    assert all(p.data.tags[T.PARENT] == cmp_run.info.run_id for p in parents.values())  # one parent links all
    assert len({p.data.tags[T.TEACHER_HASH] for p in parents.values()}) == 1  # one teacher, trained once
    for m in ("pi", "xgd"):  # the same budget: 2 trials of 2 epochs each
        trials = client.search_runs([exp], T.equals(T.PARENT, parents[f"tiny-compare-{m}"].info.run_id))
        assert len(trials) == 2 and {t.data.params["distill.method"] for t in trials} == {m}
        assert all(t.info.status == "FINISHED" and t.data.tags[T.EPOCHS_DONE] == "2" for t in trials)
    confirm = parents["tiny-compare-confirm"]
    cells = client.search_runs([exp], T.equals(T.PARENT, confirm.info.run_id))
    seeds = {int(s) for s in confirm.data.tags[T.CONFIRM_SEEDS].split(",")}
    assert sorted((c.data.params["label"], int(c.data.params["seed"])) for c in cells) == sorted(
        (m, s) for m in ("pi", "xgd") for s in seeds
    )

    capsys.readouterr()
    out_dir = tmp_path / "reports"
    rc = main(
        ["report", "tiny-compare-confirm", "--tracking-uri", uri, "--out", str(out_dir), "--gallery", "0", "--no-log"]
    )
    assert rc == 0
    shown = capsys.readouterr().out
    assert "budget spent" in shown and "tiny-compare-pi" in shown
    budget = (out_dir / "tiny-compare-confirm" / "budget.csv").read_text()
    assert "pi" in budget and "xgd" in budget
    md = (out_dir / "tiny-compare-confirm" / "budget.md").read_text()
    assert "tuned point (confirmed)" in md and "alpha=" in md and "beta=" in md

    # a re-run is refused; --resume finds every stage done and runs nothing again
    assert main(["compare", str(spec_path), "--tracking-uri", uri]) == 2
    assert "continue it with --resume" in capsys.readouterr().err
    assert main(["compare", str(spec_path), "--tracking-uri", uri, "--resume"]) == 0
    after = client.search_runs([exp], T.equals(T.KIND, T.TRIAL_RUN))
    assert len(after) == 2 + 2 + 4
