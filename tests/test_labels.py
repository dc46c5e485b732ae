"""Label conventions (data.label_map, ignore_ids, reduce_zero_label): masks mapped as a brute-force
per-pixel oracle says, one-line spec errors naming the key, a folder with void = 11 that trains,
and teacher cache keys unchanged for recipes that do not use the keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_data import data_cfg, write_image
from orchestrator.errors import SpecError
from orchestrator.spec.load import validate
from orchestrator.spec.train import TrainSpec
from trainables.data import DataError, build_dataset

STREET = ["sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "cyclist"]


def street_mask(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    """Every id 0..11 present (11 = void, as CamVid stores it), in random places."""
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 12, (h, w), dtype=np.uint8)
    m.flat[:12] = np.arange(12)
    return m


def write_street(root: Path, splits=("train", "val"), n: int = 2) -> dict[str, list[np.ndarray]]:
    """A folder dataset of 11 classes whose masks hold 11 for void; the masks written, per split."""
    written = {}
    for s, split in enumerate(splits):
        (root / split / "masks").mkdir(parents=True)
        written[split] = []
        for k in range(n):
            write_image(root / split / "images" / f"f{k:03d}.png", 32, 32, 10 * s + k)
            m = street_mask(10 * s + k)
            Image.fromarray(m, mode="L").save(root / split / "masks" / f"f{k:03d}.png")
            written[split].append(m)
    return written


def oracle(mask: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Pixel by pixel: the table's value where it names the id, else the id itself."""
    out = np.empty_like(mask)
    for y in range(mask.shape[0]):
        for x in range(mask.shape[1]):
            v = int(mask[y, x])
            out[y, x] = table.get(v, v)
    return out


def masks(cfg: dict, split: str = "train") -> list[np.ndarray]:
    ds = build_dataset(cfg, split, train=False)
    return [ds[i][1].numpy() for i in range(len(ds))]


def test_void_11_is_refused_until_ignore_ids_names_it(tmp_path):
    written = write_street(tmp_path)
    plain = data_cfg("folder", tmp_path, classes=STREET)
    with pytest.raises(DataError) as e:
        build_dataset(plain, "train", False)[0]
    assert "holds class id 11; allowed 0..10 or 255" in str(e.value) and "data.ignore_ids" in str(e.value)
    cfg = data_cfg("folder", tmp_path, classes=STREET, ignore_ids=[11])
    for got, raw in zip(masks(cfg), written["train"]):
        assert (got == oracle(raw, {11: 255})).all()
        assert (
            (got == 255).sum() == (raw == 11).sum()
            and got.max() == 255
            and set(np.unique(got)) - {255} == set(range(11))
        )


def test_label_map_merges_and_ignores(tmp_path):
    written = write_street(tmp_path)
    table = {11: 255, 10: 8, 7: 255}  # void ignored, cyclist counted as car, fence ignored
    cfg = data_cfg("folder", tmp_path, classes=STREET, label_map=table)
    for got, raw in zip(masks(cfg, "val"), written["val"]):
        assert (got == oracle(raw, table)).all() and not (got == 10).any() and not (got == 7).any()
    both = data_cfg("folder", tmp_path, classes=STREET, ignore_ids=[11, 7], label_map={10: 8})
    assert all(
        (a == b).all()
        for a, b in zip(masks(both), masks(data_cfg("folder", tmp_path, classes=STREET, label_map=table)))
    )


def test_reduce_zero_label_shifts_and_ignores_zero(tmp_path):
    written = write_street(tmp_path)  # read as ADE20K-style: 0 = other, 1..11 = 11 classes
    cfg = data_cfg("folder", tmp_path, classes=STREET, reduce_zero_label=True)
    table = {0: 255, **{k: k - 1 for k in range(1, 255)}}
    for got, raw in zip(masks(cfg), written["train"]):
        assert (got == oracle(raw, table)).all() and got[raw == 0].tolist() == [255] * int((raw == 0).sum())
    # an explicit entry wins over the shift for its id
    cfg = data_cfg("folder", tmp_path, classes=STREET, reduce_zero_label=True, label_map={1: 255})
    got, raw = masks(cfg)[0], written["train"][0]
    assert (got == oracle(raw, {**table, 1: 255})).all()


