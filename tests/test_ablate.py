"""Ablations: factorial and listed-cell specs become grid sweeps with exactly the right configs x
seeds and the report's tags; bad specs are one-line errors (exit 2); the paper's and quickstart
specs load; and one tiny ablation runs on the shared Ray (stub trainer), after which `report`
prints mean +- std over seeds in the layout the ablation chose."""

import copy
import itertools
import json
from pathlib import Path

import pytest
import ray.cloudpickle
import yaml

import sweep_stubs
from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.run.ablate import load_ablation, parse_ablation
from orchestrator.spec import space as S
from orchestrator.spec.sweep import sampler
from orchestrator.spec.train import TrainSpec
from orchestrator.tracking import tags as T
from sweep_stubs import stub_worker

ray.cloudpickle.register_pickle_by_value(sweep_stubs)  # Ray workers cannot import tests/
ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "search_spaces" / "ablations"
DATA = {"kind": "synthetic", "num_train": 8, "num_val": 4, "image_size": 64, "crop": 64}
STUDENTS = {
    "r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
    "mbv2": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2"},
}


def base_raw(tmp_path, **over) -> dict:
    raw = {
        "name": "abl",
        "results": str(tmp_path / "results"),
        "train": {
            "data": dict(DATA),
            "distill": {"alpha": 0.7, "beta": 0.3},
            "optim": {"epochs": 2},
            "run": {"max_steps_per_epoch": 1, "out_dir": str(tmp_path / "runs")},
        },
        "students": copy.deepcopy(STUDENTS),
    }
    raw.update(over)
    return raw


def configs(ab) -> list[dict]:
    """The trainer config of every trial, as the sweep's trials build them."""
    students = {k: m.model_dump() for k, m in ab.sweep.students.items()}
    return [S.resolve(ab.sweep.base_config(), p, students) for p in ab.sweep.grid()]


