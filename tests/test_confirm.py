"""`confirm SWEEP`: the statistics of the confirmation table against scipy and by hand (edge cases:
one seed, no test split, a baseline missing a seed), the report's files, the plan read from a
source sweep in MLflow (finished trials only, active entries only, duplicates merged, fresh seeds,
tags linking the source) and one-line errors. The run on Ray: tests/test_confirm_run.py."""

from __future__ import annotations

import json
import math
import time

import pytest
import yaml
from scipy import stats

from orchestrator.cli import main
from orchestrator.results import confirm as C
from orchestrator.run.confirm import fresh_seeds, plan_confirmation, point_of, rank
from orchestrator.spec import space as S
from orchestrator.spec.load import canonical
from orchestrator.spec.sweep import parse_sweep_spec
from orchestrator.tracking import tags as T

# ------------------------------------------------------------------ statistics

SEEDS = [11, 22, 33, 44, 55, 66]
VAL = {
    "top 1": [0.62, 0.65, 0.61, 0.66, 0.64, 0.63],
    "top 2": [0.58, 0.61, 0.60, 0.57, 0.62, 0.59],
    "pi baseline": [0.57, 0.60, 0.58, 0.59, 0.58, 0.60],
}
TEST = {
    "top 1": [0.55, 0.59, 0.57, 0.58, 0.60, 0.56],
    "top 2": [0.54, 0.55, 0.53, 0.58, 0.52, 0.56],
    "pi baseline": [0.53, 0.56, 0.52, 0.57, 0.55, 0.54],
}
ROLES = {"top 1": "config", "top 2": "config", "pi baseline": "baseline"}
PAIRS = C.default_pairs(ROLES)


def table_rows(val=VAL, test=TEST, seeds=SEEDS) -> list[dict]:
    return [
        {"cell": c, "seed": s, "best_val_miou": val[c][i], "test_miou": test[c][i] if test else None}
        for c in val
        for i, s in enumerate(seeds)
    ]


def test_cell_summaries_and_paired_tests_match_scipy():
    conf = C.confirmation_stats(table_rows(), ROLES, PAIRS)
    assert list(conf.roles) == ["top 1", "top 2", "pi baseline"] and conf.metrics == ["best_val_miou", "test_miou"]
    assert PAIRS == [("top 1", "pi baseline"), ("top 2", "pi baseline")]
    for cell, per in conf.cells.items():
        for metric, values in (("best_val_miou", VAL[cell]), ("test_miou", TEST[cell])):
            s = per[metric]
            assert s.n == 6 and s.mean == pytest.approx(sum(values) / 6)
            assert s.std == pytest.approx(stats.tstd(values))
            lo, hi = stats.t.interval(0.95, 5, loc=stats.tmean(values), scale=stats.sem(values))
            assert s.ci == pytest.approx((lo, hi))
    raw = []
    for (cfg, base), per in conf.pairs.items():
        for metric, table in (("best_val_miou", VAL), ("test_miou", TEST)):
            p, a, b = per[metric], table[cfg], table[base]
            diffs = [x - y for x, y in zip(a, b)]
            assert p.n == 6 and p.seeds == SEEDS and p.mean == pytest.approx(sum(diffs) / 6)
            lo, hi = stats.t.interval(0.95, 5, loc=stats.tmean(diffs), scale=stats.sem(diffs))
            assert p.ci == pytest.approx((lo, hi))
            if metric == "best_val_miou":  # the selection split: no test at all
                assert p.p_t is None and p.p_w is None and p.p_holm is None and not p.significant
                continue
            assert p.p_t == pytest.approx(stats.ttest_rel(a, b).pvalue)
            assert p.p_w == pytest.approx(stats.wilcoxon(a, b).pvalue)
            raw.append(p.p_t)
    # Holm over the two test pairs: the smaller p doubled, the larger kept (it is above the doubled one)
    top1, top2 = conf.pairs[PAIRS[0]]["test_miou"], conf.pairs[PAIRS[1]]["test_miou"]
    assert top1.p_holm == pytest.approx(2 * min(raw)) and top2.p_holm == pytest.approx(max(raw))
    assert top1.significant and top1.p_w == pytest.approx(2 / 64)  # exact: all 6 signs positive, two-sided
    assert not top2.significant and top2.p_t > 0.05


