"""A real 4-trial sweep of one seed on the shared local Ray: the teacher-output cache makes the
frozen teacher run once per (epoch, item) over the whole sweep, not once per trial, and the counts
reach every trial's MLflow run, the parent run and the sweep's summary."""

import os

import pytest

from orchestrator.run.sweep import run_sweep
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T
from tests.test_loop import spec as train_spec
from trainables.loop import train_loop

DATA = {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 32, "batch_size": 4}
EPOCHS, ITEMS, TRIALS = 2, 8, 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_trials_of_one_seed_run_the_teacher_once_per_epoch_and_item(ray_cluster, tmp_path, capsys):
    from mlflow import MlflowClient

    train_loop(train_spec(tmp_path, "teacher", data=DATA, optim__epochs=1, run__explain=False))
    raw = {
        "name": "cached",
        "results": str(tmp_path / "results"),
        "train": {
            "seed": 0,
            "data": DATA,
            "model": {"encoder": "resnet18"},
            "distill": {"method": "xgd", "cam": "gradcam"},
            "optim": {"name": "adamw", "lr": 0.001, "epochs": EPOCHS},
            "run": {"device": "cpu", "explain": False},
        },
        "teacher": {"checkpoint": str(tmp_path / "teacher" / "best.pt")},  # teacher.cache: the default
        "space": {"distill.alpha": {"type": "choice", "values": [0.25, 0.5, 1.0, 2.0]}},
        "search": {"algorithm": "random", "num_samples": TRIALS, "seed": 0},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
    }
    spec = parse_sweep_spec(raw)
    out = run_sweep(spec)
    assert [r.state for r in out.rows] == ["completed"] * TRIALS, [r.error for r in out.rows]

    client = MlflowClient(spec.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(spec.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=T.equals(T.SWEEP, spec.name))
    (parent,) = [r for r in runs if r.data.tags.get(T.KIND) == "sweep"]
    trials = [r for r in runs if r.data.tags.get(T.KIND) == "trial"]
    per_epoch = {
        k: [[m.value for m in client.get_metric_history(t.info.run_id, k)] for t in trials] for k in T.TEACHER_COUNTS
    }
    assert all(len(h) == EPOCHS for h in per_epoch["teacher_forwards"])  # logged every epoch, every trial
    forwards = sum(map(sum, per_epoch["teacher_forwards"]))
    hits = sum(map(sum, per_epoch["teacher_cache_hits"]))
    assert forwards == EPOCHS * ITEMS  # not TRIALS x EPOCHS x ITEMS
    assert hits == (TRIALS - 1) * EPOCHS * ITEMS
    assert sum(map(sum, per_epoch["teacher_cache_misses"])) == forwards  # the teacher ran on misses only
    assert out.teacher["teacher_forwards"] == forwards and out.teacher["teacher_cache_hits"] == hits
    assert parent.data.metrics["teacher_forwards"] == forwards and parent.data.metrics["teacher_cache_hits"] == hits
    assert parent.data.metrics["teacher_cache_bytes"] > 0
    cache = tmp_path / "results" / "teacher_outputs"
    files = [n for _, _, names in os.walk(cache) for n in names]
    assert len([n for n in files if n.endswith(".logits")]) == EPOCHS * ITEMS
    assert f"teacher: {forwards:.0f} item forwards; output cache {hits:.0f} hits" in capsys.readouterr().out
