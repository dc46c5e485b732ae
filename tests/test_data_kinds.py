"""The benchmark kinds (cityscapes, voc_aug, ade20k, camvid) on tiny fixtures in their release
layouts: masks against a pixel-by-pixel oracle written here from each release's documentation,
splits, class lists, and one-line DataErrors for what a user gets wrong."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fixtures_data import data_cfg, write_ade20k, write_camvid, write_cityscapes, write_voc_aug
from orchestrator.errors import SpecError
from orchestrator.spec.load import validate
from orchestrator.spec.train import DataSpec, TrainSpec
from trainables.data import KINDS, DataError, build_dataset, class_names, fingerprint, held_out_split

# Cityscapes' 19 evaluated classes as label ids, in train-id order (cityscapesScripts' labels.py)
CITYSCAPES_EVAL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def oracle(mask: np.ndarray, rule) -> np.ndarray:
    out = np.empty_like(mask)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            out[y, x] = rule(int(mask[y, x]))
    return out


def loaded(cfg: dict, split: str) -> dict[str, np.ndarray]:
    """The split's masks by image stem."""
    ds = build_dataset(cfg, split, train=False)
    return {ds.source.images[i].stem: ds[i][1].numpy() for i in range(len(ds))}


def one_line(match: str, fn, *args) -> str:
    with pytest.raises(DataError) as e:
        fn(*args)
    assert "\n" not in str(e.value) and match in str(e.value), str(e.value)
    return str(e.value)


def cityscapes_rule(v: int) -> int:
    return CITYSCAPES_EVAL_IDS.index(v) if v in CITYSCAPES_EVAL_IDS else 255


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    written = write_cityscapes(tmp_path)
    cfg = data_cfg("cityscapes", tmp_path)
    names = class_names(cfg)
    assert len(names) == 19 and (names[0], names[10], names[13], names[18]) == ("road", "sky", "car", "bicycle")
    train, val = loaded(cfg, "train"), loaded(cfg, "val")
    assert sorted(train) == ["aachen_000000_000019_leftImg8bit", "bochum_000000_000313_leftImg8bit"]
    for stem, got in {**train, **val}.items():
        raw = written[stem.removesuffix("_leftImg8bit")]
        assert (got == oracle(raw, cityscapes_rule)).all()
        assert set(np.unique(got)) == set(range(19)) | {255}  # every label id was present
    assert held_out_split(cfg) is None
    one_line("'test' (its masks are not public)", build_dataset, cfg, "test", False)
    # the spec's keys name label ids: car (26) ignored on top of the table
    no_car = loaded(data_cfg("cityscapes", tmp_path, ignore_ids=[26]), "val")
    raw = written["frankfurt_000000_000294"]
    assert (
        no_car["frankfurt_000000_000294_leftImg8bit"] == oracle(raw, lambda v: 255 if v == 26 else cityscapes_rule(v))
    ).all()