def test_hand_computed_mean_std_and_interval():
    s = C.summarize([1.0, 2.0, 3.0])  # mean 2, s = 1, t_{0.975,2} = 4.302653, half = t * 1 / sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci == pytest.approx((2 - 2.4841377, 2 + 2.4841377), abs=1e-6)
    s = C.summarize([0.5, 0.7])  # s = sqrt(0.02); t_{0.975,1} = 12.7062; half = 12.7062 * 0.1
    assert s.std == pytest.approx(math.sqrt(0.02)) and s.ci == pytest.approx((0.6 - 1.270620, 0.6 + 1.270620), abs=1e-5)
    p = C.paired({1: 0.7, 2: 0.8, 3: 0.75}, {1: 0.6, 2: 0.6, 3: 0.7})  # diffs 0.1, 0.2, 0.05
    assert p.mean == pytest.approx(0.35 / 3) and p.std == pytest.approx(stats.tstd([0.1, 0.2, 0.05]))
    assert p.p_w is None  # 3 pairs: no Wilcoxon


def test_one_seed_has_no_interval_or_p_and_says_so():
    rows = table_rows({k: v[:1] for k, v in VAL.items()}, {k: v[:1] for k, v in TEST.items()}, SEEDS[:1])
    conf = C.confirmation_stats(rows, ROLES, PAIRS)
    s, p = conf.cells["top 1"]["best_val_miou"], conf.pairs[("top 1", "pi baseline")]["test_miou"]
    assert s.n == 1 and s.mean == 0.62 and s.std is None and s.ci is None
    assert p.n == 1 and p.mean == pytest.approx(0.02) and p.ci is None and p.p_t is None and p.p_holm is None
    assert any("1 seed" in n and "no standard deviation" in n for n in conf.notes)
    cells, pairs = C.grids(conf, "x")
    from orchestrator.results.tables import to_markdown

    assert "| top 1 | config | 62.00 | - |" in to_markdown(cells)
    # val: difference, seed CI; test: difference, seed CI, test-image CI, p (t), p (Holm), p (W)
    assert "| top 1 | pi baseline | 5.00 | - | 2.00 | - | - | - | - | - | 1 |" in to_markdown(pairs)


def test_no_test_split_leaves_the_test_columns_empty():
    conf = C.confirmation_stats(table_rows(test=None), ROLES, PAIRS)
    assert conf.metrics == ["best_val_miou", "test_miou"] and conf.cells["top 1"]["test_miou"].n == 0
    assert conf.pairs[("top 1", "pi baseline")]["test_miou"].mean is None
    assert "no test_miou in any trial: its columns are empty" in conf.notes
    cells, pairs = C.grids(conf, "x")
    from orchestrator.results.tables import to_markdown

    md = to_markdown(cells)
    assert "test mIoU (%)" in md and md.splitlines()[4].endswith("| - | - | 6 |")
    assert to_markdown(pairs).splitlines()[4].endswith("| - | - | - | - | - | - | 6 |")


def test_a_baseline_missing_a_seed_is_paired_over_the_common_seeds():
    rows = [r for r in table_rows() if not (r["cell"] == "pi baseline" and r["seed"] == 33)]
    conf = C.confirmation_stats(rows, ROLES, PAIRS)
    assert conf.cells["pi baseline"]["test_miou"].n == 5 and conf.cells["top 1"]["test_miou"].n == 6
    p = conf.pairs[("top 1", "pi baseline")]["test_miou"]
    keep = [i for i, s in enumerate(SEEDS) if s != 33]
    a, b = [TEST["top 1"][i] for i in keep], [TEST["pi baseline"][i] for i in keep]
    assert p.n == 5 and p.seeds == [11, 22, 44, 55, 66]
    assert p.p_t == pytest.approx(stats.ttest_rel(a, b).pvalue) and p.p_w is None  # 5 pairs: no Wilcoxon
    assert any("paired over the seeds both ran" in n for n in conf.notes)


def test_csv_tables_hold_the_numbers_in_percent():
    conf = C.confirmation_stats(table_rows(), ROLES, PAIRS)
    cells, pairs = C.to_csv_tables(conf)
    first = cells.to_pylist()[0]
    assert (first["cell"], first["metric"], first["split"], first["n"]) == ("top 1", "best_val_miou", "selection", 6)
    assert first["mean"] == pytest.approx(100 * sum(VAL["top 1"]) / 6)
    val, test = pairs.to_pylist()[:2]
    assert val["metric"] == "best_val_miou" and val["p_ttest"] is None and val["significant"] is False
    assert test["p_ttest"] == pytest.approx(stats.ttest_rel(TEST["top 1"], TEST["pi baseline"]).pvalue)
    assert test["p_holm"] == pytest.approx(2 * test["p_ttest"]) and test["significant"] is True
    assert test["pairs"] == 6 and test["boot_ci_low"] is None  # no per-image counts given


