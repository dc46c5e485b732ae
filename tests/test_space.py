"""Search-space translation: each distribution into Optuna, conditionals, grids, and the merge of a
sampled point into a trainer config that validates as a TrainSpec."""

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from orchestrator.spec import space as S
from orchestrator.spec.train import TrainSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


def P(**kw) -> S.Param:
    return S.Param.model_validate(kw)


def sample(space: dict, n: int, sampler=None) -> list[tuple[dict, dict]]:
    """(params, distributions) of n define-by-run trials."""
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    define = S.DefineByRun(space)
    out = []
    for _ in range(n):
        t = study.ask()
        define(t)
        out.append((dict(t.params), dict(t.distributions)))
        study.tell(t, 0.0)
    return out


@pytest.mark.parametrize(
    "param,dist,check",
    [
        (P(type="uniform", low=0.5, high=2.0), FloatDistribution(0.5, 2.0), lambda v: 0.5 <= v <= 2.0),
        (P(type="loguniform", low=0.05, high=2.0), FloatDistribution(0.05, 2.0, log=True), lambda v: 0.05 <= v <= 2.0),
        (
            P(type="quniform", low=0.1, high=1.0, q=0.3),
            FloatDistribution(0.1, 1.0, step=0.3),
            lambda v: any(math.isclose(v, x) for x in (0.1, 0.4, 0.7, 1.0)),
        ),
        (P(type="randint", low=1, high=3), IntDistribution(1, 3), lambda v: v in (1, 2, 3)),
        (P(type="qrandint", low=64, high=128, q=32), IntDistribution(64, 128, step=32), lambda v: v in (64, 96, 128)),
        (
            P(type="choice", values=["gradcam", "layercam"]),
            CategoricalDistribution(["gradcam", "layercam"]),
            lambda v: v in ("gradcam", "layercam"),
        ),
    ],
)
def test_each_distribution_becomes_its_optuna_distribution(param, dist, check):
    draws = sample({"x": param}, 40)
    assert all(d["x"] == dist for _, d in draws)
    values = [p["x"] for p, _ in draws]
    assert all(check(v) for v in values)
    if param.discrete_values() is not None:  # every value is reachable (inclusive ranges)
        assert {round(v, 9) if isinstance(v, float) else v for v in values} == {
            round(v, 9) if isinstance(v, float) else v for v in param.discrete_values()
        }


def test_log_scale_puts_half_the_mass_below_the_geometric_mean():
    draws = [p["x"] for p, _ in sample({"x": P(type="loguniform", low=0.01, high=1.0)}, 200)]
    below = sum(v < 0.1 for v in draws) / len(draws)
    assert 0.35 < below < 0.65  # uniform on [0.01, 1] would put ~9% below 0.1


def test_conditionals_exist_only_when_their_condition_holds():
    space = {
        "distill.cam": P(type="choice", values=["gradcam", "layercam"], when={"distill.method": "xgd"}),
        "distill.method": P(type="choice", values=["xgd", "pi"]),
        "distill.beta": P(type="uniform", low=0.1, high=1.0, when={"distill.method": ["xgd"]}),
    }
    assert S.ordered(space)[0] == "distill.method"  # dependencies are drawn first
    draws = [p for p, _ in sample(space, 60)]
    assert {p["distill.method"] for p in draws} == {"xgd", "pi"}
    for p in draws:
        assert ("distill.cam" in p) == ("distill.beta" in p) == (p["distill.method"] == "xgd")


def test_when_cycles_and_unknown_entries_are_errors():
    with pytest.raises(ValueError, match="cycle"):
        S.ordered({"a": P(type="choice", values=[1], when={"b": 1}), "b": P(type="choice", values=[1], when={"a": 1})})
    with pytest.raises(ValueError, match="not an entry"):
        S.ordered({"a": P(type="choice", values=[1], when={"c": 1})})


def test_grid_branches_only_where_conditionals_exist():
    space = {
        "student": P(type="grid", values=["r18", "psp"]),
        "distill.cam": P(type="grid", values=["gradcam", "layercam", "hirescam"], when={"student": "r18"}),
        "optim.epochs": P(type="randint", low=1, high=2),
    }
    points = S.grid_points(space)
    assert len(points) == (3 + 1) * 2
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert all(("distill.cam" in p) == (p["student"] == "r18") for p in points)
    with pytest.raises(ValueError, match="continuous"):
        S.grid_points({"a": P(type="uniform", low=0, high=1)})


def test_grid_sampler_visits_every_point_once_then_stops():
    space = {
        "distill.alpha": P(type="choice", values=[0.1, 1.0]),
        "distill.cam": P(type="grid", values=["gradcam", "layercam"]),
    }
    sampler, define, n = S.space_sampler("grid", 0, space)
    assert n == 4
    study = optuna.create_study(sampler=sampler)
    seen = []
    study.optimize(lambda t: seen.append(define(t)) or 0.0, n_trials=n + 3)  # the sampler stops the study
    assert len(seen) == n
    assert sorted(map(str, seen)) == sorted(map(str, S.grid_points(space)))


def test_seeded_tpe_and_random_are_reproducible():
    space = {"a": P(type="uniform", low=0, high=1), "b": P(type="choice", values=["x", "y", "z"])}
    for algo in ("tpe", "random"):
        runs = [[p for p, _ in sample(space, 6, S.space_sampler(algo, 7, space)[0])] for _ in range(2)]
        assert runs[0] == runs[1]


def test_optuna_search_proposes_conditional_configs_for_tune():
    """The Tune searcher with our define-by-run function: configs carry only active entries."""
    from ray.tune.search.optuna import OptunaSearch

    space = {
        "student": P(type="choice", values=["r18", "psp"]),
        "distill.cam": P(type="choice", values=["gradcam", "layercam"], when={"student": "r18"}),
    }
    sampler, define, _ = S.space_sampler("random", 0, space)
    searcher = OptunaSearch(space=define, sampler=sampler, metric="val_miou", mode="max")
    configs = [searcher.suggest(f"t{i}") for i in range(20)]
    assert {c["student"] for c in configs} == {"r18", "psp"}
    assert all(("distill.cam" in c) == (c["student"] == "r18") for c in configs)


def test_resolve_swaps_students_sets_dotted_keys_and_validates():
    base = TrainSpec().model_dump()
    students = {"psp": {"arch": "pspnet", "encoder": "resnet18", "encoder_weights": None}}
    cfg = S.resolve(base, {"student": "psp", "distill.alpha": 0.3, "optim.epochs": 2, S.GRID_KEY: 5}, students)
    assert cfg["model"]["arch"] == "pspnet" and cfg["distill"]["alpha"] == 0.3 and cfg["optim"]["epochs"] == 2
    assert S.GRID_KEY not in cfg and base["distill"]["alpha"] == 1.0  # base untouched
    TrainSpec.model_validate(cfg)
    flat = S.flatten(cfg)
    assert flat["distill.alpha"] == 0.3 and flat["model.arch"] == "pspnet"


def test_probe_points_cover_both_bounds_with_conditions_met():
    space = {
        "m": P(type="choice", values=["xgd", "pi"]),
        "distill.beta": P(type="uniform", low=0.1, high=2.0, when={"m": "xgd"}),
    }
    probes = {(name, value): point for name, value, point in S.probe_points(space)}
    assert probes[("distill.beta", 0.1)] == {"m": "xgd", "distill.beta": 0.1}
    assert ("distill.beta", 2.0) in probes and ("m", "pi") in probes
