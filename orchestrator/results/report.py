"""The report of one sweep, read from MLflow only: trials.parquet/.csv (one row per trial), one
<layout>.md/.tex/.csv per table (mean +- std over seeds per cell), report.md and plots/*.png
(orchestrator.results.tables, .plots, .gallery), logged to the sweep's parent run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

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

    from orchestrator.results import figures, study, tables
    from orchestrator.tracking import reader

    sweep = reader.find_sweep(client, name)
    raw = reader.trials_table(client, sweep)  # what each trial's trainer got (galleries rebuild it)
    space = study.space_from_text(reader.sweep_spec_text(client, sweep))
    table = study.mask_inactive(raw, space)  # a param whose `when:` does not hold is null
    table = study.mask_unused(table)  # and one the trial's method never reads (beta of a PI cell)
    out = reader.safe_join(out_root, sweep.name)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(sweep.name, out, len(table), 0)
    pq.write_table(table, out / "trials.parquet")
    pcsv.write_csv(table, out / "trials.csv")
    rep.files += [out / "trials.parquet", out / "trials.csv"]

    epochs, metric = metric, figures.finished(metric, table.column_names)  # val_miou -> best_val_miou
    counted, stopped = reader.completed(table, metric), reader.stopped(table)
    rep.counted = len(counted)
    if not len(counted):
        states = sorted(set(table.column("status").to_pylist()))
        raise UserError(
            f"sweep {name!r} has {len(table)} trial runs but none ran every epoch with metric {metric!r} "
            f"(statuses: {', '.join(states)}); wrote {out / 'trials.csv'}"
        )

    md = [
        f"# Sweep {sweep.name}",
        "",
        f"Parent run `{sweep.parent.info.run_id}`; {len(counted)} of {len(table)} trials counted (every "
        f"epoch ran), {len(stopped)} stopped early (shown apart, left out of the tables, importances, plots "
        "and Pareto fronts); mean ± std over seeds; best **bold**, second <u>underlined</u>. A counted trial's "
        "val mIoU is its best-on-val epoch's (`best_val_miou`: the weights its test and explanation metrics "
        f"come from); plots, importances and fronts rank by `{metric}`.",
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
    from orchestrator.results.confirm import confirmed_by, write_confirmation  # CIs and paired tests

    confirm_files, confirm_md = write_confirmation(sweep, table, out, console, client)
    rep.files, md = rep.files + confirm_files, md + confirm_md
    rep.notes += confirmed_by(client, sweep)  # a source sweep: its confirmations
    from orchestrator.results.compare import write_budget  # a comparison's confirmation: each method's budget

    budget_files, budget_md = write_budget(client, sweep.parent.data.tags, out, console)
    rep.files, md = rep.files + budget_files, md + budget_md

    md += _stopped_table(stopped, tables.factors(reader.done(table)), epochs, sweep.name, out, console, rep)
    md += _infeasible(counted, sweep, metric, out, rep)

    made = _plots(client, counted, stopped, space, metric, maximize, out, rep)
    ids = set(counted.column("run_id").to_pylist())
    raw_counted = raw.filter(pa.array([r in ids for r in raw.column("run_id").to_pylist()], pa.bool_()))
    made += _galleries(raw_counted, metric, maximize, galleries, out / "plots", rep)
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


def _stopped_table(stopped, by: list[str], metric: str, sweep: str, out: Path, console, rep: Report) -> list[str]:
    """stopped.md/.tex/.csv: the trials that ended early, with their epochs; Markdown for report.md."""
    import pyarrow.csv as pcsv

    from orchestrator.results import tables
    from orchestrator.tracking import reader

    grid = tables.stopped_grid(stopped, [b for b in by if b in stopped.column_names], metric)
    if grid is None:
        return []
    grid.title = f"{sweep}: {grid.title}"
    if console is not None:
        console.print(tables.to_rich(grid))
    (out / "stopped.md").write_text(tables.to_markdown(grid))
    (out / "stopped.tex").write_text(tables.to_latex(grid, label=f"tab:{reader.safe_name(sweep)}-stopped"))
    pcsv.write_csv(tables.to_arrow(grid), out / "stopped.csv")
    rep.files += [out / f"stopped.{ext}" for ext in ("md", "tex", "csv")]
    rep.notes.append(
        f"{len(stopped)} trials stopped early (shown apart in stopped.md; not counted in tables, importances, "
        "plots or Pareto fronts)"
    )
    return [tables.to_markdown(grid)]


def _infeasible(counted, sweep, metric: str, out: Path, rep: Report) -> list[str]:
    """infeasible.csv and a report.md section: the counted trials that miss the sweep's
    constraints (tag xgd.constraints); they stay in the tables, are marked x in the Pareto plot and
    left out of the fronts, the sweep's best trial and export."""
    import pyarrow.csv as pcsv

    from orchestrator.tracking import reader

    bad = reader.infeasible(counted)
    said = sweep.parent.data.tags.get(T.CONSTRAINTS)
    if not said:
        return []
    costs = [m.split(" ")[0] for m in said.split("; ")]
    keep = [c for c in ("trial_id", "run_name", metric, *costs) if c in bad.column_names]
    rep.notes.append(f"{len(bad)} of {len(counted)} counted trials miss the constraints ({said}): infeasible.csv")
    md = [
        f"## Constraints: {said}",
        "",
        f"{len(bad)} of {len(counted)} counted trials miss them "
        "(kept in the tables above; marked x in the Pareto plot; left out of the fronts, the best trial and export).",
        "",
    ]
    if len(bad):
        pcsv.write_csv(bad.select(keep), out / "infeasible.csv")
        rep.files.append(out / "infeasible.csv")
        md += ["| " + " | ".join(keep) + " |", "|" + "---|" * len(keep)]
        md += ["| " + " | ".join(_cell(r[k]) for k in keep) + " |" for r in bad.select(keep).to_pylist()]
        md.append("")
    return md


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _plots(client, counted, stopped, space, metric: str, maximize: bool, out: Path, rep: Report) -> list:
    """The plots of the trials that ran every epoch (curves: the stopped ones too) and importances.csv."""
    from orchestrator.results import figures, plots, study, tables
    from orchestrator.tracking import reader

    pdir = out / "plots"
    scale = tables.col(metric).scale
    st = study.study_from_table(counted, metric, tables.factors(counted), maximize, space, scale, stopped)
    evaluator = study.evaluator_for(len(counted))
    rep.importances = study.importances(st, evaluator)
    made = [plots.importance_plot(st, evaluator, metric, pdir / "importances.png") if rep.importances else None]
    rows = [("all", k, v) for k, v in rep.importances.items()]
    for cond, when in study.conditions(space).items():  # a conditional param, where it is active
        sub = study.holds(counted, when, space)
        if len(sub) == len(counted):  # every counted trial: the importances above already say it
            continue
        sub_st = study.study_from_table(sub, metric, tables.factors(sub), maximize, space, scale)
        imp = study.importances(sub_st, evaluator)
        rows += [(cond, k, v) for k, v in imp.items()]
        name = f"importances_{reader.safe_name(cond)}.png"
        title = f"trials with {cond} ({len(sub)})"
        made.append(plots.importance_plot(sub_st, evaluator, metric, pdir / name, title) if imp else None)
    if rows:
        (out / "importances.csv").write_text(
            "trials,param,importance\n" + "".join(f"{c},{k},{v:.6f}\n" for c, k, v in rows)
        )
        rep.files.append(out / "importances.csv")
    _pareto_csv(plots.fronts(counted, metric, maximize), metric, out, rep)
    run_ids = counted.column("run_id").to_pylist() + stopped.column("run_id").to_pylist()
    ep = figures.per_epoch(metric)  # curves: the per-epoch values, not the running best
    made += [
        plots.history_plot(st, metric, pdir / "history.png"),
        plots.parallel_plot(st, metric, pdir / "parallel.png"),
        plots.curves_plot(reader.histories(client, run_ids, ep), counted, stopped, ep, pdir / "curves.png"),
        plots.hyper_plot(counted, metric, pdir / "hyperparams.png"),
        plots.pareto_plot(counted, metric, pdir / "pareto.png", maximize),
    ]
    return made


def _pareto_csv(by_cost: dict, metric: str, out: Path, rep: Report) -> None:
    """pareto.csv: per cost, the trials on the front of `metric` against it (cheapest first)."""
    import pyarrow.csv as pcsv

    rows = [(cost, r.get("trial_id"), r["run_name"], r[cost], r[metric]) for cost, (_, f) in by_cost.items() for r in f]
    if rows:
        names = ("cost", "trial_id", "run_name", "cost_value", metric)
        pcsv.write_csv(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), out / "pareto.csv")
        rep.files.append(out / "pareto.csv")


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