def test_against_lists_choose_the_pairs_and_different_students_are_marked():
    cells = [
        {"label": "top 1", "role": "config", "point": {"student": "r18"}},
        {"label": "top 2", "role": "config", "point": {"student": "mbv2"}},
        {"label": "pi baseline", "role": "baseline", "point": {"student": "r18"}},
    ]
    assert C.pairs_of(cells) == PAIRS  # no `against` anywhere: every configuration minus every baseline
    cells[2]["against"] = []
    assert C.pairs_of(cells) == []  # a cell has one: the pairs are exactly the listed ones
    cells[0]["against"], cells[1]["against"] = ["pi baseline"], ["top 1"]
    pairs = C.pairs_of(cells)
    assert pairs == [("top 1", "pi baseline"), ("top 2", "top 1")]
    conf = C.confirmation_stats(table_rows(), ROLES, pairs, students=C.students_of(cells))
    assert conf.different == {("top 2", "top 1")}
    p = conf.pairs[("top 2", "top 1")]["test_miou"]
    assert p.p_t == pytest.approx(stats.ttest_rel(TEST["top 2"], TEST["top 1"]).pvalue)
    from orchestrator.results.tables import to_markdown

    md = to_markdown(C.grids(conf, "x")[1])
    assert "| top 2 | top 1 † |" in md and "| top 1 | pi baseline |" in md
    assert any(n.startswith("† the two cells train different students") for n in conf.notes)
    with pytest.raises(C.UserError, match="'nope' is not a cell"):
        C.confirmation_stats(table_rows(), ROLES, [("top 1", "nope")])


def _trials_table(rows, statuses):
    import pyarrow as pa

    return pa.Table.from_pylist(
        [
            {
                "run_id": r.get("run_id"),
                "status": st,
                "params.label": r["cell"],
                "params.seed": r["seed"],
                "best_val_miou": r["best_val_miou"],
                "val_miou": 0.0,  # the last epoch's val: not the figure the table shows
                "test_miou": r["test_miou"],
            }
            for st, r in zip(statuses, rows)
        ]
    )


def test_report_hook_writes_markdown_latex_and_csv_from_finished_trials(tmp_path):
    from types import SimpleNamespace

    rows = table_rows()
    statuses = ["FINISHED"] * len(rows) + ["KILLED"]  # an interrupted trial does not count
    rows.append({"cell": "top 1", "seed": 77, "best_val_miou": 0.0, "test_miou": 0.0})
    cells = json.dumps([{"label": k, "role": v, "point": {"distill.method": "pi"}} for k, v in ROLES.items()])
    sweep = SimpleNamespace(
        name="demo-confirm", parent=SimpleNamespace(data=SimpleNamespace(tags={T.CONFIRM_CELLS: cells}))
    )
    files, md = C.write_confirmation(sweep, _trials_table(rows, statuses), tmp_path)
    assert sorted(f.name for f in files) == sorted(
        f"confirmation{x}.{e}" for x in ("", "_paired") for e in ("md", "tex", "csv")
    )
    text = "\n".join(md)
    assert "| top 1 | config | 63.50 ± 1.87 | [61.54, 65.46] |" in text  # best_val_miou; seed 77 (KILLED) left out
    tex = (tmp_path / "confirmation_paired.tex").read_text()
    assert r"$\Delta$ val (pts)" in tex and r"4.83 $\pm$ 1.60" in tex and "0.014*" in tex  # test, Holm-adjusted
    assert "- pi baseline: distill.method=pi" in md
    none = SimpleNamespace(name="plain", parent=SimpleNamespace(data=SimpleNamespace(tags={})))
    assert C.write_confirmation(none, _trials_table(rows, statuses), tmp_path / "x") == ([], [])


