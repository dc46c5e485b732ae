"""The report of one sweep, read from MLflow only: trials.parquet/.csv (one row per trial), one
<layout>.md/.tex/.csv per table (mean +- std over seeds per cell), report.md and plots/*.png
(orchestrator.results.tables, .plots, .gallery), logged to the sweep's parent run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import SpecError, UserError
from orchestrator.tracking import tags as T


@dataclass
class Report:
    sweep: str
    dir: Path
    trials: int
    counted: int
    files: list[Path] = field(default_factory=list)
    importances: dict[str, float] = field(default_factory=dict)
    log_error: str = ""  # why logging to the parent run failed, if it did
    notes: list[str] = field(default_factory=list)  # what was skipped and why


def make_report(
    client,
    name: str,
    out_root: str | Path,
    metric: str = "val_miou",
    maximize: bool = True,
    log: bool = True,
    console=None,
    galleries: int = 1,
) -> Report:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from orchestrator.results import plots, tables
    from orchestrator.tracking import reader

    sweep = reader.find_sweep(client, name)
    table = reader.trials_table(client, sweep)
    out = reader.safe_join(out_root, sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(sweep.name, out, len(table), 0)
    pq.write_table(table, out / "trials.parquet")
    pcsv.write_csv(table, out / "trials.csv")
    rep.files += [out / "trials.parquet", out / "trials.csv"]

    counted = reader.done(table, metric)
    rep.counted = len(counted)
    if not len(counted):
        states = sorted(set(table.column("status").to_pylist()))
        raise UserError(
            f"sweep {name!r} has {len(table)} trial runs but none finished with metric {metric!r} "
            f"(statuses: {', '.join(states)}); wrote {out / 'trials.csv'}"
        )

    md = [
        f"# Sweep {sweep.name}",
        "",
        f"Parent run `{sweep.parent.info.run_id}`; {len(counted)} of {len(table)} trials counted "
        f"(status {' or '.join(reader.DONE)}); mean ± std over seeds; best **bold**, second <u>underlined</u>.",
        "",
    ]
    for layout in _layouts(sweep, counted, console):
        grid = tables.build_grid(counted, layout, _labels(sweep))
        if grid is None:
            continue
        grid.title = f"{sweep.name}: {grid.title}"
        if console is not None:
            console.print(tables.to_rich(grid))
        (out / f"{layout}.md").write_text(tables.to_markdown(grid))
        (out / f"{layout}.tex").write_text(tables.to_latex(grid, label=f"tab:{reader.safe_name(sweep.name)}-{layout}"))
        pcsv.write_csv(tables.to_arrow(grid), out / f"{layout}.csv")
        rep.files += [out / f"{layout}.{ext}" for ext in ("md", "tex", "csv")]
        md.append(tables.to_markdown(grid))

    pdir = out / "plots"
    rep.importances = plots.param_importances(counted, metric, maximize)
    made = [
        plots.hyper_plot(counted, metric, pdir / "hyperparams.png"),
        plots.pareto_plot(counted, metric, pdir / "pareto.png", maximize),
        plots.importance_plot(rep.importances, metric, pdir / "importances.png"),
    ]
    if rep.importances:
        (out / "importances.csv").write_text(
            "param,importance\n" + "".join(f"{k},{v:.6f}\n" for k, v in rep.importances.items())
        )
        rep.files.append(out / "importances.csv")
    made += _galleries(counted, metric, maximize, galleries, pdir, rep)
    for p in filter(None, made):
        rep.files.append(p)
        md += [f"![{p.stem}](plots/{p.name})", ""]
    (out / "report.md").write_text("\n".join(md))
    rep.files.append(out / "report.md")
    if log:
        try:
            client.log_artifacts(sweep.parent.info.run_id, str(out), "report")
        except Exception as e:  # the files are written; an unreachable artifact store only costs the copy
            rep.log_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return rep


def _galleries(counted, metric: str, maximize: bool, k: int, pdir: Path, rep: Report) -> list[Path]:
    """Galleries of the k best trials; a missing checkpoint or dataset is a note, not a failure
    (the report works on a machine that has only the MLflow store)."""
    from orchestrator.results import gallery
    from trainables.data import DataError

    everyone = sorted(counted.to_pylist(), key=lambda r: r[metric], reverse=maximize)
    out = []
    for rank, row in enumerate(everyone[: max(k, 0)], 1):
        try:
            out.append(gallery.gallery(row, pdir / f"gallery_{rank}.png", base_row=_base_trial(row, everyone)))
        except (UserError, SpecError, DataError) as e:
            rep.notes.append(f"no saliency gallery for {row['run_name']}: {e}")
        except Exception as e:  # a picture is optional: any other failure is a note with its type, too
            first = str(e).splitlines()[0] if str(e) else ""
            rep.notes.append(f"no saliency gallery for {row['run_name']}: {type(e).__name__}: {first}")
    return out


def _base_trial(row: dict, ranked: list[dict]) -> dict | None:
    """The best trial of the same student architecture trained without KD (UniCAM's base), if
    the sweep has one and `row` is distilled."""
    same = ("params.model.arch", "params.model.encoder")
    if row.get("params.distill.method") in (None, "none"):
        return None
    return next(
        (r for r in ranked if r.get("params.distill.method") == "none" and all(r.get(k) == row.get(k) for k in same)),
        None,
    )


def _labels(sweep) -> list[str]:
    """An ablation's cell labels in spec order (parent tag xgd.labels, a JSON list)."""
    try:
        labels = json.loads(sweep.parent.data.tags.get(T.LABELS) or "[]")
    except ValueError:
        return []
    return [str(v) for v in labels] if isinstance(labels, list) else []


def _layouts(sweep, counted, console) -> list[str]:
    from orchestrator.results import tables

    tag = sweep.parent.data.tags.get(T.LAYOUTS)
    if not tag:
        return tables.default_layouts(counted)
    names = [n.strip() for n in tag.split(",") if n.strip()]
    unknown = [n for n in names if n not in tables.LAYOUTS]
    if unknown and console is not None:
        console.print(
            f"[yellow]warning:[/] parent tag xgd.layouts names unknown layouts {unknown}; "
            f"known: {', '.join(tables.LAYOUTS)}"
        )
    return [n for n in names if n in tables.LAYOUTS]
