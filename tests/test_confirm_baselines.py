"""`confirm`'s baselines isolate the method's terms: each configuration gets baselines on its own
student and settings (a PI baseline keeps the tuned alpha and tau, optim.lr if searched), the
same baseline point runs once, an XGD configuration gets its own point with beta = 0 (and the
trainer then computes no saliency term), and each cell names what it is compared with
(`against`, in the parent run's CONFIRM_CELLS tag). Plans only: nothing here starts Ray."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch
import yaml
from torch import nn

from orchestrator.errors import UserError
from orchestrator.run import confirm_design as D
from orchestrator.run.confirm import plan_confirmation, render
from orchestrator.spec import space as S
from orchestrator.spec.load import canonical
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T

STUDENTS = {
    "r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
    "mbv2": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2"},
}
SPACE = {
    "student": {"type": "choice", "values": ["r18", "mbv2"]},
    "distill.method": {"type": "choice", "values": ["pi", "xgd"]},
    "distill.cam": {"type": "choice", "values": ["gradcam", "layercam"], "when": {"distill.method": "xgd"}},
    "distill.alpha": {"type": "uniform", "low": 0.1, "high": 2.0},
    "distill.tau": {"type": "uniform", "low": 0.5, "high": 4.0},
    "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
}
TUNED = {"distill.alpha": 0.3, "distill.tau": 1.7, "optim.lr": 0.02}


def xgd(student: str, cam: str) -> dict:
    return {"student": student, "distill.method": "xgd", "distill.cam": cam, **TUNED}


# (point, val_miou), all FINISHED, best first
TRIALS = [
    (xgd("mbv2", "layercam"), 0.80),
    (xgd("r18", "gradcam"), 0.75),
    (xgd("mbv2", "gradcam"), 0.70),
    ({"student": "r18", "distill.method": "pi", "distill.alpha": 0.9, "distill.tau": 1.2, "optim.lr": 0.003}, 0.65),
]


def source_raw(root) -> dict:
    return {
        "name": "tuned",
        "results": str(root / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 64},
            "optim": {"epochs": 1},
            "distill": {"beta": 0.4},
            "run": {"device": "cpu", "max_steps_per_epoch": 1, "explain": False, "out_dir": str(root / "runs")},
        },
        "teacher": {"recipe": {"model": {"encoder": "resnet18"}, "optim": {"epochs": 1}, "run": {"device": "cpu"}}},
        "students": STUDENTS,
        "space": SPACE,
        "search": {"num_samples": 4},
    }


@pytest.fixture(scope="module")
def store(module_tmp):
    """A store holding sweep `tuned` as sweeps write it: its sweep.yaml and one run per trial."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    root = module_tmp
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=(root / "artifacts").as_uri())
    spec = parse_sweep_spec(source_raw(root))
    parent = client.create_run(exp, tags={T.KIND: T.SWEEP_RUN, T.SWEEP: spec.name}).info.run_id
    client.log_text(parent, yaml.safe_dump(json.loads(canonical(spec.model_dump())), sort_keys=False), "sweep.yaml")
    students = {k: m.model_dump() for k, m in spec.students.items()}
    for i, (point, miou) in enumerate(TRIALS):
        cfg = S.resolve(spec.base_config(), point, students)
        params = {**S.flatten({k: v for k, v in cfg.items() if k != "name"}), "student": point["student"]}
        tags = {T.PARENT: parent, T.KIND: T.TRIAL_RUN, T.SWEEP: spec.name, T.TRIAL_ID: f"t{i}"}
        run = client.create_run(exp, tags=tags, start_time=int(time.time() * 1000) + i).info.run_id
        params_ = [Param(k, str(v)) for k, v in params.items()]
        client.log_batch(run, metrics=[Metric("val_miou", miou, 0, 0)], params=params_)
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def plan(uri, top, baselines, **kw):
    from mlflow import MlflowClient

    return plan_confirmation(MlflowClient(uri), "tuned", uri=uri, top=top, seeds=2, baselines=baselines, **kw)


def cells_of(p) -> dict[str, dict]:
    return {c["label"]: c for c in json.loads(p.ablation.sweep.tags[T.CONFIRM_CELLS])}


