"""The budget each method of a comparison (`compare`, orchestrator.run.compare) actually spent:
trials run, finished and stopped, epochs trained and trainer seconds (the sum over its trials'
epochs of `epoch_time_s`, the loop's own timing of its training steps), read back from MLflow.

`budget_rows` is a pure function of (method -> trial rows, method -> epoch-time histories);
`write_budget` renders it for the confirmation's report."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from orchestrator.tracking import tags as T

EPOCH_TIME = "epoch_time_s"
EPOCHS_DONE = "epochs_done"


def budget_rows(trials: Mapping[str, Sequence[dict]], seconds: Mapping[str, float]) -> list[dict]:
    """One row per method: trials, finished (ran every epoch), stopped early, epochs, trainer seconds."""
    out = []
    for method, rows in trials.items():
        epochs = sum(int(r.get(EPOCHS_DONE) or 0) for r in rows)
        out.append(
            {
                "method": method,
                "trials": len(rows),
                "finished": sum(r.get("status") == "FINISHED" for r in rows),
                "stopped": sum(r.get("status") == "KILLED" for r in rows),
                "epochs": epochs,
                "trainer_s": seconds.get(method, 0.0),
            }
        )
    return out


def tuned_points(cells_json: str | None) -> dict[str, tuple[str, float | None]]:
    """method -> (its confirmed point as 'alpha=0.379 tau=1.57 ...', the best val mIoU its search
    found there), from the confirmation's cells (tag CONFIRM_CELLS; a comparison labels each by its
    method). The method itself is the row's name, so it is left out of the point."""
    try:
        cells = json.loads(cells_json or "[]")
    except ValueError:
        return {}
    out = {}
    for c in cells:
        point = {k.rsplit(".", 1)[-1]: v for k, v in (c.get("point") or {}).items() if k != "distill.method"}
        text = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
        out[c.get("label", "?")] = (text or "(defaults)", c.get("value"))
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _spent(client, stages: Mapping[str, str]):
    from orchestrator.errors import UserError
    from orchestrator.tracking import reader

    trials, seconds, missing = {}, {}, []
    for method, name in stages.items():
        try:
            sweep = reader.find_sweep(client, name)
        except UserError:
            missing.append(name)
            continue
        trials[method] = reader.trials_table(client, sweep).to_pylist()
        hist = reader.histories(client, [r.info.run_id for r in sweep.trials], EPOCH_TIME)
        seconds[method] = sum(v for points in hist.values() for _, v in points)
    return trials, seconds, missing


def write_budget(client, parent_tags: Mapping[str, str], out: Path, console=None) -> tuple[list[Path], list[str]]:
    """For a comparison's confirmation (parent tag COMPARE_STAGES): budget.md/.csv; (files, Markdown lines)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from orchestrator.results import tables
    from orchestrator.results.tables import Entry, Grid

    try:
        stages = json.loads(parent_tags.get(T.COMPARE_STAGES) or "{}")
        epochs = json.loads(parent_tags.get(T.COMPARE_EPOCHS) or "{}")
    except ValueError:
        return [], []
    if not stages:
        return [], []
    trials, seconds, missing = _spent(client, stages)
    rows = budget_rows(trials, seconds)
    tuned = tuned_points(parent_tags.get(T.CONFIRM_CELLS))
    budget = parent_tags.get(T.COMPARE_BUDGET, "?")
    heads = [
        "method",
        "sweep",
        "epochs per trial",
        "trials",
        "finished",
        "stopped early",
        "epochs run",
        "trainer s",
        "tuned point (confirmed)",
        "its search val mIoU (%)",
    ]
    grid_rows = [
        [
            Entry(r["method"]),
            Entry(stages[r["method"]]),
            Entry(str(epochs.get(r["method"], "-"))),
            *(Entry(str(r[k])) for k in ("trials", "finished", "stopped", "epochs")),
            Entry(f"{r['trainer_s']:.0f}"),
            Entry(tuned.get(r["method"], ("-", None))[0]),
            Entry(_pct(tuned.get(r["method"], ("-", None))[1])),
        ]
        for r in rows
    ]
    grid = Grid(
        f"{parent_tags.get(T.COMPARE, '')}: budget spent per method's search ({budget} budget)", heads, grid_rows, 2
    )
    if console is not None:
        console.print(tables.to_rich(grid))
    (out / "budget.md").write_text(tables.to_markdown(grid))
    csv_rows = [{**r, "sweep": stages[r["method"]], "tuned_point": tuned.get(r["method"], ("", None))[0]} for r in rows]
    pcsv.write_csv(pa.Table.from_pylist(csv_rows), out / "budget.csv")
    md = [tables.to_markdown(grid)]
    md += [f"Note: sweep {n} is not in this store." for n in missing]
    return [out / "budget.md", out / "budget.csv"], md