def walk_sampler(spec) -> list[dict]:
    """Ask the Optuna sampler the sweep uses for every trial, as Tune's searcher would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found, define = sampler(spec)
    study = optuna.create_study(sampler=found)
    points: list[dict] = []
    study.optimize(lambda trial: points.append(define(trial)) or 0.0, n_trials=spec.num_samples + 5)
    return points  # GridSampler stops the study when the grid is done


# ------------------------------------------------------------------ translation


def test_factorial_ablation_is_every_combination_times_every_seed(tmp_path):
    ab = parse_ablation(
        base_raw(tmp_path, seeds=3, factors={"distill.method": ["none", "pi", "xgd"], "student": ["r18", "mbv2"]})
    )
    spec = ab.sweep
    assert spec.search.algorithm == "grid" and spec.early_stopping.kind == "none" and spec.num_samples == 18
    got = sorted((c["distill"]["method"], c["model"]["encoder"], c["seed"]) for c in configs(ab))
    want = sorted(itertools.product(["none", "pi", "xgd"], ["resnet18", "mobilenet_v2"], [0, 1, 2]))
    assert got == want
    for cfg in configs(ab):
        TrainSpec.model_validate(cfg)  # every trial config is a valid trainer config
        assert cfg["distill"]["alpha"] == 0.7 and cfg["distill"]["beta"] == 0.3  # the rest from train:
    assert spec.tags == {T.LAYOUTS: "summary,per_class", T.ABLATION: "factorial", T.SEEDS: "3"}
    assert len(ab.cell_points()) == 6


def test_listed_cells_cross_factors_and_seeds_and_the_sampler_runs_each_once(tmp_path):
    cells = [
        {"distill.method": "none"},
        {"distill.method": "xgd", "distill.beta": 0.0},
        {"distill.method": "xgd", "distill.alpha": 0.0},
    ]
    ab = parse_ablation(base_raw(tmp_path, seeds=2, cells=cells, factors={"distill.cam": ["gradcam", "layercam"]}))
    spec = ab.sweep
    assert spec.num_samples == 12 and ab.kind == "cells"
    got = sorted(
        (c["distill"]["method"], c["distill"]["alpha"], c["distill"]["beta"], c["distill"]["cam"], c["seed"])
        for c in configs(ab)
    )
    rows = [("none", 0.7, 0.3), ("xgd", 0.7, 0.0), ("xgd", 0.0, 0.3)]
    assert got == sorted((*r, cam, s) for r in rows for cam in ("gradcam", "layercam") for s in (0, 1))
    # distill.cam is a factor: the timing table (time per iteration) is among the layouts
    assert spec.tags[T.LAYOUTS] == "summary,per_class,timing" and spec.tags[T.ABLATION] == "cells"
    walked = walk_sampler(spec)
    assert len(set(map(repr, walked))) == 12 and sorted(map(repr, walked)) == sorted(map(repr, spec.grid()))
    assert T.LABELS not in spec.tags


def test_cell_labels_reach_the_trials_and_the_report_order_but_not_the_trainer(tmp_path):
    cells = [
        {"label": "seg only", "distill.method": "none"},
        {"label": "seg + pi", "distill.method": "xgd", "distill.alpha": 0.0},
    ]
    ab = parse_ablation(base_raw(tmp_path, seeds=1, cells=cells))
    assert json.loads(ab.sweep.tags[T.LABELS]) == ["seg only", "seg + pi"]
    assert sorted(p["label"] for p in ab.sweep.grid()) == ["seg + pi", "seg only"]
    assert all("label" not in c for c in configs(ab))  # resolved trainer configs have no such key


def test_overrides_replace_a_factor_and_the_seed_count(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(base_raw(tmp_path, seeds=3, factors={"distill.cam": ["gradcam", "hirescam"]})))
    ab = load_ablation(path, ["factors.distill.cam=[layercam]", "seeds=2", "optim.epochs=5", "layouts=[timing]"])
    assert [c["distill"]["cam"] for c in configs(ab)] == ["layercam", "layercam"]
    assert [c["seed"] for c in configs(ab)] == [0, 1] and ab.sweep.train.optim.epochs == 5
    assert ab.sweep.tags[T.LAYOUTS] == "timing"


def test_dry_run_lists_the_cells_and_starts_nothing(tmp_path, capsys, no_ray):
    rc = main(["ablate", str(ABLATIONS / "quickstart_table2.yaml"), "--dry-run", "--set", f"results={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and "4 cells x 1 seed(s)" in out and "= 4 trials" in out and "nothing was started" in out
    assert "early stopping none" in " ".join(out.split())


# ------------------------------------------------------------------ the shipped specs


def test_paper_and_quickstart_specs_load_with_their_designs():
    want = {"table1_method_student": 63, "table2_loss_terms": 12, "table3_cam": 15, "fig3_hparams": 39}
    paper = {name: load_ablation(ABLATIONS / f"{name}.yaml") for name in want}
    assert {k: ab.sweep.num_samples for k, ab in paper.items()} == want
    t1 = paper["table1_method_student"]
    assert t1.factors["distill.method"] == ["none", "pi", "skd", "cwd", "at", "cat", "xgd"]
    assert t1.factors["student"] == ["dlv3p_r18", "dlv3p_mbv2", "pspnet_r18"]
    assert paper["table3_cam"].sweep.tags[T.LAYOUTS].startswith("timing")
    fig3 = configs(paper["fig3_hparams"])
    grid = {0.05, 0.1, 0.5, 1.0, 2.0}
    for cfg in fig3:  # one weight at a time, the others at 1.0
        off = [k for k in ("alpha", "beta", "tau") if cfg["distill"][k] != 1.0]
        assert len(off) <= 1 and {cfg["distill"][k] for k in ("alpha", "beta", "tau")} <= grid
    for k in ("alpha", "beta", "tau"):
        assert {c["distill"][k] for c in fig3} == grid
    from orchestrator.run import teachers
    from orchestrator.spec.sweep import load_sweep_spec

    ttpla = teachers.recipe_hash(load_sweep_spec(ROOT / "search_spaces" / "ttpla.yaml").teacher.recipe)
    assert {teachers.recipe_hash(ab.sweep.teacher.recipe) for ab in paper.values()} == {ttpla}  # trained once

    quick = [load_ablation(p) for p in sorted(ABLATIONS.glob("quickstart_*.yaml")) if p.stem != "quickstart_beta"]
    assert len(quick) == 5 and len({teachers.recipe_hash(ab.sweep.teacher.recipe) for ab in quick}) == 1
    for ab in quick:
        t = ab.sweep.train
        assert ab.seeds == 1 and t.optim.epochs <= 2 and t.data.kind == "synthetic" and t.data.image_size <= 64
        assert t.run.device == "cpu" and t.run.max_steps_per_epoch <= 4 and ab.sweep.num_samples <= 9
    from trainables.losses import METHODS

    methods = next(ab for ab in quick if ab.sweep.name == "quickstart-methods").factors["distill.method"]
    assert {"none", "pi", "skd", "cwd", "at", "cat", "attnfd", "xgd"} <= set(methods) <= set(METHODS)

    beta = load_ablation(ABLATIONS / "quickstart_beta.yaml")  # longer: students must learn (docs table)
    assert beta.seeds >= 3 and sorted({c["distill"]["beta"] for c in configs(beta)}) == [0.0, 1.0]
    assert beta.sweep.train.optim.epochs >= 12 and beta.sweep.teacher.recipe["optim"]["epochs"] >= 12


# ------------------------------------------------------------------ errors


BAD = [
    ({}, "factors: an ablation needs factors:"),
    ({"factors": {"distill.cam": ["gradcam"]}, "space": {}}, "space: an ablation has no search space"),
    ({"factor": {"distill.cam": ["gradcam"]}}, "unknown key 'factor'; did you mean 'factors'?"),
    ({"factors": {"distill.cam": ["gradcam"]}, "seeds": 0}, "seeds: "),
    ({"factors": {"distill.cam": ["gradcam", "nope"]}}, "factors.distill.cam: value 'nope' is not allowed"),
    ({"factors": {"distill.cam": []}}, "factors.distill.cam: give at least one value"),
    ({"factors": {"distill.cam": ["gradcam", "gradcam"]}}, "factors.distill.cam: a value is listed twice"),
    ({"factors": {"seed": [1, 2]}}, "factors.seed: seeds are set with seeds: N"),
    ({"factors": {"student": ["r18", "r50"]}}, "factors.student: 'r50' is not in students"),
    ({"cells": [{"distill.alpah": 1.0}]}, "cells[0]: unknown key 'distill.alpah'; did you mean 'alpha'?"),
    ({"cells": [{"distill.alpha": -1.0}]}, "cells[0]: distill.alpha: "),
    ({"cells": [{"distill.alpha": 1.0}, {"distill.alpha": 1.0}]}, "cells[1]: the same cell is listed twice"),
    ({"cells": [{}]}, "cells[0]: an empty cell"),
    ({"cells": []}, "cells: give at least one cell"),
    ({"cells": [{"student": "r50"}]}, "cells[0].student: 'r50' is not in students"),
    (
        {"cells": [{"label": "a", "distill.alpha": 1.0}, {"distill.alpha": 0.5}]},
        "cells[1].label: give every cell a label (text) or none",
    ),
    (
        {"cells": [{"label": "a", "distill.alpha": 1.0}, {"label": "a", "distill.alpha": 0.5}]},
        "cells[1].label: 'a' is also the label of cells[0]",
    ),
    (
        {"cells": [{"distill.cam": "layercam"}], "factors": {"distill.cam": ["gradcam"]}},
        "cells[0].distill.cam: also a factor",
    ),
    ({"factors": {"distill.cam": ["gradcam"]}, "layouts": ["fancy"]}, "layouts: 'fancy' is not a report layout"),
    ({"factors": {"distill.cam": ["gradcam"]}, "search": {"algorithm": "tpe"}}, "search: an ablation always runs"),
    ({"factors": {"distill.cam": ["gradcam"]}, "train": {"seed": 3}}, "train.seed: an ablation runs seeds 0..N-1"),
    ({"factors": {"distill.cam": ["gradcam"]}, "train": {"optim": {"epohcs": 2}}}, "unknown key 'train.optim.epohcs'"),
]


@pytest.mark.parametrize("over,message", BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_ablation_specs_are_one_line_errors(tmp_path, capsys, over, message):
    raw = base_raw(tmp_path)
    train = over.pop("train", None)
    raw.update(copy.deepcopy(over))
    if train is not None:
        raw["train"] = {**raw["train"], **train}
    with pytest.raises(SpecError) as err:
        parse_ablation(raw)
    assert message in str(err.value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["ablate", str(path), "--dry-run"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


# ------------------------------------------------------------------ on Ray, then report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_ablation_runs_each_cell_and_seed_once_and_report_shows_mean_std(ray_cluster, tmp_path, capsys):
    from mlflow import MlflowClient

    from orchestrator.run.sweep import run_sweep

    def seeded_worker(config: dict) -> dict:
        """The stub's val_miou = alpha / 2 at the end; the seed shifts it so seeds differ."""
        config = copy.deepcopy(config)
        config["distill"]["alpha"] += 0.1 * config["seed"]
        return stub_worker(config)

    raw = base_raw(
        tmp_path,
        seeds=2,
        factors={"distill.alpha": [0.5, 1.5]},
        layouts=["summary"],
        resources={"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    )
    ab = parse_ablation(raw)
    out = run_sweep(ab.sweep, worker=seeded_worker)
    assert out.status == "completed" and sorted(r.state for r in out.rows) == ["completed"] * 4, [
        (r.state, r.error) for r in out.rows
    ]

    client = MlflowClient(ab.sweep.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("xgd").experiment_id], T.equals(T.SWEEP, "abl"))
    (parent,) = [r for r in runs if r.data.tags[T.KIND] == "sweep"]
    children = [r for r in runs if r.data.tags[T.KIND] == "trial"]
    assert parent.data.tags[T.LAYOUTS] == "summary" and parent.data.tags[T.ABLATION] == "factorial"
    pairs = sorted((float(c.data.params["distill.alpha"]), int(c.data.params["seed"])) for c in children)
    assert pairs == [(0.5, 0), (0.5, 1), (1.5, 0), (1.5, 1)]  # every cell x seed exactly once
    assert all(c.data.tags[T.PARENT] == parent.info.run_id for c in children)

    reports = tmp_path / "reports"
    rc = main(
        [
            "report",
            "abl",
            "--tracking-uri",
            ab.sweep.mlflow.tracking_uri,
            "--out",
            str(reports),
            "--gallery",
            "0",
            "--no-log",
        ]
    )
    shown = capsys.readouterr().out
    assert rc == 0 and "27.50 ± 3.54" in shown and "77.50 ± 3.54" in shown  # mIoU (%) mean ± std over 2 seeds
    md = (reports / "abl" / "summary.md").read_text()
    assert "| 0.5 | <u>27.50 ± 3.54</u> |" in md and "| 1.5 | **77.50 ± 3.54** |" in md  # best bold, 2nd underlined
    assert not (reports / "abl" / "per_class.md").exists()  # only the layouts the ablation asked for