def resolved(p) -> dict[str, dict]:
    """Each cell's trainer config as the ablation will run it."""
    spec = p.ablation.sweep
    students = {k: m.model_dump() for k, m in spec.students.items()}
    return {c[S.LABEL]: S.resolve(spec.base_config(), c, students) for c in spec.cells}


def test_a_pi_baseline_keeps_its_configurations_alpha_tau_lr_and_student(store):
    p = plan(store, 1, ["pi"])
    (base,) = [c for c in p.picks if c.point.get("distill.method") == "pi"]
    assert base.point == {
        "student": "mbv2",
        "distill.alpha": 0.3,
        "distill.tau": 1.7,
        "optim.lr": 0.02,
        "distill.method": "pi",
    }
    cfg = resolved(p)[base.label]
    assert (cfg["distill"]["alpha"], cfg["distill"]["tau"], cfg["optim"]["lr"]) == (0.3, 1.7, 0.02)
    assert cfg["model"]["encoder"] == "mobilenet_v2" and cfg["distill"]["method"] == "pi"


def test_top_2_on_two_students_gets_a_baseline_on_each(store):
    p = plan(store, 2, ["pi"], beta0=False)
    assert [(c.label, c.role) for c in p.picks] == [
        ("top 1", "config"),
        ("top 2", "config"),
        ("pi baseline (top 1)", "baseline"),
        ("pi baseline (top 2)", "baseline"),
    ]
    enc = {k: c["model"]["encoder"] for k, c in resolved(p).items()}
    assert enc == {
        "top 1": "mobilenet_v2",
        "top 2": "resnet18",
        "pi baseline (top 1)": "mobilenet_v2",
        "pi baseline (top 2)": "resnet18",
    }
    assert not any("different students" in n for n in p.notes)


def test_identical_baseline_points_run_once_and_serve_each_configuration(store):
    p = plan(store, 3, ["pi"], beta0=False)  # top 3 differs from top 1 only in distill.cam, which PI does not read
    labels = [c.label for c in p.picks]
    assert labels == ["top 1", "top 2", "top 3", "pi baseline (top 1, top 3)", "pi baseline (top 2)"]
    assert p.ablation.sweep.num_samples == 5 * 2
    cells = cells_of(p)
    assert cells["top 1"]["against"] == cells["top 3"]["against"] == ["pi baseline (top 1, top 3)"]
    assert cells["top 2"]["against"] == ["pi baseline (top 2)"]


def test_xgd_configurations_get_their_point_with_beta_0_and_pi_ones_do_not(store):
    from trainables.losses import active_terms

    p = plan(store, 4, [])
    picks = {c.label: c for c in p.picks}
    assert sorted(k for k in picks if "beta=0" in k) == ["top 1, beta=0", "top 2, beta=0", "top 3, beta=0"]
    for k in ("top 1", "top 2", "top 3"):
        assert picks[f"{k}, beta=0"].point == {**picks[k].point, "distill.beta": 0.0}
    cfgs = resolved(p)
    assert cfgs["top 1"]["distill"]["beta"] == 0.4  # the sweep's train: beta
    names = [n for n, _, _ in active_terms(cfgs["top 1, beta=0"]["distill"], True)]
    assert names == ["seg", "pi"] and "sa" in [n for n, _, _ in active_terms(cfgs["top 1"]["distill"], True)]
    assert {c["label"]: c["against"] for c in cells_of(p).values()} == {
        "top 1": ["top 1, beta=0"],
        "top 2": ["top 2, beta=0"],
        "top 3": ["top 3, beta=0"],
        "top 4": [],  # PI: no saliency term to switch off
        "top 1, beta=0": [],
        "top 2, beta=0": [],
        "top 3, beta=0": [],
    }
    assert not any("beta=0" in c.label for c in plan(store, 4, [], beta0=False).picks)


