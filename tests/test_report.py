"""`report`: trials read back from an MLflow store laid out as the sweep writes it (built here with
MlflowClient), paper-layout tables (mean +- std over seeds, best bold, second underlined), files,
plots, artifacts on the parent run, and one-line errors for empty/unknown sweeps and stores.

`build_store` is also used by test_export.py and test_ui.py.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.cli import main
from orchestrator.errors import UserError
from orchestrator.tracking import tags as T

CLASSES = ["background", "cable", "tower_lattice", "tower_tucohy", "tower_wooden"]  # the synthetic set's
BASE = {"pi": 0.60, "xgd": 0.66}  # final val_miou by method, + 0.02 * alpha + 0.01 * seed
LATENCY = {("pi", 0.5): 9.0, ("pi", 1.0): 8.0, ("xgd", 0.5): 12.0, ("xgd", 1.0): 11.0}


def final_miou(method: str, alpha: float, seed: int) -> float:
    return BASE[method] + 0.02 * alpha + 0.01 * seed


def held_out_miou(method: str, alpha: float, seed: int) -> float:
    """The held-out split's mIoU, reported once with the last epoch (as trainables.loop does)."""
    return final_miou(method, alpha, seed) - 0.04 + 0.03 * seed


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A real checkpoint as trainables.loop writes it: a tiny smp student, weights only."""
    from trainables.checkpoint import save
    from trainables.models import model_from_config

    torch.manual_seed(seed)
    cfg = {"arch": "deeplabv3plus", "encoder": "mobilenet_v2", "encoder_weights": None}
    model = model_from_config(cfg, len(CLASSES))
    state = {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model_cfg": cfg,
        "classes": list(CLASSES),
        "epoch": 2,
        "metrics": {"val_miou": 0.7},
        "input": {"crop": 64, "eval_size": None, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save(state, path)


def build_store(root: Path, sweep: str = "demo", checkpoints: bool = True) -> dict:
    """A sqlite MLflow store with one sweep: method {pi, xgd} x alpha {0.5, 1.0} x seeds {0, 1}
    (8 finished trials, 3 epochs each) plus one FAILED trial without metrics."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from orchestrator.spec.train import TrainSpec

    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=str((root / "artifacts").resolve()))
    parent = client.create_run(exp, run_name=sweep, tags={T.KIND: "sweep", T.SWEEP: sweep})
    pid = parent.info.run_id
    ckpt_dir = root / "ckpt" / "trial_best"
    teacher = root / "ckpt" / "teacher.pt"
    if checkpoints:
        write_checkpoint(ckpt_dir / "best.pt")  # a Ray checkpoint dir holding best.pt
        write_checkpoint(teacher, seed=1)
    trials = []
    i = 0
    for method in ("pi", "xgd"):
        for alpha in (0.5, 1.0):
            for seed in (0, 1):
                name = f"{sweep}_{method}_a{alpha}_s{seed}"
                spec = TrainSpec(
                    name=name,
                    seed=seed,
                    model={"encoder": "mobilenet_v2"},
                    teacher={"checkpoint": str(teacher)},
                    distill={"method": method, "alpha": alpha},
                ).model_dump()
                tags = {
                    T.PARENT: pid,
                    T.KIND: "trial",
                    T.SWEEP: sweep,
                    T.TRIAL_ID: f"t{i:03d}",
                    T.CHECKPOINT: str(ckpt_dir),
                }
                run = client.create_run(exp, run_name=name, tags=tags)
                rid, ts = run.info.run_id, int(time.time() * 1000)
                final = final_miou(method, alpha, seed)
                metrics = []
                for epoch, miou in enumerate((final - 0.05, final + 0.02, final)):
                    vals = {
                        "epoch": epoch,
                        "train_loss": 1.0 / (epoch + 1),
                        "val_miou": miou,
                        "val_pixel_acc": miou + 0.2,
                        "step_time_s": 0.1 + 0.05 * (method == "xgd"),
                        "saliency_time_s": 0.05 * (method == "xgd"),
                        **{f"val_iou_{c}": miou + 0.1 * (1 - k) for k, c in enumerate(CLASSES)},
                    }
                    metrics += [Metric(k, float(v), ts + epoch, epoch) for k, v in vals.items()]
                test = held_out_miou(method, alpha, seed)
                extras = {
                    "params": 4.379e6,
                    "gflops": 0.5 + 0.1 * (method == "xgd"),
                    "latency_ms": LATENCY[(method, alpha)] + 0.1 * seed,
                    "test_miou": test,
                    "test_pixel_acc": test + 0.2,
                    **{f"test_iou_{c}": test + 0.1 * (1 - k) for k, c in enumerate(CLASSES)},
                }
                metrics += [Metric(k, v, ts + 3, 2) for k, v in extras.items()]
                client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in _flat(spec).items()])
                client.set_terminated(rid, "FINISHED")
                trials.append(rid)
                i += 1
    failed = client.create_run(
        exp, run_name=f"{sweep}_failed", tags={T.PARENT: pid, T.KIND: "trial", T.SWEEP: sweep, T.TRIAL_ID: "t999"}
    )
    client.log_batch(
        failed.info.run_id,
        params=[Param("distill.method", "xgd"), Param("seed", "3")],
        tags=[RunTag("note", "crashed")],
    )
    client.set_terminated(failed.info.run_id, "FAILED")
    client.set_terminated(pid, "FINISHED")
    return {
        "uri": uri,
        "client": client,
        "parent": pid,
        "trials": trials,
        "failed": failed.info.run_id,
        "experiment_id": exp,
        "checkpoint": ckpt_dir,
    }


