"""Sweep specs: every bad spec is one SpecError line naming the key; good specs resolve paths;
--set reaches dotted space entries and trainer sections; the shipped specs all validate."""

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec.sweep import apply_sweep_overrides, load_sweep_spec, parse_sweep_spec

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "t",
    "train": {"data": {"kind": "synthetic", "image_size": 64, "crop": 64}, "optim": {"epochs": 3}},
    "students": {
        "r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "psp": {"arch": "pspnet", "encoder": "resnet18"},
    },
    "space": {
        "student": {"type": "choice", "values": ["r18", "psp"]},
        "distill.alpha": {"type": "loguniform", "low": 0.05, "high": 2.0},
        "distill.cam": {"type": "choice", "values": ["gradcam", "layercam"], "when": {"student": "r18"}},
    },
}


def bad(path: str, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    parts = path.split("/")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is DELETE:
        node.pop(parts[-1])
    else:
        node[parts[-1]] = value
    return raw


DELETE = object()

BAD = [
    (bad("space", {}), "space"),
    (
        bad("space/distill.alpha", {"type": "loguniform", "low": -1, "high": 2}),
        "space.distill.alpha: loguniform needs low > 0",
    ),
    (bad("space/distill.alpha", {"type": "uniform", "low": -1, "high": 2}), "space.distill.alpha: value -1"),
    (bad("space/distill.tau", {"type": "uniform", "low": 0, "high": 1}), "space.distill.tau: value 0"),
    (
        bad("space/distill.alpha", {"type": "uniform", "low": 3, "high": 2}),
        "space.distill.alpha: low (3) must be <= high",
    ),
    (bad("space/distill.alpha", {"type": "normal", "low": 0, "high": 2}), "space.distill.alpha.type"),
    (bad("space/distill.alpha", {"type": "uniform", "lo": 0, "high": 2}), "did you mean 'low'"),
    (bad("space/distill.alpah", {"type": "uniform", "low": 0, "high": 2}), "did you mean 'alpha'"),
    (
        bad("space/optim.epochs", {"type": "randint", "low": 1.5, "high": 4}),
        "space.optim.epochs: type randint needs integer low",
    ),
    (bad("space/optim.lr", {"type": "quniform", "low": 0.1, "high": 0.25, "q": 0.1}), "must be a multiple of q"),
    (
        bad("space/distill.cam", {"type": "choice", "values": ["gradcam", "scorecam"]}),
        "space.distill.cam: value 'scorecam'",
    ),
    (bad("space/distill.cam", {"type": "choice", "values": []}), "space.distill.cam: type choice needs a non-empty"),
    (bad("space/distill.cam", {"type": "grid", "values": ["gradcam"]}), "type grid needs search.algorithm: grid"),
    (
        bad("space/distill.cam", {"type": "choice", "values": ["gradcam"], "when": {"distill.beta": 1}}),
        "'distill.beta' is not an entry",
    ),
    (
        bad("space/distill.cam", {"type": "choice", "values": ["gradcam"], "when": {"student": "r50"}}),
        "student can never be 'r50'",
    ),
    (bad("space/student", {"type": "choice", "values": ["r18", "r50"]}), "space.student: 'r50' is not in students"),
    (bad("space/student", {"type": "uniform", "low": 0, "high": 1}), "space.student: must be a choice"),
    (bad("space/name", {"type": "choice", "values": ["a"]}), "space.name: this key cannot be searched"),
    (bad("students/r18", {"arch": "deeplabv3plus", "encoder": "resnet181"}), "did you mean 'resnet18'"),
    (bad("train/optim", {"lr": -1}), "train.optim.lr"),
    (bad("train/optm", {}), "did you mean 'optim'"),
    (bad("train/teacher", {"checkpoint": "x.pt"}), "train.teacher: set the teacher at the top level"),
    (bad("teacher", {"checkpoint": "a.pt", "recipe": {}}), "teacher: give exactly one"),
    (bad("teacher", {"recipe": {"model": {"encoder": "resnet1011"}}}), "teacher.recipe.model: unknown encoder"),
    (bad("objective", {"metric": "val_mio", "mode": "max"}), "did you mean 'val_miou'"),
    (bad("objective", {"metric": "val_miou", "mode": "up"}), "objective"),
    (bad("objective", [{"metric": "val_miou"}, {"metric": "val_miou", "mode": "min"}]), "metric listed twice"),
    (bad("search", {"algorithm": "hyperopt"}), "search.algorithm"),
    (bad("search", {"algorithm": "grid"}), "a grid needs discrete values"),
    (bad("search", {"num_samples": 0}), "search.num_samples"),
    (bad("early_stopping", {"kind": "asha", "grace_period": 5}), "early_stopping.grace_period (5) exceeds"),
    (bad("early_stopping", {"kind": "hyperband"}), "early_stopping.kind"),
    (bad("resources", {"gpus_per_worker": -1}), "resources.gpus_per_worker"),
    (bad("resources", {"num_workers": 0}), "resources.num_workers"),
    (bad("resouces", {}), "did you mean 'resources'"),
    (bad("name", "../x"), "name"),
]


@pytest.mark.parametrize("raw,needle", BAD, ids=[n for _, n in BAD])
def test_bad_sweep_spec_is_one_line_naming_the_key(tmp_path, raw, needle, capsys):
    with pytest.raises(SpecError) as e:
        parse_sweep_spec(raw)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_good_spec_resolves_paths_and_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {**copy.deepcopy(GOOD), "teacher": {"checkpoint": "t/best.pt"}}
    raw["train"]["data"] = {"kind": "folder", "root": "data/sub", "classes": ["bg", "x"], "background": "bg"}
    spec = parse_sweep_spec(raw)
    assert spec.results == str(tmp_path / "results")
    assert spec.storage_path == str(tmp_path / "results" / "sweeps")
    assert spec.experiment_dir == str(tmp_path / "results" / "sweeps" / "t")
    assert spec.mlflow.tracking_uri == f"sqlite:///{tmp_path}/results/mlflow.db"
    assert spec.train.data.root == str(tmp_path / "data" / "sub")
    assert spec.teacher.checkpoint == str(tmp_path / "t" / "best.pt")
    assert spec.num_samples == 10 and spec.max_epochs == 3
    assert [o.metric for o in spec.objectives] == ["val_miou"]


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_sweep_spec({**GOOD, "mlflow": {"tracking_uri": "sqlite:///db/m.db"}})
    assert spec.mlflow.tracking_uri == f"sqlite:///{tmp_path}/db/m.db"


def test_overrides_reach_space_entries_and_train_sections():
    raw = apply_sweep_overrides(
        copy.deepcopy(GOOD),
        [
            "space.distill.alpha.high=1.5",
            "data.crop=32",
            "search.num_samples=3",
            "space.distill.beta={type: uniform, low: 0.1, high: 0.2}",
        ],
    )
    assert raw["space"]["distill.alpha"]["high"] == 1.5
    assert raw["space"]["distill.beta"] == {"type": "uniform", "low": 0.1, "high": 0.2}
    assert raw["train"]["data"]["crop"] == 32 and raw["search"]["num_samples"] == 3
    with pytest.raises(SpecError, match="not an entry of the space"):
        apply_sweep_overrides(copy.deepcopy(GOOD), ["space.distill.gamma.high=2"])


def test_grid_sizes_num_samples_and_multi_objective():
    raw = copy.deepcopy(GOOD)
    raw["space"]["distill.alpha"] = {"type": "choice", "values": [0.1, 1.0]}
    raw["search"] = {"algorithm": "grid"}
    raw["objective"] = [{"metric": "val_miou", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}]
    spec = parse_sweep_spec(raw)
    # r18 x 2 alphas x 2 cams + psp x 2 alphas (cam only exists for r18)
    assert spec.num_samples == 6
    assert [o.mode for o in spec.objectives] == ["max", "min"]
    raw["search"]["num_samples"] = 4
    with pytest.raises(SpecError, match="grid runs each of its 6 points once"):
        parse_sweep_spec(raw)


@pytest.mark.parametrize("name", ["quickstart", "ttpla", "voc", "substation"])
def test_shipped_specs_validate(name):
    spec = load_sweep_spec(ROOT / "search_spaces" / f"{name}.yaml")
    assert spec.name == name and spec.space
    if name != "quickstart":
        assert spec.resources.gpus_per_worker >= 1 and spec.train.data.crop == 512
        assert set(spec.space["distill.cam"].values) == {"gradcam", "gradcam++", "hirescam", "eigengradcam", "layercam"}
        assert set(spec.space["student"].values) == {"dlv3p_r18", "dlv3p_mbv2", "pspnet_r18"}
        assert spec.teacher.recipe["model"]["encoder"] == "resnet101"
        for k in ("distill.alpha", "distill.beta", "distill.tau"):
            assert (spec.space[k].low, spec.space[k].high) == (0.05, 2.0)


def test_the_shipped_pareto_spec_is_ttpla_under_nsga2_with_a_latency_constraint():
    pareto = load_sweep_spec(ROOT / "search_spaces" / "ttpla_pareto.yaml")
    ttpla = load_sweep_spec(ROOT / "search_spaces" / "ttpla.yaml")
    assert pareto.space == ttpla.space and pareto.train == ttpla.train and pareto.teacher == ttpla.teacher
    assert pareto.search.algorithm == "nsga2" and [o.metric for o in pareto.objectives] == ["val_miou", "gflops"]
    assert [(c.metric, c.max) for c in pareto.constraints] == [("latency_ms", 15.0)]
    assert pareto.search.time_budget_s == 48 * 3600 and pareto.search.max_failed_trials == 5
    assert len(pareto.search.initial_points) == 3
