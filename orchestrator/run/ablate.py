"""An ablation, ready to run: its spec (orchestrator.spec.ablation) checked against the report's
layouts (orchestrator.results.tables), and its dry run. It runs as a grid sweep (orchestrator.run.sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.results.tables import LAYOUTS
from orchestrator.run.dry_run import render as render_sweep
from orchestrator.spec import space as S
from orchestrator.spec.ablation import Ablation, apply_ablation_overrides, parse_ablation_spec
from orchestrator.spec.load import read_yaml


def load_ablation(path: str | Path, overrides: list[str] | None = None) -> Ablation:
    return parse_ablation(apply_ablation_overrides(read_yaml(path), overrides or []))


def parse_ablation(raw: dict[str, Any]) -> Ablation:
    return parse_ablation_spec(raw, LAYOUTS)


def render(ab: Ablation):
    """The cells, seeds and the sweep's resources/teacher/storage; starts nothing."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    spec = ab.sweep
    points = ab.cell_points()
    keys = list(dict.fromkeys(k for p in points for k in p))
    base = spec.base_config()
    cells = Table()
    cells.add_column("#", justify="right")
    for k in keys:
        cells.add_column(k, overflow="fold")
    for i, p in enumerate(points):
        cells.add_row(
            str(i), *(escape(str(p[k])) if k in p else f"[dim]{escape(_base_value(base, k))}[/]" for k in keys)
        )
    title = Text(
        f"ablation {spec.name} ({ab.kind}): {len(points)} cells x {ab.seeds} seed(s) "
        f"(0..{ab.seeds - 1}, the trainer's seed) = {spec.num_samples} trials",
        style="bold",
    )
    notes = Text(f"dim: the value from train:, not set by the cell; report layouts: {', '.join(ab.layouts)}")
    info = render_sweep(spec).renderables[1]  # the sweep's objective/resources/teacher/storage rows
    students = {k: m.model_dump() for k, m in spec.students.items()}
    first = S.resolve(spec.base_config(), points[0], students)
    return Group(
        title,
        cells,
        notes,
        info,
        Text(f"first cell's trainer config: model {first['model']}, distill {first['distill']}", style="dim"),
        Text("dry run: nothing was started", style="bold green"),
    )


def _base_value(base: dict, key: str) -> str:
    if key == S.STUDENT:
        return "train.model"
    if key == S.LABEL:
        return "-"
    node: Any = base
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return str(node)
