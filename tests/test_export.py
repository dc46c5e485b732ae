"""`export`: choosing trials from MLflow, rebuilding students from weights-only checkpoints, writing
safetensors / TorchScript / ONNX that reproduce the model (ONNX checked with onnxruntime), a model
card with true sha256s, MLflow models (PyTorch and ONNX flavours) registered with the alias
`champion` that load with the same logits, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from orchestrator.cli import main
from orchestrator.tracking import tags as T
from test_report import CLASSES, build_store, final_miou


@pytest.fixture(scope="module")
def store(module_tmp):
    return build_store(module_tmp)


def _table(store, sweep="demo"):
    from orchestrator.tracking import reader

    return reader.trials_table(store["client"], reader.find_sweep(store["client"], sweep))


def test_choose_top_k_and_pareto(store):
    from orchestrator.results.export import choose

    t = _table(store)
    top = choose(t, "val_miou", top=3)
    assert [c.rank for c in top] == [1, 2, 3]
    names = [c.row["run_name"] for c in top]  # ranks 2 and 3 tie on val_miou (0.68)
    assert names[0] == "demo_xgd_a1.0_s1" and set(names[1:]) == {"demo_xgd_a0.5_s1", "demo_xgd_a1.0_s0"}
    assert choose(t, "val_miou", maximize=False, top=1)[0].row["run_name"] == "demo_pi_a0.5_s0"
    front = choose(t, "val_miou", pareto_cost="latency_ms")
    # latency = 8/9/11/12 ms by cell + 0.1 * seed; mIoU rises with seed: the front has 4 trials
    assert [c.row["run_name"] for c in front] == [
        "demo_xgd_a1.0_s1",
        "demo_xgd_a1.0_s0",
        "demo_pi_a1.0_s1",
        "demo_pi_a1.0_s0",
    ]
    assert front[0].row["val_miou"] == pytest.approx(final_miou("xgd", 1.0, 1))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_export_writes_loadable_checked_students_and_registers_them(store, tmp_path, capsys, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from trainables.checkpoint import load
    from trainables.models import model_from_config

    out = tmp_path / "exports"
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    rc = main(["export", "demo", "--tracking-uri", store["uri"], "--out", str(out), "--top", "1"])
    assert rc == 0, capsys.readouterr()
    # registering uses MLflow's fluent API, whose set_tracking_uri exports MLFLOW_TRACKING_URI: put back
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    d = out / "demo" / "1"
    card = json.loads((d / "model_card.json").read_text())
    # smp's save_pretrained layout (config.json, README.md) shares model.safetensors
    assert set(card["files"]) == {"model.safetensors", "model.torchscript.pt", "model.onnx", "config.json", "README.md"}
    for name, f in card["files"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == f["sha256"]
    assert card["source"]["run_name"] == "demo_xgd_a1.0_s1" and card["source"]["run_id"] in store["trials"]
    assert card["model"]["classes"] == CLASSES and card["model"]["encoder"] == "mobilenet_v2"
    assert card["input"]["shape"] == [1, 3, 64, 64] and card["input"]["mean"] == [0.485, 0.456, 0.406]
    assert card["metrics"]["val_miou"] == pytest.approx(0.7)  # the exported best.pt's own, not MLflow's last
    assert card["metrics"]["best_val_miou"] == pytest.approx(final_miou("xgd", 1.0, 1) + 0.02)
    assert card["cost"]["params"] == 4379000 and card["checks"]["onnx_max_abs_diff"] <= 1e-3
    md = (d / "model_card.md").read_text()
    assert card["files"]["model.onnx"]["sha256"] in md and "ImageNet" in md

    # every format reproduces the checkpoint's model
    ref = load(store["checkpoint"] / "best.pt")
    model = model_from_config({**ref["model_cfg"]}, len(CLASSES)).eval()
    model.load_state_dict(ref["model"])
    x = torch.randn(2, 3, 96, 64)  # not the export size: dynamic height/width
    with torch.no_grad():
        want = model(x)
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            meta = f.metadata()
        student = model_from_config(json.loads(meta["model_cfg"]), len(json.loads(meta["classes"]))).eval()
        student.load_state_dict(load_file(str(d / "model.safetensors")))
        assert torch.equal(student(x), want)
        assert torch.allclose(torch.jit.load(str(d / "model.torchscript.pt"))(x), want, atol=1e-5)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    assert (got - want).abs().max() < 1e-3

    # smp.from_pretrained(folder) in a process that cannot import this project gets the same logits
    got = _smp_logits_without_this_project(d, x, tmp_path / "smp_check")
    assert (got - want).abs().max() <= 1e-5  # same weights, same ops, same CPU: SMP_ATOL
    config = json.loads((d / "config.json").read_text())
    assert config["_model_class"] == "DeepLabV3Plus" and config["encoder_name"] == "mobilenet_v2"
    assert config["classes"] == len(CLASSES) and config["encoder_weights"] is None
    assert set(load_file(str(d / "model.safetensors"))) == set(model.state_dict())  # the student's own keys only
    readme = (d / "README.md").read_text()  # smp's card, with where the weights came from
    assert "smp.from_pretrained" in readme and "sweep `demo`, rank 1" in readme
    assert card["source"]["run_id"] in readme and '"best_val_miou"' in readme
    assert f"Dataset name: {card['config']['data.kind']}" in readme
    assert card["checks"]["smp_max_abs_diff"] <= 1e-5 and "Load with smp" in md

    # the files are logged to the trial's run; the student is an MLflow model (PyTorch flavour as
    # xgd-demo, ONNX as xgd-demo-onnx), registered from that run, rank 1 aliased champion
    import mlflow

    client, run_id = store["client"], card["source"]["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])  # the fluent API's store, undone after the test
    got = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/export/demo-rank1", dst_path=str(tmp_path / "dl"))
    assert json.loads((Path(got) / "model_card.json").read_text())["files"] == card["files"]
    for name in ("xgd-demo", "xgd-demo-onnx"):
        (version,) = client.search_model_versions(f"name='{name}'")
        assert version.run_id == run_id and str(client.get_model_version_by_alias(name, "champion").version) == "1"
    champion = mlflow.pytorch.load_model("models:/xgd-demo@champion").eval()
    with torch.no_grad():
        assert torch.equal(champion(x), want)  # the same logits as the exported student
    info = mlflow.models.get_model_info("models:/xgd-demo@champion")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]
    assert info.metadata["files_sha256"]["model.safetensors"] == card["files"]["model.safetensors"]["sha256"]
    onnx_champion = mlflow.pyfunc.load_model("models:/xgd-demo-onnx@champion")
    assert (torch.from_numpy(onnx_champion.predict(x.numpy())["logits"]) - want).abs().max() < 1e-3
    index = json.loads((out / "demo" / "index.json").read_text())
    assert index["exports"][0]["registered"] == {"xgd-demo": "1", "xgd-demo-onnx": "1"}


SMP_LOAD = """
import sys
sys.path += sys.argv[4:]  # the venv's site-packages, its .pth files (the editable install) not run
for name in ("orchestrator", "trainables"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable: the check would not show that smp alone loads the export")
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

model = smp.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    save_file({"logits": model(load_file(sys.argv[2])["x"])}, sys.argv[3])
"""


def _smp_logits_without_this_project(folder: Path, x: torch.Tensor, scratch: Path) -> torch.Tensor:
    """Logits of smp.from_pretrained(folder) from `python -I -S`: no current folder, no
    PYTHONPATH, no .pth files, so neither this repo nor its editable install is importable."""
    import subprocess
    import sys
    import sysconfig

    from safetensors.torch import load_file, save_file

    scratch.mkdir()
    save_file({"x": x.contiguous()}, str(scratch / "x.safetensors"))
    sites = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    args = [str(folder), str(scratch / "x.safetensors"), str(scratch / "y.safetensors"), *sites]
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", SMP_LOAD, *args], cwd=scratch, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(scratch / "y.safetensors"))["logits"]


def test_writers_check_their_output_and_fail_loudly(tmp_path, monkeypatch):
    from orchestrator.errors import UserError
    from orchestrator.results.export import formats as ex

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    state = {"model_cfg": {"arch": "x", "encoder": "y"}, "classes": ["a", "b"]}
    path, check = ex.write_onnx(tiny, state, tmp_path, (32, 32))
    assert path.is_file() and check["onnx_max_abs_diff"] <= ex.ONNX_ATOL
    monkeypatch.setattr(ex, "ONNX_ATOL", -1.0)  # any difference now exceeds the tolerance
    with pytest.raises(UserError, match="ONNX check failed.*max abs diff"):
        ex.write_onnx(tiny, state, tmp_path, (32, 32))
    assert not path.exists()  # a model that failed its check is not left to be shipped
    path, check = ex.write_torchscript(tiny, state, tmp_path, (32, 32))
    assert check["torchscript_max_abs_diff"] == 0.0
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        ex.parse_formats("pt,tflite")
    assert ex.parse_formats("pt, ts,onnx,pt") == ["safetensors", "torchscript", "onnx"]
    with pytest.raises(ex.Skipped, match="not an smp SegmentationModel"):
        ex.write_smp(tiny, state, tmp_path, (32, 32))
    assert not (tmp_path / "config.json").exists()


def test_the_smp_layout_holds_the_student_alone(tmp_path):
    """smp.from_pretrained loads strictly: a module beyond smp's model fails the check, one line."""
    import segmentation_models_pytorch as smp

    from orchestrator.errors import UserError
    from orchestrator.results.export import formats as ex

    state = {"model_cfg": {"arch": "unet", "encoder": "resnet18"}, "classes": ["a", "b"]}
    student = smp.Unet("resnet18", encoder_depth=3, encoder_weights=None, decoder_channels=(16, 8, 4), classes=2)
    student = student.eval()
    path, check = ex.write_smp(student, state, tmp_path, (32, 32))
    assert path.name == "config.json" and check == {"smp_max_abs_diff": 0.0, "smp_class": "Unet"}
    student.connector = nn.Conv2d(3, 3, 1)  # a training-only module left on the student
    with pytest.raises(UserError, match=r"smp.from_pretrained cannot load.*Unexpected key.*connector\.weight"):
        ex.write_smp(student, state, tmp_path, (32, 32))
    assert not path.exists()


@pytest.mark.slow
def test_a_student_smp_cannot_rebuild_is_exported_without_its_layout_and_says_why(tmp_path, capsys, monkeypatch):
    """A wrapper of an smp model (connectors kept on it, say) would load in smp as the bare model, or
    not at all: the smp layout is left out with one line, and the card records why."""
    import segmentation_models_pytorch as smp

    import orchestrator.results.export as ex
    from test_report import write_checkpoint

    class WithConnector(smp.DeepLabV3Plus):  # not a class smp.from_pretrained can name
        pass

    real = ex.load_student
    monkeypatch.setattr(
        ex, "load_student", lambda path: (WithConnector(encoder_name="resnet18", encoder_weights=None), real(path)[1])
    )
    ckpt = write_checkpoint(tmp_path / "ck" / "best.pt")
    uri = _one_trial_store(tmp_path / "s", "wrapped", checkpoint=str(ckpt))
    capsys.readouterr()
    rc = main(
        [
            "export",
            "wrapped",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "o"),
            "--format",
            "pt,smp",
            "--no-register",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert skipped == [
        "rank 1: format smp skipped: WithConnector is not a class smp exports (a subclass or wrapper of smp's model)"
    ]
    d = tmp_path / "o" / "wrapped" / "1"
    card = json.loads((d / "model_card.json").read_text())
    assert card["checks"]["smp_skipped"].startswith("WithConnector is not a class smp exports")
    assert set(card["files"]) == {"model.safetensors"} and not (d / "config.json").exists()


def _one_trial_store(root: Path, sweep: str, status: str = "FINISHED", checkpoint: str = "") -> str:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("x", artifact_location=str(root / "artifacts"))
    parent = c.create_run(exp, run_name=sweep, tags={T.KIND: "sweep", T.SWEEP: sweep})
    run = c.create_run(
        exp,
        run_name="trial_0",
        tags={T.PARENT: parent.info.run_id, T.KIND: "trial", T.SWEEP: sweep, T.CHECKPOINT: checkpoint},
    )
    if status in ("FINISHED", "KILLED"):  # KILLED: stopped early by ASHA, with a metric
        c.log_batch(run.info.run_id, metrics=[Metric("val_miou", 0.5, 0, 0)])
    c.set_terminated(run.info.run_id, status)
    return uri


@pytest.mark.slow
def test_no_finished_trial_bad_and_missing_checkpoints_fail_in_one_line(tmp_path, capsys):
    uri = _one_trial_store(tmp_path / "a", "failing", status="FAILED")
    capsys.readouterr()
    assert main(["export", "failing", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no trial that ran every epoch holds metric 'val_miou'" in err and "FAILED" in err

    # a trial ASHA stopped holds the metric but is a partly trained model: not exported
    uri = _one_trial_store(tmp_path / "k", "stopped", status="KILLED")
    capsys.readouterr()
    assert main(["export", "stopped", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ran every epoch" in err and "KILLED" in err

    uri = _one_trial_store(tmp_path / "b", "gone", checkpoint=str(tmp_path / "nope"))
    capsys.readouterr()
    assert main(["export", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2  # newest sweep
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint" in err and "does not exist" in err

    class Evil:  # a pickle that would run code: weights_only=True refuses it
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, bad)
    uri = _one_trial_store(tmp_path / "c", "evil", checkpoint=str(bad))
    capsys.readouterr()
    assert main(["export", "evil", "--tracking-uri", uri, "--out", str(tmp_path / "o")]) == 2
    cap = capsys.readouterr()
    assert "not a weights-only checkpoint" in cap.err and "pwned" not in cap.out


def test_sweep_names_cannot_escape_the_out_root(tmp_path):
    from test_report import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ck" / "best.pt")
    out = tmp_path / "deep" / "out"
    for i, name in enumerate(("../../escape", "/tmp/abs_sweep")):
        uri = _one_trial_store(tmp_path / f"s{i}", name, checkpoint=str(ckpt))
        rc = main(["export", name, "--tracking-uri", uri, "--out", str(out), "--format", "pt", "--no-register"])
        assert rc == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("model.safetensors"))
    assert written == ["deep/out/escape/1/model.safetensors", "deep/out/tmp_abs_sweep/1/model.safetensors"]
    assert not (tmp_path / "escape").exists() and not Path("/tmp/abs_sweep").exists()


@pytest.mark.slow
def test_pspnet_onnx_falls_back_to_a_fixed_size_quietly(tmp_path, capfd):
    """PSPNet's pyramid pools to fixed grids: no dynamic H/W, and at 64x64 (an 8x8 feature map that
    6 does not divide) only the dynamo exporter works. The failed attempts print whole graphs from
    C++ and the dynamo exporter its progress: none of that may reach the terminal."""
    import onnx

    from orchestrator.results import export as ex
    from trainables.models import create_model

    model = create_model("pspnet", "resnet18", classes=3).eval()
    path, check = ex.write_onnx(model, model.state_dict(), tmp_path, (64, 64))
    out = capfd.readouterr()
    assert path.is_file() and check["onnx_dynamic_size"] is False and check["onnx_max_abs_diff"] <= ex.ONNX_ATOL
    assert onnx.load(str(path), load_external_data=False).opset_import[0].version == check["onnx_opset"]
    assert "graph" not in out.out + out.err and "Traceback" not in out.err, (out.out + out.err)[-2000:]


def test_export_refuses_to_pick_students_by_a_test_metric(tmp_path, capsys):
    from orchestrator.cli import main

    rc = main(["export", "demo", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--metric", "test_miou"])
    err = capsys.readouterr().err
    assert rc != 0 and "held-out test split" in err and "val_miou" in err
    assert not (tmp_path / "none.db").exists()  # refused before the store is opened