def test_against_lists_every_pair_and_a_none_baseline_has_no_distill_settings(store):
    p = plan(store, 4, ["pi", "none"])
    against = {k: c["against"] for k, c in cells_of(p).items()}
    assert against["top 1"] == ["top 1, beta=0", "pi baseline (top 1, top 3)", "none baseline (top 1, top 3)"]
    assert against["top 2"] == ["top 2, beta=0", "pi baseline (top 2)", "none baseline (top 2)"]
    assert against["top 3"] == ["top 3, beta=0", "pi baseline (top 1, top 3)", "none baseline (top 1, top 3)"]
    assert against["top 4"] == ["none baseline (top 4)"]  # its pi baseline is top 4 itself
    assert "top 4: its pi baseline is the configuration itself; no pair" in p.notes
    assert all(not v for k, v in against.items() if not k.startswith("top ") or "beta=0" in k)
    none = {c.label: c.point for c in p.picks if c.label.startswith("none")}
    assert none == {
        "none baseline (top 1, top 3)": {"student": "mbv2", "optim.lr": 0.02, "distill.method": "none"},
        "none baseline (top 2)": {"student": "r18", "optim.lr": 0.02, "distill.method": "none"},
        "none baseline (top 4)": {"student": "r18", "optim.lr": 0.003, "distill.method": "none"},
    }


def test_dry_run_shows_the_pairs_and_what_baselines_take(store):
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render(plan(store, 1, ["pi"])))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("│ top 1 "))
    assert "top 1, beta=0; pi baseline (top 1)" in row
    assert "against" in text and "train: settings" in text and "baselines use the sweep's train: settings" not in text


# ------------------------------------------------------------------ the pure parts


def test_what_a_method_reads():
    assert D.reads("pi", "alpha") and D.reads("pi", "tau") and not D.reads("pi", "beta") and not D.reads("pi", "cam")
    assert not any(D.reads("none", k) for k in ("alpha", "tau", "beta", "cam", "weights.skd_pa", "weights.cwd_tau"))
    assert (
        D.reads("xgd", "cam_target") and D.reads("xgd+skd", "weights.skd_pa") and not D.reads("xgd", "weights.skd_pa")
    )
    assert D.reads("skd", "weights.skd_pool") and not D.reads("cwd", "weights.skd_pool")
    assert D.reads("xgd+cwd", "weights.cwd_tau") and not D.reads("at", "weights.attnfd_reduction")
    from trainables.losses import HYPERPARAMS
    from trainables.losses.methods import BASELINES

    for h in HYPERPARAMS:  # every hyperparameter is named after the baseline that reads it
        assert [b for b in BASELINES if D.reads(b, f"weights.{h}")] == [h.split("_")[0]], h
    point = {
        "student": "s",
        "optim.lr": 0.1,
        "distill.method": "xgd+skd",
        "distill.beta": 2.0,
        "distill.weights.skd_pool": 4.0,
    }
    assert D.baseline_point(point, "skd") == {
        "student": "s",
        "optim.lr": 0.1,
        "distill.weights.skd_pool": 4.0,
        "distill.method": "skd",
    }
    assert D.beta0_point(point) == {**point, "distill.beta": 0.0}
    assert D.beta0_point({**point, "distill.beta": 0}) is None and D.beta0_point({"distill.method": "cwd"}) is None
    assert D.beta0_point({}, {"distill.method": "xgd", "distill.beta": 1.0}) == {"distill.beta": 0.0}


def test_a_pair_across_students_is_noted_and_bad_pairs_are_refused(tmp_path):
    raw = json.loads(canonical(parse_sweep_spec(source_raw(tmp_path)).model_dump()))
    picks = [
        D.Pick("a", "config", {"student": "r18", "distill.method": "xgd"}),
        D.Pick("b", "config", {"student": "mbv2"}),
    ]
    built = D.confirmation_ablation(raw, "cmp", picks, [("a", "b")], uri="sqlite:///x.db", seeds=2)
    assert built.notes == ["a vs b: different students (deeplabv3plus/resnet18 vs deeplabv3plus/mobilenet_v2)"]
    cells = json.loads(built.ablation.sweep.tags[T.CONFIRM_CELLS])
    assert [(c["label"], c["against"], c["model"]) for c in cells] == [
        ("a", ["b"], "deeplabv3plus/resnet18"),
        ("b", [], "deeplabv3plus/mobilenet_v2"),
    ]
    assert built.seeds == D.fresh_seeds("cmp", 2) and built.ablation.sweep.num_samples == 4
    same = D.confirmation_ablation(
        raw, "cmp", picks, [("a", "b")], uri="u", seeds=1, overrides=["students.mbv2.encoder=resnet18"]
    )
    assert same.notes == []  # the same model under two names is the same student
    for pairs in ([("a", "c")], [("a", "a")]):
        with pytest.raises(UserError, match="give two different cells"):
            D.confirmation_ablation(raw, "cmp", picks, pairs, uri="u", seeds=1)


