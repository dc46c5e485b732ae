"""Background is declared, not assumed: each dataset kind names its background class (a folder
names it in data.background, or has none), `cam_classes: foreground` leaves out that class
(any index), and a dataset without one cannot run `foreground` where a CAM target is built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from fixtures_data import data_cfg, folder_mask, write_folder
from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec.load import validate
from orchestrator.spec.train import TrainSpec
from trainables.data import KINDS, DataError, background_index, build_dataset, class_names
from trainables.saliency import cam_masks, class_masks, target_classes, with_background

STREET = ["sky", "road", "car"]  # folder_mask holds ids 0, 1, 2 and 255


def trial_config(tmp_path, **data) -> dict:
    """A validated trial config on the folder fixture, with a teacher (the CAM target is built)."""
    write_folder(tmp_path)
    raw = {
        "data": {"kind": "folder", "root": str(tmp_path), "classes": STREET, **data},
        "teacher": {"checkpoint": "teacher.pt"},
    }
    return validate(TrainSpec, raw).model_dump()


def test_each_kind_declares_its_background(tmp_path):
    cfgs = {
        "synthetic": data_cfg("synthetic"),
        "ttpla": data_cfg("ttpla", tmp_path),
        "voc": data_cfg("voc", tmp_path),
        "folder": data_cfg("folder", tmp_path, classes=STREET, background="road"),
        "voc_aug": data_cfg("voc_aug", tmp_path),
    }
    none = {k: data_cfg(k, tmp_path) for k in ("cityscapes", "ade20k", "camvid")}  # street and indoor scenes
    assert set(cfgs) | set(none) == set(KINDS)  # a new kind gets a row here
    for kind, cfg in cfgs.items():
        name = KINDS[kind].background(cfg)
        assert name in class_names(cfg), kind
        assert background_index(cfg) == class_names(cfg).index(name), kind
    assert [background_index(cfgs[k]) for k in ("synthetic", "ttpla", "voc", "voc_aug")] == [0, 0, 0, 0]
    assert all(KINDS[k].background(cfg) is None and background_index(cfg) is None for k, cfg in none.items())
    assert background_index(data_cfg("folder", tmp_path, classes=STREET)) is None  # a folder may have none
    with pytest.raises(DataError, match=r"data.background 'tree' is not one of the classes \(sky, road, car\)"):
        background_index({"kind": "folder", "classes": STREET, "background": "tree"})


def test_a_declared_background_at_index_1_leaves_the_target_and_index_0_stays(tmp_path):
    cfg = trial_config(tmp_path, background="road")
    distill = with_background(cfg)
    assert distill["background"] == 1 and cfg["distill"]["cam_classes"] == "foreground"
    _, y = build_dataset(cfg["data"], "train", train=False)[0]
    assert (y.numpy() == folder_mask()).all()
    assert target_classes("foreground", 3, 1).tolist() == [1.0, 0.0, 1.0]

    masks = cam_masks(y[None], None, 3, distill)[0].numpy()
    lab = folder_mask()
    oracle = np.stack([(lab == k) & (k != 1) for k in range(3)]).astype(np.float32)  # brute force, no torch
    assert (masks == oracle).all()
    assert masks[0].sum() == (lab == 0).sum() > 0  # sky (index 0) is in the target ...
    assert masks[1].sum() == 0 and (lab == 1).sum() > 0  # ... road, the declared background, is not
    # the rule before: foreground meant "drop index 0", which would have removed sky and kept road
    old = np.stack([(lab == k) & (k != 0) for k in range(3)]).astype(np.float32)
    assert old[0].sum() == 0 and old[1].sum() > 0 and (masks != old).any()


def test_the_teacher_target_drops_the_declared_background_too():
    t_logits = torch.zeros(1, 4, 2, 3)
    t_logits[0, 3] = 1.0  # the teacher says class 3 everywhere
    t_logits[0, 2, 0, 0] = 2.0  # ... except class 2 at one pixel
    m = class_masks(torch.full((1, 2, 3), 255), t_logits, 4, "teacher", "foreground", background=3)
    assert m[0, 3].sum() == 0 and m[0, 2, 0, 0] == 1 and m.sum() == 1
    assert class_masks(torch.zeros(1, 2, 3, dtype=torch.long), None, 4, "gt", "all", None).sum() == 6


def test_foreground_without_a_background_is_refused_at_run_time_too():
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="declares none: set data.background") as info:
        cam_masks(labels, None, 3, {"cam_classes": "foreground", "background": None})
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="has no 'background'"):  # never assumed to be class 0
        cam_masks(labels, None, 3, {"cam_classes": "foreground"})
    assert cam_masks(labels, None, 3, {"cam_classes": "all"}).sum() == 4  # `all` needs none
    with pytest.raises(ValueError, match="not one of the 3 classes"):
        target_classes("foreground", 3, 3)


@pytest.mark.parametrize(
    "raw,reads",
    [
        ({}, True),  # xgd reads cam_classes, and so do the explanation metrics
        ({"run": {"explain": False}}, True),
        ({"distill": {"method": "pi"}}, True),  # explanation metrics
        ({"distill": {"method": "pi"}, "run": {"explain": False}}, False),
        ({"distill": {"method": "xgd", "beta": 0}, "run": {"explain": False}}, False),  # no CAM term
        ({"distill": {"method": "xgd+cwd"}, "run": {"explain": False}}, True),
        ({"distill": {"cam_classes": "all"}}, False),
        ({"teacher": None}, False),  # no teacher: no CAM target (a teacher's own training)
    ],
)
def test_the_spec_refuses_foreground_on_a_folder_without_background_where_a_target_is_built(raw, reads):
    base = {"data": {"kind": "folder", "root": "street", "classes": STREET}, "teacher": {"checkpoint": "t.pt"}}
    for key, value in raw.items():
        base[key] = value if not isinstance(value, dict) else {**base.get(key, {}), **value}
    if not reads:
        validate(TrainSpec, base)
        return
    with pytest.raises(SpecError, match=r"distill.cam_classes 'foreground'.*set data.background") as info:
        validate(TrainSpec, base)
    assert "\n" not in str(info.value)
    validate(TrainSpec, {**base, "data": {**base["data"], "background": "road"}})  # declared: accepted


def test_train_cli_refuses_it_in_one_line(tmp_path, capsys):
    spec = {
        "data": {"kind": "folder", "root": str(tmp_path), "classes": STREET},
        "teacher": {"checkpoint": str(tmp_path / "teacher.pt")},
        "run": {"out_dir": str(tmp_path / "runs"), "device": "cpu"},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "distill.cam_classes" in err, err
    assert not (tmp_path / "runs").exists()


def test_data_background_is_a_folder_setting_and_one_of_its_classes():
    with pytest.raises(SpecError, match="data.background is for data.kind='folder' only") as info:
        validate(TrainSpec, {"data": {"kind": "synthetic", "background": "background"}})
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match=r"data.background 'tree' is not one of the classes \(sky, road, car\)"):
        validate(TrainSpec, {"data": {"kind": "folder", "root": "r", "classes": STREET, "background": "tree"}})


def test_the_gallery_draws_the_declared_target(tmp_path):
    from orchestrator.results.gallery import cam_config

    synthetic = validate(TrainSpec, {}).model_dump()
    assert cam_config(synthetic)["background"] == 0 and cam_config(synthetic)["cam_classes"] == "foreground"
    road = trial_config(tmp_path, background="road")
    assert cam_config(road)["background"] == 1 and cam_config(road)["cam_classes"] == "foreground"
    none = validate(TrainSpec, {"data": {"kind": "folder", "root": "r", "classes": STREET}}).model_dump()
    assert cam_config(none) == {**none["distill"], "background": None, "cam_classes": "all"}  # a teacher run
