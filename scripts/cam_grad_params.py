"""Which of the student's parameters does L_sa train? Backpropagates the saliency term alone
(trainables.saliency, through the trainer's own `build_trainer`: the CAM-path swaps of
trainables.cam_path, the spec's default student_layer) and prints, per module group, how many
parameter tensors get a non-zero gradient and the largest |gradient|, for each
distill.cam_bn_grad. Same batch and initial weights as `orchestrator bench` (synthetic scenes, random
weights, seed 0, the same dropout masks for each mode; teacher: the same architecture, other
random weights). A group is reported whole: "nonzero" counts its tensors whose gradient has a
non-zero entry (None, never reached, and an all-zero gradient both count as zero).

    .venv/bin/python scripts/cam_grad_params.py                  # dlv3p_r18 and pspnet_r18, 64 px, batch 4
    .venv/bin/python scripts/cam_grad_params.py --students pspnet_r18 --crop 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from orchestrator.bench.presets import STUDENTS, model_cfg
from orchestrator.bench.steps import BenchSettings, fixed_batch, variant_config
from trainables.batchnorm import CAM_BN_GRADS
from trainables.data import class_names
from trainables.losses import Step
from trainables.models import model_from_config
from trainables.step import build_trainer
from trainables.taps import tap


def group_of(name: str) -> str:
    """A parameter's module group: its first two path components (encoder.layer3, decoder.aspp, ...)."""
    return ".".join(name.split(".")[:2])


def saliency_grads(student_preset: str, mode: str, crop: int, batch: int, seed: int) -> tuple[str, dict]:
    """(CAM layer, {parameter name: gradient of L_sa alone or None})."""
    s = BenchSettings(student=student_preset, crop=crop, batch=batch, seed=seed, amp="off", channels_last=False)
    cfg = variant_config(s, "xgd_gradcam")
    cfg["distill"]["cam_bn_grad"] = mode
    torch.manual_seed(seed)  # the synthetic batch's augmentations draw from torch's generator
    x, y = fixed_batch(cfg)
    k = len(class_names(cfg["data"]))
    torch.manual_seed(seed + 1)
    teacher = model_from_config(model_cfg(student_preset, STUDENTS, "teacher"), k).eval().requires_grad_(False)
    torch.manual_seed(seed)
    student = model_from_config(cfg["model"], k)
    tr = build_trainer(cfg, student, teacher, x[:2], torch.device("cpu"), total_steps=1)
    (sa,) = [term for name, term, _ in tr.terms if name == "sa"]
    torch.manual_seed(seed)  # the same dropout masks for every cam_bn_grad
    with tap(student, tr.s_paths) as s_feats:
        s_logits = student(x)
    with tap(teacher, tr.t_paths) as t_feats, tap(teacher, tr.t_leaf, leaf=True) as t_leaves:
        t_logits = teacher(x)
    step = Step(x, y, s_logits, t_logits, s_feats, {**t_feats, **t_leaves}, dict(tr.extras.items()))
    student.zero_grad(set_to_none=True)
    sa.fn(step, tr.distill).backward()
    return tr.s_paths["cam"], {n: p.grad for n, p in student.named_parameters()}


def group_table(grads: dict) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "nonzero": 0, "max_abs": 0.0})
    for name, g in grads.items():
        row = out[group_of(name)]
        row["tensors"] += 1
        if g is not None and bool(g.abs().max() > 0):
            row["nonzero"] += 1
            row["max_abs"] = max(row["max_abs"], float(g.abs().max()))
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", default="dlv3p_r18,pspnet_r18", help=f"comma-separated: {', '.join(STUDENTS)}")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the tables here")
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    result = {}
    for preset in args.students.split(","):
        tables = {}
        for mode in CAM_BN_GRADS:
            layer, grads = saliency_grads(preset, mode, args.crop, args.batch, args.seed)
            tables[mode] = group_table(grads)
        result[preset] = {"student_layer": layer, **tables}
        print(f"\n{preset} (student_layer {layer}): parameter tensors with a non-zero L_sa gradient")
        print(f"{'group':24} {'tensors':>7} " + " ".join(f"{m + ' nonzero':>16} {'max|g|':>9}" for m in CAM_BN_GRADS))
        for group in tables[CAM_BN_GRADS[0]]:
            cells = " ".join(
                f"{tables[m][group]['nonzero']:>16} {tables[m][group]['max_abs']:>9.2e}" for m in CAM_BN_GRADS
            )
            print(f"{group:24} {tables[CAM_BN_GRADS[0]][group]['tensors']:>7} {cells}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