def test_a_tag_too_long_for_mlflow_keeps_the_pairs_and_drops_the_points():
    picks = [D.Pick(f"c{i}", "config", {"distill.teacher_layer": "x" * 400}, against=[f"c{i + 1}"]) for i in range(30)]
    models = {p.label: {"arch": "deeplabv3plus", "encoder": "resnet18"} for p in picks}
    text = D.cells_tag(picks, models)
    cells = json.loads(text)
    assert len(text) <= D.MAX_TAG and all("point" not in c for c in cells)
    assert cells[3] == {
        "label": "c3",
        "role": "config",
        "trial": None,
        "against": ["c4"],
        "model": "deeplabv3plus/resnet18",
    }
    short = json.loads(D.cells_tag(picks[:2], models))
    assert short[0]["point"] == {"distill.teacher_layer": "x" * 400}


def test_beta_0_builds_a_trainer_without_the_saliency_term_and_the_teacher_without_a_graph(monkeypatch):
    """beta = 0 computes no CAM: the saliency term is not active, nothing is tapped, and the teacher
    runs without autograd (trainables.step); the term's function is never called."""
    from orchestrator.spec.train import TrainSpec
    from trainables.losses import TERMS, active_terms
    from trainables.step import build_trainer, train_step

    def never(*a):
        raise AssertionError("the saliency term ran")

    monkeypatch.setitem(TERMS, "sa", replace(TERMS["sa"], fn=never))
    cfg = TrainSpec.model_validate({"distill": {"method": "xgd", "beta": 0.0}}).model_dump()
    assert "sa" in [n for n, _, _ in active_terms({**cfg["distill"], "beta": 0.5}, True)]
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    teacher = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).requires_grad_(False)
    grad_on = []
    teacher.register_forward_hook(lambda m, i, o: grad_on.append(torch.is_grad_enabled()))
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    tr = build_trainer(cfg, student, teacher, x, torch.device("cpu"), 2)
    assert [n for n, _, _ in tr.terms] == ["seg", "pi"] and tr.t_leaf == {} and tr.s_paths == {}
    out = train_step(tr, x, y)
    assert grad_on == [False] and out.saliency.seconds() == 0.0 and torch.isfinite(out.loss)


def test_a_baseline_equal_to_its_configuration_in_what_trains_is_no_cell():
    """A PI configuration whose point also holds beta (PI does not read it) trains as its PI baseline."""
    pi = D.Pick("top 1", "config", {"student": "r18", "distill.method": "pi", "distill.beta": 0.7, "distill.alpha": 2})
    cells, pairs, notes = D.design([pi], ["pi", "none"])
    assert [c.label for c in cells] == ["top 1", "none baseline (top 1)"] and pairs == [
        ("top 1", "none baseline (top 1)")
    ]
    assert notes == ["top 1: its pi baseline is the configuration itself; no pair"]
    cells, pairs, _ = D.design(
        [D.Pick("top 1", "config", {"distill.alpha": 2})], ["pi"], defaults={"distill.method": "pi"}
    )
    assert len(cells) == 1 and pairs == []  # the method comes from train: (defaults)
    cells, pairs, _ = D.design(
        [D.Pick("top 1", "config", {"distill.alpha": 2})], ["pi"], defaults={"distill.method": "xgd"}
    )
    assert [c.point for c in cells[1:]] == [
        {"distill.alpha": 2, "distill.beta": 0.0},
        {"distill.alpha": 2, "distill.method": "pi"},
    ]
    with pytest.raises(UserError, match="--baseline 'pii' is not a distillation method"):
        D.design([pi], ["pii"])
