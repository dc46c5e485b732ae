"""The teacher's cache key names the teacher: settings that cannot change its weights (loader
workers, where the data or the results live) keep the key; a crop, a class list or one training
file changes it; an entry cached under the old key is found again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures_data import write_folder, write_image, write_voc
from orchestrator.run import teachers
from orchestrator.spec.sweep import parse_sweep_spec

CLASSES = ["background", "cable", "tower"]
SPACE = {"distill.alpha": {"type": "uniform", "low": 0.5, "high": 1.0}}


def recipe(root: Path, **data) -> dict:
    return {
        "data": {
            "kind": "folder",
            "root": str(root),
            "classes": CLASSES,
            "background": "background",
            "crop": 16,
            **data,
        },
        "model": {"arch": "deeplabv3plus", "encoder": "resnet18"},
        "optim": {"epochs": 2},
    }


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data-a"
    write_folder(root, "train")
    write_image(root / "train" / "images" / "b.png", 16, 16, 7)
    shutil.copy(root / "train" / "masks" / "a.png", root / "train" / "masks" / "b.png")
    write_folder(root, "val")
    return root


def key(r: dict) -> str:
    teachers._fingerprint.cache_clear()  # a test changes files under one root string
    return teachers.recipe_hash(r)


def test_loader_workers_and_where_things_live_keep_the_key(folder, tmp_path):
    base = key(recipe(folder))
    assert key(recipe(folder, workers=3)) == base
    moved = tmp_path / "elsewhere" / "mount" / "data-b"
    shutil.copytree(folder, moved)
    assert key(recipe(moved)) == base  # the same files on another mount
    r = recipe(folder)
    r["run"] = {"out_dir": str(tmp_path / "x"), "checkpoint_every": 5}
    assert key(r) == base


def test_crop_classes_and_one_training_file_change_the_key(folder):
    base = key(recipe(folder))
    assert key(recipe(folder, crop=32)) != base
    other = recipe(folder)
    other["data"]["classes"] = [*CLASSES, "insulator"]
    assert key(other) != base
    write_image(folder / "train" / "images" / "b.png", 24, 16, 8)  # one training image replaced
    assert key(recipe(folder)) != base


def test_the_fingerprint_lists_each_split_not_the_root_string(tmp_path):
    write_voc(tmp_path / "voc")
    given = {"kind": "voc", "crop": 16}
    # the same VOC named by its parent or by its devkit year folder: one dataset, one key
    a = key({"data": {**given, "root": str(tmp_path / "voc")}})
    b = key({"data": {**given, "root": str(tmp_path / "voc" / "VOCdevkit" / "VOC2012")}})
    assert a == b
    assert key({"data": {**given, "root": str(tmp_path / "voc"), "train_split": "val"}}) != a


def test_unreadable_data_falls_back_to_its_root(tmp_path):
    r = recipe(tmp_path / "not-here")
    assert key(r) == key(recipe(tmp_path / "not-here", workers=2))
    assert key(r) != key(recipe(tmp_path / "not-there"))


def test_synthetic_quickstart_key_ignores_workers():
    raw = {
        "name": "q",
        "train": {"data": {"kind": "synthetic"}},
        "teacher": {"recipe": {"optim": {"epochs": 1}}},
        "space": SPACE,
    }
    a = parse_sweep_spec(raw).teacher.recipe
    raw["train"]["data"]["workers"] = 3
    b = parse_sweep_spec(raw).teacher.recipe
    assert a != b and key(a) == key(b)


def test_an_entry_under_the_old_key_is_found_again(folder, tmp_path):
    raw = {
        "name": "q",
        "results": str(tmp_path / "results"),
        "train": recipe(folder),
        "teacher": {"recipe": {"optim": {"epochs": 1}}},
        "space": SPACE,
    }
    spec = parse_sweep_spec(raw)
    old = teachers.legacy_hash(spec.teacher.recipe)
    assert old != key(spec.teacher.recipe)
    entry = Path(spec.results) / "teachers" / old
    (entry / "teacher").mkdir(parents=True)
    (entry / "teacher" / "best.pt").write_bytes(b"weights")
    (entry / "result.json").write_text(json.dumps({"checkpoint": str(entry / "teacher" / "best.pt"), "metrics": {}}))
    hit = teachers.cached(spec)
    assert hit is not None and hit.recipe_hash == old and hit.cached
