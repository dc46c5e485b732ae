"""A finished trial's val figure is its best-on-val epoch's (best_val_miou), in tables, fronts, the
report and export's choice and card, not MLflow's latest val_miou; stopped trials say which is which."""

from __future__ import annotations

import csv

import pyarrow as pa
import pytest
import torch

from orchestrator.results import figures, tables
from orchestrator.results.export import Choice, choose, model_card, selection
from test_report import build_store, final_miou


def _two_trials() -> pa.Table:
    """a ends higher (val_miou 0.70) but b's best epoch is the better (0.80 against 0.75)."""
    return pa.table(
        {
            "run_id": ["ra", "rb"],
            "run_name": ["a", "b"],
            "status": ["FINISHED", "FINISHED"],
            "start_time_ms": [1, 2],
            "params.distill.method": ["pi", "xgd"],
            "val_miou": [0.70, 0.60],
            "best_val_miou": [0.75, 0.80],
            "latency_ms": [5.0, 5.0],
        }
    )


def test_the_finished_figure_of_a_val_metric():
    cols = ["val_miou", "best_val_miou", "val_pixel_acc"]
    assert figures.finished("val_miou", cols) == "best_val_miou"
    assert figures.finished("val_pixel_acc", cols) == "val_pixel_acc"  # no best_ column: itself
    assert figures.finished("gflops", cols) == "gflops"
    assert figures.per_epoch("best_val_miou") == "val_miou" and figures.per_epoch("gflops") == "gflops"


def test_export_chooses_by_the_best_on_val_epoch():
    t = _two_trials()
    assert [c.row["run_name"] for c in choose(t, "val_miou", top=2)] == ["b", "a"]
    assert [c.row["run_name"] for c in choose(t, "val_miou", pareto_cost="latency_ms")] == ["b"]


def test_the_summary_table_shows_the_best_on_val_figure():
    g = tables.build_grid(_two_trials(), "summary")
    assert g.headers[1] == "val mIoU (%)" and "val mIoU (%, last epoch)" not in g.headers
    by_method = {r[0].text: r[1] for r in g.rows}
    assert by_method["xgd"].mean == pytest.approx(80.0) and by_method["xgd"].rank == 1
    assert by_method["pi"].mean == pytest.approx(75.0)


def test_a_stopped_trial_says_which_epoch_each_figure_is():
    t = pa.table({"run_name": ["s"], "trial_id": ["t1"], "epochs_done": [2], "val_miou": [0.4], "best_val_miou": [0.5]})
    g = tables.stopped_grid(t, [], "val_miou")
    assert g.headers == ["trial", "ended", "last-epoch val mIoU (%)", "best-epoch val mIoU (%)", "epochs"]
    assert [e.mean for e in g.rows[0][2:4]] == pytest.approx([40.0, 50.0])


def test_the_card_shows_the_exported_weights_val_figures():
    row = {
        "run_id": "rb",
        "run_name": "b",
        "val_miou": 0.60,  # MLflow's last epoch
        "val_pixel_acc": 0.9,
        "best_val_miou": 0.80,
        "test_miou": 0.78,
        "params": 12.0,
    }
    state = {
        "epoch": 1,
        "model_cfg": {"arch": "unet", "encoder": "resnet18"},
        "classes": ["a", "b"],
        "metrics": {"val_miou": 0.80, "val_pixel_acc": 0.95, "train_loss": 0.3, "epoch": 1},
    }
    card = model_card(
        "s",
        Choice(1, row),
        state,
        torch.nn.Conv2d(3, 2, 1),
        (32, 32),
        {},
        {},
        selection("best_val_miou", True, 1, None),
        "sqlite:///x.db",
    )
    assert card["metrics"] == {"val_miou": 0.80, "val_pixel_acc": 0.95, "best_val_miou": 0.80, "test_miou": 0.78}


def test_the_report_ranks_finished_trials_by_their_best_epoch(tmp_path):
    from orchestrator.results.report import make_report
    from orchestrator.tracking import reader

    store = build_store(tmp_path / "store", checkpoints=False)
    client = reader.open_store(store["uri"])
    rep = make_report(client, "demo", tmp_path / "out", log=False, galleries=0)
    with open(rep.dir / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all("best_val_miou" in r for r in rows)
    top = max(rows, key=lambda r: float(r["best_val_miou"]))
    assert float(top["best_val_miou"]) == pytest.approx(final_miou("xgd", 1.0, 1) + 0.02)  # epoch 1's, not the last
    assert "best-on-val epoch" in (rep.dir / "report.md").read_text()