def test_report_gives_val_no_p_value_and_calls_it_the_selection_split(tmp_path):
    """The old table tested val like test (p val (t), p val (W), starred): val is where the
    configurations were chosen, so a p-value there is not a test."""
    from types import SimpleNamespace

    rows = table_rows()
    cells = json.dumps([{"label": k, "role": v} for k, v in ROLES.items()])
    sweep = SimpleNamespace(name="d", parent=SimpleNamespace(data=SimpleNamespace(tags={T.CONFIRM_CELLS: cells})))
    _, md = C.write_confirmation(sweep, _trials_table(rows, ["FINISHED"] * len(rows)), tmp_path)
    paired_md = (tmp_path / "confirmation_paired.md").read_text()
    header = next(line for line in paired_md.splitlines() if line.startswith("| cell | minus"))
    heads = [h.strip() for h in header.strip("|").split("|")]
    assert [h for h in heads if h.startswith("p ")] == ["p test (t)", "p test (Holm)", "p test (W)"]
    assert "Δ val (pts)" in heads and "Δ test 95% CI (test images)" in heads
    row = next(line for line in paired_md.splitlines() if line.startswith("| top 1 | pi baseline"))
    entries = [e.strip() for e in row.strip("|").split("|")]
    val_part = entries[heads.index("Δ val (pts)") : heads.index("Δ test (pts)")]
    assert len(val_part) == 2 and not any("*" in e for e in val_part)  # difference and seed CI only
    assert [e for e in entries if e.endswith("*")] == [entries[heads.index("p test (Holm)")]]
    cells_md = (tmp_path / "confirmation.md").read_text()
    assert "val mIoU (%), selection split" in cells_md
    assert any("is the selection split" in line and "no p-value" in line for line in md)


# ------------------------------------------------------------------ the plan from a source sweep

STUDENTS = {
    "r18": {"arch": "deeplabv3plus", "encoder": "resnet18"},
    "mbv2": {"arch": "deeplabv3plus", "encoder": "mobilenet_v2"},
}
SPACE = {
    "student": {"type": "choice", "values": ["r18", "mbv2"]},
    "distill.method": {"type": "choice", "values": ["pi", "xgd"]},
    "distill.cam": {"type": "choice", "values": ["gradcam", "layercam"], "when": {"distill.method": "xgd"}},
    "distill.alpha": {"type": "uniform", "low": 0.1, "high": 2.0},
}
# (point, status, val_miou, latency_ms)
TRIALS = [
    ({"student": "r18", "distill.method": "xgd", "distill.cam": "layercam", "distill.alpha": 1.5}, "FINISHED", 0.70, 9),
    ({"student": "mbv2", "distill.method": "pi", "distill.alpha": 0.5}, "FINISHED", 0.65, 5),
    ({"student": "r18", "distill.method": "xgd", "distill.cam": "gradcam", "distill.alpha": 1.9}, "KILLED", 0.80, 1),
    ({"student": "r18", "distill.method": "pi", "distill.alpha": 1.0}, "FAILED", None, None),
    ({"student": "r18", "distill.method": "xgd", "distill.cam": "layercam", "distill.alpha": 1.5}, "FINISHED", 0.60, 9),
    ({"student": "mbv2", "distill.method": "xgd", "distill.cam": "gradcam", "distill.alpha": 0.3}, "FINISHED", 0.62, 7),
]


def source_raw(tmp_path, name="src", **over) -> dict:
    raw = {
        "name": name,
        "results": str(tmp_path / "results"),
        "train": {
            "data": {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 64},
            "optim": {"epochs": 1},
            "run": {"device": "cpu", "max_steps_per_epoch": 1, "explain": False, "out_dir": str(tmp_path / "runs")},
        },
        "teacher": {"recipe": {"model": {"encoder": "resnet18"}, "optim": {"epochs": 1}, "run": {"device": "cpu"}}},
        "students": STUDENTS,
        "space": SPACE,
        "search": {"num_samples": 6},
    }
    raw.update(over)
    return raw