def test_a_16_bit_mask_maps_too(tmp_path):
    write_image(tmp_path / "train" / "images" / "a.png", 8, 4)
    raw = np.array([[0, 1, 300, 300]] * 4 + [], np.uint16).repeat(2, axis=1)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    Image.fromarray(raw).save(tmp_path / "train" / "masks" / "a.png")
    got = masks(data_cfg("folder", tmp_path, classes=["a", "b"], label_map={300: 255}))[0]
    assert (got == oracle(raw.astype(np.int64), {300: 255})).all()


BAD = [
    ({"classes": STREET, "label_map": {11: 11}}, "data.label_map maps 11 to 11; allowed targets are 0..10"),
    ({"classes": STREET, "label_map": {11: -1}}, "data.label_map maps 11 to -1"),
    (
        {"classes": STREET, "label_map": {11: 255}, "ignore_ids": [11]},
        "id 11 is named in data.ignore_ids and data.label_map",
    ),
    ({"classes": STREET, "ignore_ids": [11, 11]}, "id 11 is named in data.ignore_ids twice"),
    ({"classes": STREET, "ignore_ids": [70000]}, "data.ignore_ids names id 70000; mask ids are 0..65535"),
    ({"classes": STREET, "label_map": {-3: 255}}, "data.label_map names id -3"),
    ({"classes": STREET, "label_map": "11: 255"}, "data.label_map"),
    ({"classes": STREET, "ignore_ids": ["void"]}, "data.ignore_ids"),
]


@pytest.mark.parametrize("data,needle", BAD)
def test_bad_label_keys_are_one_line_naming_the_key(tmp_path, data, needle):
    with pytest.raises(SpecError) as e:
        validate(TrainSpec, {"data": {"kind": "folder", "root": str(tmp_path), **data}})
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"kind": "ttpla", "root": "x", "ignore_ids": [3]}, "data.ignore_ids is for kinds that read mask files"),
        ({"kind": "synthetic", "label_map": {1: 0}}, "data.label_map is for kinds that read mask files"),
        (
            {"kind": "voc", "root": "x", "reduce_zero_label": True},
            "data.reduce_zero_label: data.kind='voc' fixes it to false",
        ),
        ({"kind": "voc", "root": "x", "label_map": {15: 21}}, "allowed targets are 0..20"),
    ],
)
def test_label_keys_against_the_kind(data, needle):
    with pytest.raises(SpecError) as e:
        validate(TrainSpec, {"data": data})
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_teacher_key_unchanged_for_recipes_without_label_keys():
    """Values computed at commit 9c45304, before the keys existed: its cached teachers are found."""
    from orchestrator.run import teachers

    recipe = {
        "data": {"kind": "synthetic", "num_train": 8, "crop": 32},
        "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "optim": {"epochs": 2},
    }
    assert teachers.recipe_hash(recipe) == "7a0be44b4e192b27" and teachers.legacy_hash(recipe) == "786288deffc4ff9e"
    folder = {**recipe, "data": {"kind": "folder", "root": "absent", "classes": STREET}}
    mapped = {**folder, "data": {**folder["data"], "ignore_ids": [11]}}
    assert teachers.recipe_hash(mapped) != teachers.recipe_hash(folder)  # a used key changes the teacher


@pytest.mark.slow
def test_a_folder_with_ignore_ids_11_trains(tmp_path):
    from trainables.loop import train_loop

    write_street(tmp_path / "street")
    raw = {
        "name": "void11",
        "data": {"kind": "folder", "root": str(tmp_path / "street"), "classes": STREET, "ignore_ids": [11],
                 "crop": 32, "batch_size": 2},
        "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "optim": {"epochs": 1},
        "run": {"out_dir": str(tmp_path / "runs"), "device": "cpu"},
    }  # fmt: skip
    result = train_loop(validate(TrainSpec, raw).model_dump())
    assert math.isfinite(result["train_loss"]) and 0.0 <= result["val_miou"] <= 1.0


def test_the_docs_examples_validate():
    """Every YAML block of docs/datasets.md is a valid data spec (its root need not exist)."""
    import re

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    for block in blocks:
        spec = validate(TrainSpec, yaml.safe_load(block))
        assert spec.data.label_map or spec.data.ignore_ids or spec.data.reduce_zero_label, block