@pytest.fixture(scope="module")
def store(module_tmp):
    return build_store(module_tmp)


# ------------------------------------------------------------------ the trials table


def test_trials_table_reads_params_metrics_and_status(store):
    from orchestrator.tracking import reader

    sweep = reader.find_sweep(store["client"], "demo")
    t = reader.trials_table(store["client"], sweep)
    assert len(t) == 9 and set(t.column("status").to_pylist()) == {"FINISHED", "FAILED"}
    assert t.schema.field("params.distill.alpha").type == "double"
    assert t.schema.field("params.seed").type == "int64"
    row = {
        k: v[0]
        for k, v in t.filter(t.column("run_name").to_numpy(zero_copy_only=False) == "demo_xgd_a1.0_s1")
        .to_pydict()
        .items()
    }
    assert row["val_miou"] == pytest.approx(final_miou("xgd", 1.0, 1))  # the final value...
    assert row["best_val_miou"] == pytest.approx(final_miou("xgd", 1.0, 1) + 0.02)  # ...and the best epoch's
    assert row["val_iou_cable"] == pytest.approx(final_miou("xgd", 1.0, 1))
    assert row["gflops"] == pytest.approx(0.6) and row["wall_time_s"] >= 0
    counted = reader.done(t, "val_miou")
    assert len(counted) == 8 and "FAILED" not in counted.column("status").to_pylist()


def test_summary_grid_means_over_seeds_and_marks_best_and_second(store):
    from orchestrator.results import tables
    from orchestrator.tracking import reader

    t = reader.done(reader.trials_table(store["client"], reader.find_sweep(store["client"], "demo")), "val_miou")
    assert tables.factors(t) == ["params.distill.method", "params.distill.alpha"]  # seed, name excluded
    g = tables.build_grid(t, "summary")
    assert g.headers[:3] == ["method", "alpha", "val mIoU (%)"] and g.headers[-1] == "n"
    rows = {(r[1].text, r[0].text): r for r in g.rows}
    assert len(rows) == 4 and all(r[-1].text == "2" for r in g.rows)
    best, second = rows[("1", "xgd")][2], rows[("0.5", "xgd")][2]
    seeds = [100 * (final_miou("xgd", 1.0, s) + 0.02) for s in (0, 1)]  # the best-on-val epoch's (epoch 1)
    assert best.mean == pytest.approx(sum(seeds) / 2) and best.std == pytest.approx(math.sqrt(0.5))
    assert best.text == f"{best.mean:.2f} ± {best.std:.2f}"
    assert (best.rank, second.rank, rows[("1", "pi")][2].rank) == (1, 2, 0)
    latency = g.headers.index("latency (ms)")
    assert rows[("1", "pi")][latency].rank == 1  # lower is better for costs
    md, tex = tables.to_markdown(g), tables.to_latex(g)
    assert f"**{best.text}**" in md and f"<u>{second.text}</u>" in md
    assert "\\textbf{" + best.text.replace(" ± ", r" $\pm$ ") + "}" in tex and "\\underline{" in tex
    assert "mIoU (\\%)" in tex and "\\toprule" in tex
    per_class = tables.build_grid(t, "per_class")
    assert per_class.headers[2:] == [*CLASSES, "val mIoU (%, last epoch)", "n"]
    # the paper's figure, the held-out split's mIoU, sits next to val's; its own ranking
    assert g.headers[2:5] == ["val mIoU (%)", "test mIoU (%)", "val pixel acc (%, last epoch)"]
    held_out = {k: r[3] for k, r in rows.items()}
    assert held_out[("1", "xgd")].mean == pytest.approx(50 * sum(held_out_miou("xgd", 1.0, s) for s in (0, 1)))
    assert held_out[("1", "xgd")].rank == 1 and held_out[("0.5", "xgd")].rank == 2
    per_test = tables.build_grid(t, "per_class_test")
    assert per_test.title == "per-class IoU on the test split (%)"
    assert per_test.headers[2:] == [*CLASSES, "test mIoU (%)", "n"]
    cable = per_test.headers.index("cable")
    assert {(r[1].text, r[0].text): r[cable].mean for r in per_test.rows}[("0.5", "pi")] == pytest.approx(
        50 * sum(held_out_miou("pi", 0.5, s) for s in (0, 1))
    )