def test_cityscapes_bad_data(tmp_path):
    one_line("leftImg8bit", build_dataset, data_cfg("cityscapes", tmp_path), "train", False)
    write_cityscapes(tmp_path)
    cfg = data_cfg("cityscapes", tmp_path)
    (tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelIds.png").unlink()
    one_line("bochum_000000_000313_gtFine_labelIds.png", build_dataset, cfg, "train", False)
    bad = np.full((16, 24), 40, np.uint8)  # not a Cityscapes label id
    Image.fromarray(bad, mode="L").save(
        tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    )
    one_line("holds class id 40; allowed 0..18", build_dataset(cfg, "val", False).__getitem__, 0)


def test_voc_aug_train_aug_and_official_val(tmp_path):
    written = write_voc_aug(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit" / "VOC2012"):
        cfg = data_cfg("voc_aug", root)
        train, val = loaded(cfg, "train"), loaded(cfg, "val")
        assert sorted(train) == ["2007_000032", "2008_000002"] and list(val) == ["2007_000033"]
        for stem, got in train.items():
            assert (got == written[stem]).all()  # SegmentationClassAug ids are class indices
        assert (val["2007_000033"] == written["2007_000033/official"]).all()  # VOC's own, outlines 255
        assert len(class_names(cfg)) == 21 and class_names(cfg)[15] == "person" and held_out_split(cfg) is None
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    aug = voc / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    aug.rename(voc / "ImageSets" / "Segmentation" / "train_aug.txt")  # mmseg-style place, ids only
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2008_000002\n")
    assert list(loaded(data_cfg("voc_aug", tmp_path), "train")) == ["2008_000002"]


def test_voc_aug_bad_data(tmp_path):
    write_voc_aug(tmp_path)
    cfg = data_cfg("voc_aug", tmp_path)
    aug = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    aug.write_text("2008_000002\n2007_000033\n")  # a val image in train_aug
    one_line("lists 1 VOC 2012 val images (e.g. 2007_000033)", build_dataset, cfg, "train", False)
    aug.write_text("2008_000002\n2009_999999\n")
    one_line("2009_999999.jpg", build_dataset, cfg, "train", False)
    aug.unlink()
    one_line("train_aug.txt not found", build_dataset, cfg, "train", False)
    one_line("'trainval' is not one of ['train', 'val']", build_dataset, cfg, "trainval", False)


def test_ade20k_reduce_zero_label(tmp_path):
    written = write_ade20k(tmp_path)
    for root in (tmp_path, tmp_path / "ADEChallengeData2016"):
        cfg = data_cfg("ade20k", root)
        names = class_names(cfg)
        assert len(names) == len(set(names)) == 150 and (names[0], names[2], names[12], names[149]) == (
            "wall",
            "sky",
            "person",
            "flag",
        )
        train, val = loaded(cfg, "train"), loaded(cfg, "val")
        assert sorted(train) == ["ADE_train_00000001", "ADE_train_00000002"] and list(val) == ["ADE_val_00000001"]
        for stem, got in {**train, **val}.items():
            assert (got == oracle(written[stem], lambda v: 255 if v == 0 else v - 1)).all()
        assert held_out_split(cfg) is None
    one_line("the test release has no masks", build_dataset, cfg, "test", False)
    with pytest.raises(SpecError, match="data.reduce_zero_label: data.kind='ade20k' fixes it to true"):
        validate(TrainSpec, {"data": {"kind": "ade20k", "root": "x", "reduce_zero_label": False}})


def test_camvid_void_11_ignored(tmp_path):
    written = write_camvid(tmp_path)
    cfg = data_cfg("camvid", tmp_path)
    names = class_names(cfg)
    assert len(names) == 11 and (names[0], names[3], names[8], names[10]) == ("sky", "road", "car", "bicyclist")
    assert held_out_split(cfg) == "test"
    for split, stems in (
        ("train", ["0001TP_006690", "0006R0_f00930"]),
        ("val", ["0016E5_07959"]),
        ("test", ["0001TP_008550"]),
    ):
        got = loaded(cfg, split)
        assert sorted(got) == stems
        for stem in stems:
            assert (got[stem] == oracle(written[stem], lambda v: 255 if v == 11 else v)).all()
    (tmp_path / "valannot" / "0016E5_07959.png").unlink()
    one_line("valannot", build_dataset, cfg, "val", False)


def test_every_kind_is_in_the_spec_the_sweep_check_and_the_fingerprint(tmp_path):
    from orchestrator.run.sweep import DATASETS

    literal = set(DataSpec.model_fields["kind"].annotation.__args__)
    assert literal == set(KINDS) and set(KINDS) - {"synthetic"} == set(DATASETS)
    write_camvid(tmp_path)
    cfg = data_cfg("camvid", tmp_path)
    before = fingerprint(cfg, ("train", "val"))
    (tmp_path / "trainannot" / "0001TP_006690.png").write_bytes(b"x" * 10)
    assert fingerprint(cfg, ("train", "val")) != before  # the masks are part of it
