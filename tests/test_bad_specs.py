"""Bad sweep specs through the real command line (`python -m orchestrator sweep`, in-process):
each one is refused before Ray starts with ONE line on stderr, exit code 2, no traceback, and a
message that names the key and what is allowed. The good spec they are all made from does reach
Ray (the `no_ray` sentinel), so every row fails for its own reason, not a shared one."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from fixtures_data import write_folder
from orchestrator.cli import main


def good(tmp: Path) -> dict:
    return {
        "name": "bad-specs",
        "results": str(tmp / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 4, "num_val": 2, "image_size": 64, "crop": 64},
            "optim": {"epochs": 2},
            "run": {"out_dir": str(tmp / "runs"), "device": "cpu"},
        },
        "students": {"r18": {"arch": "deeplabv3plus", "encoder": "resnet18"}},
        "space": {
            "distill.alpha": {"type": "uniform", "low": 0.1, "high": 2.0},
            "distill.cam": {"type": "choice", "values": ["gradcam", "layercam"]},
        },
        "search": {"algorithm": "tpe", "num_samples": 2},
        "early_stopping": {"kind": "asha", "grace_period": 1},
    }


DROP = object()


def edit(**changes):
    """A change to the good spec: 'a/b/c' paths to values (DROP removes the key)."""

    def apply(raw: dict, tmp: Path) -> dict:
        raw = copy.deepcopy(raw)
        for path, value in changes.items():
            node, parts = raw, path.split("/")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            if value is DROP:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = _made(value, tmp)
        return raw

    return apply


def _made(value, tmp: Path):
    """Callables in a change make files under tmp and stand for their path."""
    if callable(value):
        return value(tmp)
    if isinstance(value, dict):
        return {k: _made(v, tmp) for k, v in value.items()}
    return value


def teacher_file(classes: list[str]):
    def make(tmp: Path) -> str:
        path = tmp / "teacher.pt"
        torch.save(
            {"model": {}, "classes": classes, "model_cfg": {"arch": "deeplabv3plus", "encoder": "resnet18"}}, path
        )
        return str(path)

    return make


def not_a_checkpoint(tmp: Path) -> str:
    path = tmp / "garbage.pt"
    path.write_bytes(b"this is not a torch file")
    return str(path)


def street(tmp: Path) -> str:
    """A folder dataset whose classes have no background (sky, road, car), train and val."""
    root = tmp / "street"
    for split in ("train", "val"):
        write_folder(root, split)
    return str(root)


STREET = ["sky", "road", "car"]
FOLDER = {"kind": "folder", "root": street, "classes": STREET, "crop": 16}

# (id, change to the good spec | raw YAML text, --set overrides, text the one line must hold)
CASES = [
    ("unknown-top-key", edit(serach={"num_samples": 2}), [], "unknown key 'serach'; did you mean 'search'?"),
    ("unknown-train-key", edit(**{"train/optim/lrr": 0.1}), [], "did you mean 'lr'?"),
    (
        "unknown-space-field",
        edit(**{"space/distill.alpha": {"type": "uniform", "lo": 0.1, "high": 2}}),
        [],
        "did you mean 'low'?",
    ),
    ("wrong-type-epochs", edit(**{"train/optim/epochs": "ten"}), [], "train.optim.epochs"),
    ("wrong-type-concurrency", edit(**{"resources/max_concurrent": [2]}), [], "resources.max_concurrent"),
    ("wrong-type-space", edit(**{"space/distill.alpha": 0.5}), [], "space.distill.alpha: must be a mapping"),
    ("empty-space", edit(space={}), [], "space: a sweep needs a non-empty 'space'"),
    ("no-space", edit(space=DROP), [], "space: a sweep needs a non-empty 'space'"),
    (
        "low-above-high",
        edit(**{"space/distill.alpha": {"type": "uniform", "low": 3, "high": 2}}),
        [],
        "space.distill.alpha: low (3) must be <= high",
    ),
    ("empty-choice", edit(**{"space/distill.cam": {"type": "choice", "values": []}}), [], "space.distill.cam"),
    ("negative-alpha-fixed", edit(**{"train/distill/alpha": -0.5}), [], "train.distill.alpha"),
    (
        "negative-alpha-in-space",
        edit(**{"space/distill.alpha": {"type": "uniform", "low": -1, "high": 2}}),
        [],
        "space.distill.alpha: value -1",
    ),
    ("zero-tau", edit(**{"train/distill/tau": 0}), [], "train.distill.tau"),
    ("unknown-cam-fixed", edit(**{"train/distill/cam": "scorecam"}), [], "train.distill.cam"),
    (
        "unknown-cam-in-space",
        edit(**{"space/distill.cam": {"type": "choice", "values": ["gradcam", "scorecam"]}}),
        [],
        "space.distill.cam: value 'scorecam'",
    ),
    ("unknown-encoder", edit(**{"train/model/encoder": "resnet181"}), [], "did you mean 'resnet18'"),
    ("unknown-student-encoder", edit(**{"students/r18/encoder": "mobilenet_v9"}), [], "students.r18"),
    ("unknown-method", edit(**{"train/distill/method": "xgdd"}), [], "distill.method 'xgdd'"),
    (
        "teacher-class-mismatch",
        edit(teacher={"checkpoint": teacher_file(["background", "cable"])}),
        [],
        "has 2 classes",
    ),
    ("missing-teacher", edit(teacher={"checkpoint": lambda t: str(t / "nope" / "best.pt")}), [], "teacher.checkpoint:"),
    ("teacher-not-a-checkpoint", edit(teacher={"checkpoint": not_a_checkpoint}), [], "not a weights-only checkpoint"),
    ("teacher-both-sources", edit(teacher={"checkpoint": "a.pt", "recipe": {}}), [], "teacher: give exactly one"),
    ("teacher-in-train", edit(**{"train/teacher": {"checkpoint": "a.pt"}}), [], "set the teacher at the top level"),
    ("objective-mode", edit(objective={"metric": "val_miou", "mode": "maximize"}), [], "objective.mode"),
    ("objective-metric", edit(objective={"metric": "val_mIoU"}), [], "did you mean 'val_miou'?"),
    (
        "objective-test-metric",
        edit(objective={"metric": "test_miou"}),
        [],
        "objective metric 'test_miou' is measured on the held-out test split",
    ),
    (
        "objective-test-in-list",
        edit(objective=[{"metric": "val_miou"}, {"metric": "test_iou_cable", "mode": "max"}]),
        [],
        "objective[1]: objective metric 'test_iou_cable'",
    ),
    (
        "test-split-is-val",
        edit(**{"train/data/test_split": "val"}),
        [],
        "data.test_split 'val' is also the train or val",
    ),
    ("search-algorithm", edit(search={"algorithm": "hyperopt"}), [], "search.algorithm"),
    (
        "grace-beyond-epochs",
        edit(early_stopping={"kind": "asha", "grace_period": 9}),
        [],
        "early_stopping.grace_period (9) exceeds",
    ),
    (
        "reduction-factor",
        edit(early_stopping={"kind": "asha", "reduction_factor": 1}),
        [],
        "early_stopping.reduction_factor",
    ),
    ("data-kind", edit(**{"train/data/kind": "coco"}), [], "train.data.kind"),
    ("data-root-required", edit(**{"train/data/kind": "ttpla"}), [], "data.root is required"),
    (
        "foreground-without-background",
        edit(**{"train/data": FOLDER}, teacher={"checkpoint": teacher_file(STREET)}),
        [],
        "train: distill.cam_classes 'foreground' leaves out the background class, and data.kind='folder' declares "
        "none: "
        "set data.background",
    ),
    (
        "background-not-a-class",
        edit(**{"train/data": {**FOLDER, "background": "tree"}}),
        [],
        "data.background 'tree' is not one of the classes (sky, road, car)",
    ),
    (
        "background-of-a-builtin-kind",
        edit(**{"train/data/background": "sky"}),
        [],
        "data.background is for data.kind='folder' only",
    ),
    ("sweep-name-dotdot", edit(name="../escape"), [], "name"),
    ("sweep-name-absolute", edit(name="/etc/x"), [], "name"),
    ("yaml-syntax", "name: x\nspace: {distill.alpha: [1, 2\n", [], "is not valid YAML"),
    ("yaml-not-mapping", "- a\n- b\n", [], "must hold a mapping"),
    ("yaml-binary", b"\xff\xfe\x00name", [], "cannot be read"),
    ("yaml-missing-file", None, [], "does not exist"),
    ("set-without-value", edit(), ["search.num_samples"], "expected key=value"),
    ("set-unknown-space-entry", edit(), ["space.distill.gama.high=2"], "not an entry of the space"),
    ("set-wrong-type", edit(), ["resources.num_workers=zero"], "resources.num_workers"),
]


def write_spec(tmp: Path, case) -> str:
    path = tmp / "spec.yaml"
    if case is None:
        return str(tmp / "missing.yaml")
    if isinstance(case, bytes):
        path.write_bytes(case)
    elif isinstance(case, str):
        path.write_text(case)
    else:
        path.write_text(yaml.safe_dump(case(good(tmp), tmp), sort_keys=False))
    return str(path)


def test_the_good_spec_passes_every_check_and_reaches_ray(tmp_path, no_ray):
    path = write_spec(
        tmp_path,
        edit(
            teacher={
                "checkpoint": teacher_file(["background", "cable", "tower_lattice", "tower_tucohy", "tower_wooden"])
            }
        ),
    )
    with pytest.raises(no_ray):  # ReachedRay (tests/conftest.py)
        main(["sweep", path])


@pytest.mark.parametrize(
    "change",
    [
        {"train/data": {**FOLDER, "background": "road"}},
        {"train/data": FOLDER, "train/distill/cam_classes": "all"},
        {"train/data": FOLDER, "train/distill/method": "none", "train/run/explain": False},  # no CAM target
    ],
    ids=["declared", "all-classes", "no-target"],
)
def test_a_folder_without_background_reaches_ray_where_foreground_is_not_needed(tmp_path, no_ray, change):
    path = write_spec(tmp_path, edit(**change, teacher={"checkpoint": teacher_file(STREET)}))
    with pytest.raises(no_ray):
        main(["sweep", path])


def test_enough_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case,sets,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_sweep_spec_is_one_line_and_exit_2(tmp_path, no_ray, capsys, case, sets, needle):
    argv = ["sweep", write_spec(tmp_path, case)] + [x for s in sets for x in ("--set", s)]
    rc = main(argv)
    out, err = capsys.readouterr()
    err = err.strip()
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    assert not (tmp_path / "results" / "sweeps").exists()  # nothing was started
