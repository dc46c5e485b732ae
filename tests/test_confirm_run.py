"""`confirm SWEEP` end to end on Ray with the real trainer, tiny: a 2-trial sweep of 1 epoch, then
`confirm --top 1 --seeds 2 --baseline none` (4 trials; the PI baseline of a PI configuration would
be the configuration itself) linked to it in MLflow, `report` printing the confirmation table
(checked against the trials' metrics and scipy), and `--resume` running nothing twice.
The statistics and the plan alone: tests/test_confirm.py."""

import pytest
import yaml
from scipy import stats

from orchestrator.cli import main
from orchestrator.tracking import tags as T


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_confirm_reruns_the_best_and_a_baseline_and_report_prints_the_table(ray_cluster, tmp_path, capsys):
    """The real trainer, tiny: a 2-trial sweep of 1 epoch, then confirm --top 1 --seeds 2 --baseline none."""
    import pyarrow.csv as pcsv
    from mlflow import MlflowClient

    raw = {
        "name": "tiny",
        "results": str(tmp_path / "results"),
        "train": {
            "data": {
                "kind": "synthetic",
                "num_train": 4,
                "num_val": 2,
                "num_test": 2,
                "image_size": 64,
                "crop": 64,
                "batch_size": 4,
            },
            "model": {"encoder": "mobilenet_v2"},
            "distill": {"method": "pi"},
            "optim": {"epochs": 1},
            "run": {"device": "cpu", "max_steps_per_epoch": 1, "explain": False, "out_dir": str(tmp_path / "runs")},
        },
        "teacher": {
            "recipe": {
                "model": {"encoder": "resnet18"},
                "optim": {"epochs": 1},
                "run": {"device": "cpu", "max_steps_per_epoch": 1},
            }
        },
        "space": {"distill.alpha": {"type": "uniform", "low": 0.5, "high": 1.5}},
        "search": {"num_samples": 2},
        "early_stopping": {"kind": "none"},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_concurrent": 2},
    }
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(spec_path)]) == 0
    uri = f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve()}"
    capsys.readouterr()
    rc = main(["confirm", "tiny", "--tracking-uri", uri, "--top", "1", "--seeds", "2", "--baseline", "none"])
    assert rc == 0, capsys.readouterr()
    assert "report tiny-confirm" in capsys.readouterr().out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("xgd").experiment_id
    (source,) = client.search_runs([exp], T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: "tiny"}))
    (parent,) = client.search_runs([exp], T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: "tiny-confirm"}))
    tags = parent.data.tags
    assert tags[T.CONFIRM_SOURCE] == "tiny" and tags[T.CONFIRM_SOURCE_RUN] == source.info.run_id
    assert tags[T.TEACHER_HASH] == source.data.tags[T.TEACHER_HASH]  # the cached teacher, trained once
    assert len(list((tmp_path / "results" / "teachers").iterdir())) == 1
    seeds = [int(s) for s in tags[T.CONFIRM_SEEDS].split(",")]
    children = client.search_runs([exp], T.equals(T.PARENT, parent.info.run_id))
    cells = sorted((c.data.params["label"], int(c.data.params["seed"]), c.info.status) for c in children)
    assert cells == sorted((label, s, "FINISHED") for label in ("top 1", "none baseline (top 1)") for s in seeds)
    ran = client.search_runs([exp], T.equals(T.PARENT, source.info.run_id))
    top = max(r.data.metrics["val_miou"] for r in ran)
    best_alphas = {float(r.data.params["distill.alpha"]) for r in ran if r.data.metrics["val_miou"] == top}
    for c in children:  # top 1 is the source's best alpha (either, on a tie); none reads no alpha: train:'s (1.0)
        alpha = float(c.data.params["distill.alpha"])
        assert alpha in best_alphas if c.data.params["label"] == "top 1" else alpha == 1.0

    reports = tmp_path / "reports"
    rc = main(["report", "tiny-confirm", "--tracking-uri", uri, "--out", str(reports), "--gallery", "0", "--no-log"])
    shown = capsys.readouterr().out
    assert rc == 0 and "paired difference" in shown and "95% t-interval" in shown, shown
    test = {(c.data.params["label"], c.data.params["seed"]): c.data.metrics["test_miou"] for c in children}
    top1 = [test[("top 1", str(s))] for s in seeds]
    base = [test[("none baseline (top 1)", str(s))] for s in seeds]
    rows = {
        (r["cell"], r["metric"]): r for r in pcsv.read_csv(reports / "tiny-confirm" / "confirmation.csv").to_pylist()
    }
    assert rows[("top 1", "test_miou")]["mean"] == pytest.approx(100 * sum(top1) / 2)
    pairs = pcsv.read_csv(reports / "tiny-confirm" / "confirmation_paired.csv").to_pylist()
    (p,) = [r for r in pairs if r["metric"] == "test_miou"]
    if top1[0] - base[0] != top1[1] - base[1]:
        assert p["p_ttest"] == pytest.approx(stats.ttest_rel(top1, base).pvalue)
    for ext in ("md", "tex", "csv"):
        assert (reports / "tiny-confirm" / f"confirmation_paired.{ext}").is_file()

    # --resume: the same name draws the same seeds; the finished design is kept, nothing runs twice
    args = ["confirm", "tiny", "--tracking-uri", uri, "--top", "1", "--seeds", "2", "--baseline", "none"]
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # it exists: refused without --resume
    assert main([*args, "--resume"]) == 0
    (again,) = client.search_runs([exp], T.matching({T.KIND: T.SWEEP_RUN, T.SWEEP: "tiny-confirm"}))
    assert again.data.tags[T.CONFIRM_SEEDS] == tags[T.CONFIRM_SEEDS]
    assert len(client.search_runs([exp], T.equals(T.PARENT, parent.info.run_id))) == 4