def fake_sources(root) -> str:
    """One store laid out as sweeps write it: sweep `src` (one objective), `multi` (val mIoU and
    latency, a Pareto front) and an ablation `abl`; parent runs with sweep.yaml, a child run per trial."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=(root / "artifacts").as_uri())
    objective = [{"metric": "val_miou", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}]
    for name, over, tags in (
        ("src", {}, {}),
        ("multi", {"objective": objective}, {}),
        ("abl", {}, {T.ABLATION: "cells"}),
    ):
        _sweep(client, exp, parse_sweep_spec(source_raw(root, name, **over)), tags)
    return uri


def _sweep(client, exp, spec, tags) -> None:
    from mlflow.entities import Metric, Param

    parent = client.create_run(
        exp, run_name=f"sweep:{spec.name}", tags={T.KIND: T.SWEEP_RUN, T.SWEEP: spec.name, **tags}
    )
    pid = parent.info.run_id
    client.log_text(pid, yaml.safe_dump(json.loads(canonical(spec.model_dump())), sort_keys=False), "sweep.yaml")
    students = {k: m.model_dump() for k, m in spec.students.items()}
    for i, (point, status, miou, latency) in enumerate(TRIALS):
        cfg = S.resolve(spec.base_config(), point, students)
        params = {**S.flatten({k: v for k, v in cfg.items() if k != "name"}), "student": point["student"]}
        tags = {T.PARENT: pid, T.KIND: T.TRIAL_RUN, T.SWEEP: spec.name, T.TRIAL_ID: f"t{i}"}
        run = client.create_run(exp, run_name=f"{spec.name}/t{i}", tags=tags, start_time=int(time.time() * 1000) + i)
        ms = [] if miou is None else [Metric("val_miou", miou, 0, 0), Metric("latency_ms", latency, 0, 0)]
        client.log_batch(run.info.run_id, metrics=ms, params=[Param(k, str(v)) for k, v in params.items()])
        client.set_terminated(run.info.run_id, status)
    client.set_terminated(pid, "FINISHED")


@pytest.fixture(scope="module")
def store(module_tmp):
    root = module_tmp
    return root, fake_sources(root)


def test_rank_and_points_keep_finished_trials_and_active_entries():
    space = {k: S.Param.model_validate(v) for k, v in SPACE.items()}
    rows = [
        {"status": "FINISHED", "val_miou": 0.5, "params.distill.method": "pi", "params.distill.cam": "gradcam"},
        {"status": "KILLED", "val_miou": 0.9, "params.distill.method": "xgd", "params.distill.cam": "gradcam"},
        {"status": "FINISHED", "val_miou": 0.7, "params.distill.method": "xgd", "params.distill.cam": "layercam"},
        {"status": "FINISHED", "val_miou": float("nan"), "params.distill.method": "xgd"},
    ]
    ranked = rank(rows, [{"metric": "val_miou", "mode": "max"}], None, False)
    assert [r["val_miou"] for r in ranked] == [0.7, 0.5]
    assert point_of(ranked[0], space) == {"distill.method": "xgd", "distill.cam": "layercam"}
    assert point_of(ranked[1], space) == {"distill.method": "pi"}  # cam is not active for pi
    assert rank(rows, [{"metric": "val_miou", "mode": "min"}], 1, False)[0]["val_miou"] == 0.5


def test_fresh_seeds_are_fixed_by_the_name_distinct_and_never_the_sweeps():
    a = fresh_seeds("src-confirm", 5)
    assert a == fresh_seeds("src-confirm", 5) and len(set(a)) == 5 and 0 not in a
    assert fresh_seeds("src-confirm", 3) == a[:3] and fresh_seeds("other-confirm", 5) != a
    assert a[0] not in fresh_seeds("src-confirm", 3, exclude={a[0]})


def test_plan_reruns_the_top_distinct_configurations_and_baselines_on_fresh_seeds(store):
    from mlflow import MlflowClient

    root, uri = store
    client = MlflowClient(uri)
    plan = plan_confirmation(client, "src", uri=uri, top=2, seeds=3, baselines=["pi", "none", "pi"])
    spec = plan.ablation.sweep
    assert spec.name == "src-confirm" and spec.mlflow.tracking_uri == uri and spec.early_stopping.kind == "none"
    assert [(p.label, p.role, p.trial) for p in plan.picks] == [
        ("top 1", "config", "t0"),  # t2 was stopped early (KILLED), t3 failed, t4 repeats t0
        ("top 2", "config", "t1"),
        ("top 1, beta=0", "baseline", None),
        ("pi baseline (top 1)", "baseline", None),  # top 2's pi baseline is top 2 itself
        ("none baseline (top 1)", "baseline", None),
        ("none baseline (top 2)", "baseline", None),
    ]
    assert plan.picks[0].point == {
        "student": "r18",
        "distill.method": "xgd",
        "distill.cam": "layercam",
        "distill.alpha": 1.5,
    }
    assert plan.picks[1].point == {"student": "mbv2", "distill.method": "pi", "distill.alpha": 0.5}
    assert plan.picks[3].point == {"student": "r18", "distill.method": "pi", "distill.alpha": 1.5}  # top 1's
    assert plan.seeds == fresh_seeds("src-confirm", 3) and 0 not in plan.seeds
    students = {k: m.model_dump() for k, m in spec.students.items()}
    configs = [S.resolve(spec.base_config(), p, students) for p in spec.grid()]
    assert spec.num_samples == 18 and sorted({c["seed"] for c in configs}) == sorted(plan.seeds)
    got = sorted((c["model"]["encoder"], c["distill"]["method"], c["distill"]["alpha"], c["seed"]) for c in configs)
    want = sorted(
        (enc, m, a, s)
        for enc, m, a in (
            ("resnet18", "xgd", 1.5),
            ("mobilenet_v2", "pi", 0.5),
            ("resnet18", "xgd", 1.5),
            ("resnet18", "pi", 1.5),
            ("resnet18", "none", 1.0),
            ("mobilenet_v2", "none", 1.0),
        )
        for s in plan.seeds
    )
    assert got == want  # none keeps train:'s alpha (1.0), every cell runs every seed
    tags = spec.tags
    parent = client.search_runs(
        [client.get_experiment_by_name("xgd").experiment_id], T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: "src"})
    )[0]
    assert tags[T.CONFIRM_SOURCE] == "src" and tags[T.CONFIRM_SOURCE_RUN] == parent.info.run_id
    assert tags[T.CONFIRM_SEEDS] == ",".join(map(str, plan.seeds)) and tags[T.ABLATION] == "cells"
    assert [c["label"] for c in json.loads(tags[T.CONFIRM_CELLS])] == [p.label for p in plan.picks]
    assert spec.teacher == parse_sweep_spec(source_raw(root)).teacher  # the same recipe: the cached teacher


def test_pareto_takes_the_front_of_a_multi_objective_sweep(store):
    from mlflow import MlflowClient

    _, uri = store
    plan = plan_confirmation(MlflowClient(uri), "multi", uri=uri, top=None, seeds=2, pareto=True)
    # finished: t0 (0.70, 9), t1 (0.65, 5), t4 (0.60, 9), t5 (0.62, 7): the front is t0 and t1
    assert [p.trial for p in plan.picks if p.role == "config"] == ["t0", "t1"]


def test_dry_run_prints_the_cells_and_starts_nothing(store, capsys, no_ray):
    _, uri = store
    rc = main(["confirm", "src", "--tracking-uri", uri, "--top", "2", "--seeds", "3", "--baseline", "pi", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.splitlines()[0].startswith(f"store: {uri} (--tracking-uri)")  # the first line names the store
    assert "4 cells x 3 seeds" in out and "= 12 trials" in out and "pi baseline" in out and "dry run" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--baseline", "pii"], "--baseline 'pii' is not a distillation method"),
        (["--pareto"], "--pareto: sweep 'src' has one objective"),
        (["--set", "seeds=3"], "use --seeds N"),
    ],
)
def test_bad_confirm_arguments_are_one_line_errors(store, capsys, no_ray, args, message):
    _, uri = store
    assert main(["confirm", "src", "--tracking-uri", uri, "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as stop:  # argparse: usage line and one error line
        main(["confirm", "src", "--seeds", "0"])
    assert stop.value.code == 2 and "give a whole number from 1 to 1000" in capsys.readouterr().err


def test_an_unknown_sweep_an_ablation_and_a_sweep_without_its_spec_are_refused(store, capsys, no_ray):
    from mlflow import MlflowClient

    _, uri = store
    assert main(["confirm", "nope", "--tracking-uri", uri, "--dry-run"]) == 2
    assert "unknown sweep 'nope'" in capsys.readouterr().err
    assert main(["confirm", "abl", "--tracking-uri", uri, "--dry-run"]) == 2
    assert "'abl' is an ablation" in capsys.readouterr().err
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("xgd").experiment_id
    bare = client.create_run(exp, tags={T.KIND: T.SWEEP_RUN, T.SWEEP: "bare"}).info.run_id  # no sweep.yaml
    client.create_run(exp, tags={T.PARENT: bare, T.KIND: T.TRIAL_RUN, T.SWEEP: "bare", T.TRIAL_ID: "b0"})
    assert main(["confirm", "bare", "--tracking-uri", uri, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read its sweep.yaml artifact" in err[0]


def test_a_source_sweep_names_its_confirmations(store):
    from mlflow import MlflowClient

    from orchestrator.tracking import reader

    _, uri = store
    client = MlflowClient(uri)
    src = reader.find_sweep(client, "multi")
    assert C.confirmed_by(client, src) == []
    tags = {T.KIND: T.SWEEP_RUN, T.SWEEP: "multi-confirm", T.CONFIRM_SOURCE_RUN: src.parent.info.run_id}
    client.create_run(src.experiment_id, tags=tags)
    assert C.confirmed_by(client, src) == [
        "confirmed over fresh seeds by multi-confirm: python -m orchestrator report multi-confirm"
    ]
