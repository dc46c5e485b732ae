"""Ship the best students of a sweep: pick trials from MLflow (top K by a metric, or the Pareto
front of metric against cost; select.py), rebuild each from its weights-only checkpoint and write
results/exports/<sweep>/<rank>/ (formats.py): model.safetensors, model.torchscript.pt, model.onnx
(checked against onnxruntime) and smp's layout (config.json + README.md beside model.safetensors,
loaded by `smp.from_pretrained(folder)`), then model_card.json / .md with the sha256 of each file
(card.py). Logging them to MLflow as models, registering them and the `champion` alias:
orchestrator.results.registry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from orchestrator.errors import UserError
from orchestrator.results.export.card import CARD_FILES, card_markdown, file_hashes, model_card, sha256, smp_readme
from orchestrator.results.export.formats import (
    ALIASES,
    FORMATS,
    ONNX_ATOL,
    SCRIPT_ATOL,
    SMP_ATOL,
    Skipped,
    _example,
    not_smp,
    parse_formats,
    write_onnx,
    write_safetensors,
    write_smp,
    write_torchscript,
)
from orchestrator.results.export.select import Choice, checkpoint_file, choose, load_student, selection
from orchestrator.results.figures import finished
from orchestrator.tracking import reader

__all__ = [
    "ALIASES",
    "FORMATS",
    "ONNX_ATOL",
    "SCRIPT_ATOL",
    "SMP_ATOL",
    "Choice",
    "Exported",
    "Skipped",
    "_example",
    "card_markdown",
    "checkpoint_file",
    "choose",
    "export_choice",
    "finished",
    "input_size",
    "load_student",
    "model_card",
    "not_smp",
    "parse_formats",
    "selection",
    "sha256",
    "write_onnx",
    "write_safetensors",
    "write_smp",
    "write_torchscript",
]


@dataclass
class Exported:
    rank: int
    dir: Path
    card: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # registered model name -> version
    model: nn.Module | None = field(default=None, repr=False)  # the student the files were written from


def input_size(state: dict, size: int | None) -> tuple[int, int]:
    inp = state.get("input") or {}
    s = size or inp.get("eval_size") or inp.get("crop") or 512
    if s % 16:
        raise UserError(f"input size {s} is not a multiple of 16 (the students' output stride)")
    return (int(s), int(s))


def export_choice(
    sweep: str,
    choice: Choice,
    out_root: Path,
    formats: list[str],
    selection: dict,
    tracking_uri: str,
    client=None,
    size: int | None = None,
) -> Exported:
    """Write one student's folder; a format that cannot express the student (smp's layout for a
    model smp cannot rebuild) is left out with one printed line and its reason in the card."""
    d = reader.safe_join(out_root, sweep, str(choice.rank))
    with tempfile.TemporaryDirectory() as scratch:
        model, state = load_student(checkpoint_file(choice.row, client, Path(scratch)))
    hw = input_size(state, size)
    if d.exists():  # a previous export of this rank: replaced, never mixed
        shutil.rmtree(d)
    d.mkdir(parents=True)
    checks = {}
    for name in formats:
        try:
            _, check = FORMATS[name](model, state, d, hw)
        except Skipped as why:
            print(f"rank {choice.rank}: format {name} skipped: {why}", flush=True)
            checks[f"{name}_skipped"] = str(why)
            continue
        checks.update(check)
    card = model_card(sweep, choice, state, model, hw, {}, checks, selection, tracking_uri)
    if (d / "config.json").is_file():  # smp's layout: its README.md card, with this export's provenance
        smp_readme(model, card, d)
    # every file written (ONNX external weights *.data included), the cards themselves excepted
    files = {p.name: p for p in sorted(d.iterdir()) if p.is_file() and p.name not in CARD_FILES}
    card["files"] = file_hashes(files)
    (d / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    (d / "model_card.md").write_text(card_markdown(card))
    return Exported(choice.rank, d, card, files, model=model)