def test_pareto_front_and_safe_names():
    from orchestrator.results.pareto import pareto_front
    from orchestrator.tracking.reader import safe_join, safe_name

    pts = [(0.7, 10.0), (0.6, 5.0), (0.65, 12.0), (0.7, 11.0), (0.5, 5.0)]
    assert pareto_front(pts, ("max", "min")) == [0, 1]
    assert pareto_front([(0.3, 1.0), (0.2, 2.0)], ("min", "min")) == [0, 1]  # neither beats the other
    assert pareto_front([(0.3, 1.0), (0.2, 2.0)], ("max", "min")) == [0]
    assert pareto_front([(0.5, 1.0), (0.5, 1.0)], ("max", "min")) == [0, 1]  # equal points both stay
    for bad in ("../../etc", "/abs/path", "..", "a/../../b", ""):
        assert "/" not in safe_name(bad) and safe_name(bad) not in ("", ".", "..")
    assert safe_join("/tmp/root", "../../x").parent == Path("/tmp/root").resolve()


# ------------------------------------------------------------------ the command


@pytest.mark.slow
def test_report_command_writes_tables_plots_and_logs_them(store, tmp_path, capsys):
    out = tmp_path / "reports"
    rc = main(["report", "demo", "--tracking-uri", store["uri"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    d = out / "demo"
    trials = pq.read_table(d / "trials.parquet")
    assert len(trials) == 9 and "params.distill.alpha" in trials.column_names
    assert (d / "trials.csv").read_text().count("\n") == 10
    for layout in ("summary", "per_class", "per_class_test"):
        assert (d / f"{layout}.md").read_text().count("**") >= 2
        assert "\\textbf" in (d / f"{layout}.tex").read_text()
    for png in ("hyperparams", "pareto", "importances", "history", "parallel", "curves", "gallery_1"):
        assert (d / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    imp = (d / "importances.csv").read_text().splitlines()
    assert imp[0] == "trials,param,importance"
    assert [r.split(",")[1] for r in imp[1:]] == ["distill.method", "distill.alpha"]
    assert "val mIoU (%)" in printed and "test mIoU (%)" in printed and "xgd" in printed  # the rich tables
    assert "test_miou" in trials.column_names and "test_iou_cable" in trials.column_names
    logged = {f.path for f in store["client"].list_artifacts(store["parent"], "report")}
    assert {"report/summary.md", "report/summary.tex", "report/trials.parquet", "report/plots"} <= logged


def test_layouts_tag_on_parent_picks_tables(tmp_path, capsys):
    s = build_store(tmp_path, sweep="cams", checkpoints=False)
    s["client"].set_tag(s["parent"], T.LAYOUTS, "timing,nope")
    assert main(["report", "cams", "--tracking-uri", s["uri"], "--out", str(tmp_path / "r"), "--no-log"]) == 0
    out = capsys.readouterr().out
    assert "unknown layouts ['nope']" in out
    assert "no saliency gallery for cams_xgd_a1.0_s1" in out and "does not exist" in out  # no checkpoints here
    files = {p.name for p in (tmp_path / "r" / "cams").iterdir()}
    assert "timing.md" in files and "summary.md" not in files
    assert "CAM s / iter" in (tmp_path / "r" / "cams" / "timing.md").read_text()


def test_unknown_empty_and_missing_stores_fail_in_one_line(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    assert main(["report", "nope", "--tracking-uri", store["uri"], "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown sweep 'nope'" in err and "demo" in err

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    c = MlflowClient(uri)
    c.create_run(c.create_experiment("x"), run_name="empty", tags={T.KIND: "sweep", T.SWEEP: "empty"})
    capsys.readouterr()  # MLflow's own log lines from creating this store
    assert main(["report", "empty", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no trial runs" in err
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2  # every sweep: none reportable
    cap = capsys.readouterr()
    assert "skipped" in cap.out and "none of the 1 sweeps" in cap.err

    missing = tmp_path / "nowhere" / "mlflow.db"
    assert main(["report", "--tracking-uri", f"sqlite:///{missing}", "--out", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not missing.exists()


@pytest.mark.slow
def test_gallery_rebuilds_the_trial_and_draws_cams(store, tmp_path):
    from orchestrator.results import gallery
    from orchestrator.tracking import reader

    t = reader.done(reader.trials_table(store["client"], reader.find_sweep(store["client"], "demo")), "val_miou")
    row = t.to_pylist()[0]
    cfg = gallery.config_from_row(row)
    assert cfg["data"]["scale"] == (0.75, 1.5) and cfg["teacher"]["checkpoint"].endswith("teacher.pt")
    assert cfg["distill"]["weights"] == {} and cfg["run"]["max_steps_per_epoch"] is None
    from orchestrator.results.export import load_student

    student, state = load_student(store["checkpoint"] / "best.pt")
    x, y = gallery.samples(cfg["data"], state["classes"], 2)
    logits, maps = gallery.predict_with_cam(student, "decoder.block1", x, y, None, gallery.cam_config(cfg))
    assert logits.shape == (2, len(CLASSES), *x.shape[-2:]) and maps.shape == (2, *x.shape[-2:])
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 and float(maps.std()) > 0
    assert not any(p.grad is not None for p in student.parameters())
    png = gallery.gallery(row, tmp_path / "g.png", n=2)
    assert png.read_bytes()[:4] == b"\x89PNG"

    # UniCAM against a base model (here: another checkpoint of the same architecture)
    base, _ = load_student(store["checkpoint"].parent / "teacher.pt")
    x4, y4 = gallery.samples(cfg["data"], state["classes"], 4)
    maps = gallery.unicam_distilled(student, base, "decoder.block1", x4, y4, len(CLASSES))
    assert maps.shape == (4, *x4.shape[-2:]) and float(maps.min()) >= 0 and float(maps.max()) == pytest.approx(1.0)
    assert not any(p.grad is not None for p in [*student.parameters(), *base.parameters()])
    with pytest.raises(UserError, match="at least 4 images"):
        gallery.unicam_distilled(student, base, "decoder.block1", x, y, len(CLASSES))
    base_row = {**row, "checkpoint": str(store["checkpoint"].parent / "teacher.pt"), "run_name": "base"}
    wide = gallery.gallery(row, tmp_path / "u.png", n=4, base_row=base_row)

    def width(f):
        return int.from_bytes(f.read_bytes()[16:20], "big")  # PNG IHDR

    assert width(wide) > width(gallery.gallery(row, tmp_path / "n.png", n=4))  # one more column


def test_gallery_base_is_the_best_undistilled_trial_of_the_same_student():
    from orchestrator.results.report import _base_trial

    arch = {"params.model.arch": "deeplabv3plus", "params.model.encoder": "resnet18"}
    ranked = [
        {**arch, "params.distill.method": "xgd", "run_name": "a"},
        {**arch, "params.model.encoder": "mobilenet_v2", "params.distill.method": "none", "run_name": "b"},
        {**arch, "params.distill.method": "none", "run_name": "c"},
        {**arch, "params.distill.method": "none", "run_name": "d"},
    ]
    assert _base_trial(ranked[0], ranked)["run_name"] == "c"
    assert _base_trial(ranked[2], ranked) is None  # an undistilled trial has no base
    assert _base_trial({**ranked[0], "params.model.arch": "pspnet"}, ranked) is None


def test_cell_labels_name_rows_in_spec_order_and_stand_for_what_they_fix():
    """Table 2's cells: the label replaces the method/alpha/beta columns it fixes; a factor that
    still varies within a label (here tau) stays a column; rows follow the spec's label order."""
    import pyarrow as pa

    from orchestrator.results import tables

    labels = ["seg only", "seg + pi", "seg + sa", "all"]
    method = {"seg only": "none", "seg + pi": "xgd", "seg + sa": "xgd", "all": "xgd"}
    alpha = {"seg only": 1.0, "seg + pi": 1.0, "seg + sa": 0.0, "all": 1.0}
    rows = [(lab, tau, seed) for lab in labels for tau in (0.5, 1.0) for seed in (0, 1)]
    t = pa.table(
        {
            "params.label": [r[0] for r in rows],
            "params.distill.method": [method[r[0]] for r in rows],
            "params.distill.alpha": [alpha[r[0]] for r in rows],
            "params.distill.tau": [r[1] for r in rows],
            "params.seed": [r[2] for r in rows],
            "best_val_miou": [0.1 * (labels.index(r[0]) + 1) + 0.01 * r[1] + 0.001 * r[2] for r in rows],
        }
    )
    assert tables.row_factors(t) == ["params.label", "params.distill.tau"]
    g = tables.build_grid(t.take(list(reversed(range(len(t))))), "summary", labels)  # ran in any order
    assert g.headers[:3] == ["label", "tau", "val mIoU (%)"]
    assert [(r[0].text, r[1].text) for r in g.rows] == [(lab, tau) for lab in labels for tau in ("0.5", "1")]
    assert g.rows[-1][2].rank == 1 and g.rows[0][2].mean == pytest.approx(100 * (0.1 + 0.005 + 0.0005))
    unordered = tables.build_grid(t, "summary")  # no spec order known: by label text
    assert [r[0].text for r in unordered.rows[::2]] == sorted(labels)


# ------------------------------------------------------------------ stopped trials, inactive params, one student

SPACE_YAML = """
name: asha
space:
  student: {type: choice, values: [dlv3p_mbv2, pspnet_r18]}
  distill.method: {type: choice, values: [xgd, pi]}
  distill.alpha: {type: loguniform, low: 0.05, high: 2.0}
  distill.beta: {type: loguniform, low: 0.05, high: 2.0, when: {distill.method: xgd}}
"""
STUDENTS = {"dlv3p_mbv2": ("deeplabv3plus", "mobilenet_v2", 10.0), "pspnet_r18": ("pspnet", "resnet18", 20.0)}


def asha_rows() -> list[dict]:
    """8 trials that ran every epoch (val mIoU set by the method, the student and a little by
    alpha) and 4 that ASHA stopped: cheapest, highest partial mIoU and the largest alpha, so
    counting them would put them on the latency front and make alpha the important param."""
    rows = []
    for i in range(12):
        stopped = i >= 8
        student = ("dlv3p_mbv2", "pspnet_r18")[i % 2]
        method = ("xgd", "pi")[(i // 2) % 2]
        arch, encoder, latency = STUDENTS[student]
        alpha = 2.0 if stopped else 0.1 + 0.1 * i
        miou = 0.95 if stopped else 0.5 + 0.1 * (method == "xgd") + 0.03 * (student == "pspnet_r18") + 0.001 * i
        rows.append(
            {
                "run_id": f"r{i:02d}",
                "run_name": f"asha/t{i:02d}",
                "trial_id": f"t{i:02d}",
                "status": "KILLED" if stopped else "FINISHED",
                "state": "stopped" if stopped else "completed",
                "epochs_done": 1 + i % 2 if stopped else 4,
                "start_time_ms": 1000 + i,
                "params.seed": 0,
                "params.student": student,
                "params.model.arch": arch,
                "params.model.encoder": encoder,
                "params.distill.method": method,
                "params.distill.alpha": alpha,
                "params.distill.beta": 0.05 * (i + 1) if method == "xgd" else 1.0,  # PI: the trainer's default
                "params.distill.cam": "gradcam",
                "val_miou": miou,
                "latency_ms": 5.0 if stopped else latency + 0.1 * i,
            }
        )
    return rows


def test_stopped_trials_stay_out_of_importances_and_fronts_and_inactive_params_are_empty():
    import optuna
    import pyarrow as pa

    from orchestrator.results import plots, study, tables
    from orchestrator.tracking import reader

    space = study.space_from_text(SPACE_YAML)
    t = study.mask_inactive(pa.Table.from_pylist(asha_rows()), space)
    beta = dict(zip(t.column("params.distill.method").to_pylist(), t.column("params.distill.beta").to_pylist()))
    assert beta["pi"] is None and beta["xgd"] is not None  # PI has no beta, whatever its config held
    assert t.column("params.distill.cam").to_pylist() == ["gradcam"] * 12  # no `when:` in the space: kept

    counted, stopped = reader.completed(t, "val_miou"), reader.stopped(t)
    assert counted.column("trial_id").to_pylist() == [f"t{i:02d}" for i in range(8)]
    assert stopped.column("trial_id").to_pylist() == [f"t{i:02d}" for i in range(8, 12)]
    # one student column: arch and encoder are what the student's name says
    assert tables.factors(counted) == [
        "params.student",
        "params.distill.method",
        "params.distill.alpha",
        "params.distill.beta",
    ]

    keys = tables.factors(counted)
    st = study.study_from_table(counted, "val_miou", keys, True, space, 100.0, stopped)
    states = [tr.state for tr in st.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 8 and states.count(optuna.trial.TrialState.PRUNED) == 4
    assert all("distill.beta" not in tr.params for tr in st.trials if tr.params["distill.method"] == "pi")
    assert st.best_value == pytest.approx(100 * max(counted.column("val_miou").to_pylist()))
    imp = study.importances(st)
    assert set(imp) == {"student", "distill.method", "distill.alpha"}  # beta: only where it is active
    assert max(imp, key=imp.get) == "distill.method"
    with_stopped = study.importances(study.study_from_table(reader.done(t, "val_miou"), "val_miou", keys))
    assert max(with_stopped, key=with_stopped.get) == "distill.alpha"  # what counting them would say

    xgd = study.holds(counted, study.conditions(space)["distill.method=xgd"], space)
    assert set(xgd.column("params.distill.method").to_pylist()) == {"xgd"} and len(xgd) == 4
    assert "distill.beta" in study.importances(study.study_from_table(xgd, "val_miou", tables.factors(xgd)))

    front = [r["trial_id"] for r in plots.fronts(counted, "val_miou")["latency_ms"][1]]
    assert front and not set(front) & set(stopped.column("trial_id").to_pylist())
    assert "t08" in [r["trial_id"] for r in plots.fronts(reader.done(t), "val_miou")["latency_ms"][1]]

    g = tables.stopped_grid(stopped, tables.factors(reader.done(t)), "val_miou")
    assert g.headers[0] == "trial" and g.headers[-1] == "epochs" and "student" in g.headers
    assert [(r[0].text, r[-1].text) for r in g.rows] == [("t09", "2"), ("t11", "2"), ("t08", "1"), ("t10", "1")]
    beta_col = g.headers.index("beta")
    assert {r[0].text: r[beta_col].text for r in g.rows}["t10"] == "-"  # a stopped PI trial: no beta


def build_asha_store(root: Path) -> dict:
    """A store as an ASHA sweep writes it: the spec on the parent (sweep.yaml), trials tagged with
    how they ended and how many epochs they ran, val mIoU per epoch (`asha_rows`)."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    exp = client.create_experiment("xgd", artifact_location=str((root / "artifacts").resolve()))
    pid = client.create_run(exp, run_name="sweep:asha", tags={T.KIND: "sweep", T.SWEEP: "asha"}).info.run_id
    client.log_text(pid, SPACE_YAML, "sweep.yaml")
    ids = {}
    for r in asha_rows():
        tags = {T.PARENT: pid, T.KIND: "trial", T.SWEEP: "asha", T.TRIAL_ID: r["trial_id"], T.STATUS: r["state"]}
        run = client.create_run(exp, run_name=r["run_name"], tags={**tags, T.EPOCHS_DONE: str(r["epochs_done"])})
        ts = int(time.time() * 1000)
        curve = [r["val_miou"] - 0.02 * (r["epochs_done"] - 1 - e) for e in range(r["epochs_done"])]
        metrics = [Metric("val_miou", v, ts + e, e) for e, v in enumerate(curve)]
        metrics.append(Metric("latency_ms", r["latency_ms"], ts, r["epochs_done"] - 1))
        params = [Param(k.removeprefix("params."), str(v)) for k, v in r.items() if k.startswith("params.")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, r["status"])
        ids[r["trial_id"]] = run.info.run_id
    client.set_terminated(pid, "FINISHED")
    return {"uri": uri, "client": client, "parent": pid, "ids": ids}


@pytest.mark.slow
def test_report_shows_stopped_trials_apart_with_optuna_plots_and_curves(tmp_path, capsys):
    import pyarrow.csv as pcsv

    s = build_asha_store(tmp_path)
    out = tmp_path / "r"
    rc = main(["report", "asha", "--tracking-uri", s["uri"], "--out", str(out), "--no-log", "--gallery", "0"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    d = out / "asha"
    assert "4 trials stopped early" in printed
    summary = pcsv.read_csv(d / "summary.csv")
    assert summary.column_names[:4] == ["student", "method", "alpha", "beta"]  # one student column
    assert sum(int(n) for n in summary.column("n").to_pylist()) == 8  # the completed trials only
    stopped = (d / "stopped.md").read_text()
    assert all(f"| t{i:02d} |" in stopped for i in range(8, 12)) and "| epochs |" in stopped
    trials = pq.read_table(d / "trials.parquet")
    beta = dict(zip(trials.column("trial_id").to_pylist(), trials.column("params.distill.beta").to_pylist()))
    assert beta["t02"] is None and beta["t00"] == pytest.approx(0.05)  # t02 is PI
    imp = pcsv.read_csv(d / "importances.csv").to_pylist()
    overall = {r["param"]: r["importance"] for r in imp if r["trials"] == "all"}
    assert max(overall, key=overall.get) == "distill.method" and "distill.beta" not in overall
    assert {r["param"] for r in imp if r["trials"] == "distill.method=xgd"} >= {"distill.beta", "distill.alpha"}
    pareto = pcsv.read_csv(d / "pareto.csv")
    assert pareto.num_rows and not set(pareto.column("trial_id").to_pylist()) & {"t08", "t09", "t10", "t11"}
    for png in (
        "history",
        "parallel",
        "curves",
        "hyperparams",
        "importances",
        "importances_distill.method=xgd",
        "pareto",
    ):
        assert (d / "plots" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report_md = (d / "report.md").read_text()
    assert "8 of 12 trials counted" in report_md and "![curves](plots/curves.png)" in report_md


def test_settings_a_method_never_reads_are_empty_without_a_space():
    """An ablation or confirmation has no `when:`: a PI cell holds train:'s beta and CAM, a `none` cell
    its alpha and tau; none of them is a setting of that method, so the report shows them empty."""
    import pyarrow as pa

    from orchestrator.results import study

    rows = [
        {"params.distill.method": m, "params.distill.alpha": 0.5, "params.distill.tau": 2.0}
        | {"params.distill.beta": 1.0, "params.distill.cam": "gradcam"}
        for m in ("pi", "xgd", "none", "skd", "at", "my_own")
    ]
    t = study.mask_unused(pa.Table.from_pylist(rows))
    got = {r["params.distill.method"]: r for r in t.to_pylist()}
    assert got["pi"]["params.distill.beta"] is None and got["pi"]["params.distill.cam"] is None
    assert got["pi"]["params.distill.alpha"] == 0.5 and got["pi"]["params.distill.tau"] == 2.0
    assert got["xgd"] == rows[1]  # XGD reads all four
    assert got["none"]["params.distill.alpha"] is None and got["none"]["params.distill.beta"] is None
    assert got["skd"]["params.distill.alpha"] == 0.5 and got["skd"]["params.distill.cam"] is None  # SKD has PI
    assert got["at"]["params.distill.tau"] is None
    assert got["my_own"] == rows[5]  # a method the registry does not know: left as logged
    assert study.mask_unused(pa.Table.from_pylist([{"params.student": "a"}])).num_rows == 1  # no method column
