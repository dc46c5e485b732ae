"""The sweep's view without a terminal (a log file, `ray job logs`, CI): one unwrapped line per
trial event, and a closing table with one column per searched key that never splits a value
across lines, however many keys and however long their values."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.run.live import SweepView, fmt, print_summary

POINTS = {  # many searched keys, long values, two keys whose last parts clash (tau)
    "t_0001": {
        "student": "dlv3p_r18_with_a_long_encoder_name",
        "method": "xgd",
        "distill.alpha": 0.123456789,
        "distill.tau": 0.5,
        "kd.tau": 4.0,
        "optim.lr": 0.000123456789,
        "augment.policy": "randaugment_magnitude_nine_layers_two",
        "grid_index": 3,
    },
    "t_0002": {
        "student": "unetpp_efficientnet_b3_student",
        "method": "pi",
        "distill.alpha": 1.98765,
        "distill.tau": 1.0,
        "kd.tau": 2.0,
        "optim.lr": 0.0098765,
        "augment.policy": "none",
        "grid_index": 4,
    },
}


def _sweep_log(epochs: int = 3) -> tuple[SweepView, list[str]]:
    log = io.StringIO()
    console = Console(file=log)  # what `Console()` is when stdout is a file: no terminal, 80 columns
    assert not console.is_terminal and console.width == 80
    view = SweepView("a_sweep_with_a_rather_long_name", 2, "val_miou", "max", epochs, console, ("test_miou",))
    with view:
        for trial, point in POINTS.items():
            view.trial_started(trial, point)
            for epoch in range(epochs):
                miou = 0.1 * (epoch + 1) + (0.012345678 if trial == "t_0001" else 0)
                view.trial_result(trial, {"epochs_done": epoch + 1, "val_miou": miou, "test_miou": miou - 0.01})
                view.trial_result(trial, {"epochs_done": epoch + 1, "checkpoint_path": f"/ck/{trial}"})  # same epoch
            view.trial_ended(trial, "completed")
        print_summary(view, ("t_0001",))
    return view, log.getvalue().splitlines()


def test_events_are_one_unwrapped_line_each():
    view, lines = _sweep_log(epochs=3)
    for trial, point in POINTS.items():
        mine = [line for line in lines if f" {trial} " in line]
        assert [line.split()[0] for line in mine] == ["start", "epoch", "epoch", "epoch", "completed"], mine
        assert all(f"={fmt(v)}" in mine[0] for k, v in point.items() if k != "grid_index"), mine[0]
        assert mine[3].startswith(f"epoch 3/3 {trial} val_miou {fmt(view.rows[trial].latest)} (best ")


def test_the_closing_table_has_a_column_per_searched_key_and_no_split_value():
    view, lines = _sweep_log()
    start = lines.index("sweep a_sweep_with_a_rather_long_name: 2 trials")
    head, *rows = lines[start + 1 : start + 4]
    columns = head.split()
    assert columns[:2] == ["trial", "status"] and columns[-5:] == [
        "val_miou",
        "best",
        "val_miou",
        "test_miou",
        "pareto",
    ]
    for name in ("student", "method", "alpha", "distill.tau", "kd.tau", "lr", "policy", "epochs", "pareto"):
        assert name in columns, head
    assert "grid_index" not in head
    for trial, point in POINTS.items():
        (row,) = [r for r in rows if r.startswith(trial)]
        r = view.rows[trial]
        values = [fmt(v) for k, v in point.items() if k != "grid_index"]
        values += [fmt(r.latest), fmt(r.best), fmt(r.result["test_miou"]), "3", "completed"]
        cells = row.split()
        assert all(v in cells for v in values), (row, values)  # each value whole on its trial's line
        # and in its own column: it starts where its header does
        for name, value in (("student", point["student"]), ("policy", point["augment.policy"])):
            assert row[head.index(name) :].startswith(value), (head, row)
    assert rows[0].startswith("t_0001") and rows[0].endswith("*")  # the best first; the Pareto mark
    assert not any(r.startswith("t_0001") for r in lines[start + 4 :])  # nothing of the table after it
