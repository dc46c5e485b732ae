"""The explanation metrics of a run come from its best-on-val weights (best.pt, the weights the test
split scores), not from the last epoch's."""

import json

import pytest
import torch

from test_loop import spec
from trainables import checkpoint, loop
from trainables.explain import explanation_metrics
from trainables.models import model_from_config
from trainables.setup import load_teacher, make_loaders


def test_explanation_metrics_come_from_the_best_on_val_weights(tmp_path, monkeypatch):
    teacher_cfg = spec(tmp_path, "teacher", optim__epochs=1)
    loop.train_loop(teacher_cfg)
    cfg = spec(
        tmp_path,
        "student",
        teacher={"checkpoint": str(tmp_path / "teacher" / "best.pt")},
        distill__cam_classes="all",
        optim__epochs=3,
    )
    scripted = iter([0.3, 0.8, 0.1])  # the val mIoU of epochs 0, 1, 2: epoch 1 is best, the last is worse
    real = loop.evaluate

    def evaluate(*args, **kw):
        out = real(*args, **kw)
        if kw.get("prefix", "val_") == "val_":
            out["val_miou"] = next(scripted)
        return out

    monkeypatch.setattr(loop, "evaluate", evaluate)
    final = loop.train_loop(cfg)
    d = tmp_path / "student"
    best, last = checkpoint.load(d / "best.pt"), checkpoint.load(d / "checkpoint.pt")
    assert best["epoch"] == 1 and last["epoch"] == 2 and final["best_val_miou"] == pytest.approx(0.8)

    device = torch.device("cpu")
    _, val_dl, classes = make_loaders(cfg, device, cfg["seed"])
    teacher = load_teacher(cfg["teacher"], classes, device)

    def expl(state):
        model = model_from_config(state["model_cfg"], len(classes))
        model.load_state_dict(state["model"])
        return explanation_metrics(model, teacher, val_dl, cfg["distill"])

    on_best, on_last = expl(best), expl(last)
    keys = [k for k in on_best if k.startswith("expl_") and not k.endswith("_n_dropped")]
    assert keys and all(final[k] == pytest.approx(on_best[k], abs=1e-9, nan_ok=True) for k in keys)
    assert any(abs(on_best[k] - on_last[k]) > 1e-6 for k in keys)  # the two weights explain differently
    logged = json.loads((d / "metrics.json").read_text())
    assert logged["expl_sal_spearman"] == pytest.approx(on_best["expl_sal_spearman"], abs=1e-9)
