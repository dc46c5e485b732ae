"""`compare SPEC`: every method searched with the same budget, then each method's best confirmed on
the same fresh seeds and judged on test ([CompKD], [CanonKD]).

Stages, each an ordinary sweep (orchestrator.run.sweep) the store and Tune know by name:
  1. one sweep per method, `<name>-<method>` (orchestrator.spec.compare.method_raw: the spec with
     the method fixed and the space cut to the keys it reads), the same trials, epochs (or, with
     the `time` budget, the same trainer seconds), early stopping and sampler seed;
  2. `<name>-confirm`: the best finished trial of each method as one cell each, every cell on the
     same fresh seeds (orchestrator.run.confirm_design), each method paired with every method
     listed before it (later minus earlier: list the baselines first).
A compare run (KIND=compare) is the MLflow parent of the stages' parent runs. Re-running with
`--resume` continues whichever stage stopped and starts the ones not begun; the `time` budget's
measured step costs are kept on the compare run, so a resumed comparison keeps its epochs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UserError
from orchestrator.results.confirm import CONFIG
from orchestrator.run.confirm import point_of, rank
from orchestrator.run.confirm_design import METHOD, Pick, confirmation_ablation
from orchestrator.spec import compare as C
from orchestrator.spec import space as S
from orchestrator.spec.sweep import SweepSpec, parse_sweep_spec
from orchestrator.tracking import tags as T

EPOCHS = "optim.epochs"


@dataclass
class Compare:
    name: str
    raw: dict[str, Any]  # the sweep spec it starts from (overrides applied), without `compare`
    methods: list[str]
    budget: str
    seeds: int
    cost_iters: int = 6
    costs: dict[str, float] = field(default_factory=dict)  # seconds per step (time budget)
    epochs: dict[str, int] = field(default_factory=dict)

    @property
    def confirmation(self) -> str:
        return f"{self.name}-{C.CONFIRM}"

    def stage(self, method: str) -> str:
        return C.stage_name(self.name, method)

    def tags(self, method: str | None = None) -> dict[str, str]:
        return {T.COMPARE: self.name, **({T.COMPARE_METHODS: method} if method else {})}

    def method_spec(self, method: str, uri: str) -> SweepSpec:
        epochs = self.epochs.get(method) if self.budget == "time" else None
        raw = C.method_raw(self.raw, method, self.stage(method), epochs, self.tags(method))
        raw["mlflow"] = {**(raw.get("mlflow") or {}), "tracking_uri": uri}
        return parse_sweep_spec(raw)


def plan_compare(raw: dict[str, Any], methods: list[str] | None, budget: str | None, seeds: int | None) -> Compare:
    """The comparison a spec (and the flags, which win over its `compare:` block) describes."""
    from orchestrator.spec.load import validate

    block = validate(C.CompareSpec, raw.get("compare") or {}, "compare.")
    chosen = validate(
        C.CompareSpec,
        {
            "methods": methods or block.methods,
            "budget": budget or block.budget,
            "seeds": seeds or block.seeds,
            "cost_iters": block.cost_iters,
        },
        "compare.",
    )
    C.check_methods(chosen.methods)
    base = {k: v for k, v in raw.items() if k != "compare"}
    spec = parse_sweep_spec(base)  # the spec itself must be valid
    name = f"{spec.name}-compare"
    cmp = Compare(name, base, chosen.methods, chosen.budget, chosen.seeds, chosen.cost_iters)
    for m in cmp.methods:  # each stage must be a valid sweep too (one-line errors before Ray)
        parse_sweep_spec(C.method_raw(base, m, cmp.stage(m), None, {}))
    return cmp


# ------------------------------------------------------------------ the compare run


def compare_run(client, cmp: Compare, experiment: str) -> str:
    """The comparison's own MLflow run (found again by its tags), with what it compares."""
    runs = client.search_runs(
        [_experiment_id(client, experiment)],
        T.matching({T.KIND: T.COMPARE_RUN, T.COMPARE: cmp.name}),
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    run = client.create_run(_experiment_id(client, experiment), run_name=cmp.name, tags=_run_tags(cmp))
    return run.info.run_id


def _run_tags(cmp: Compare) -> dict[str, str]:
    return {
        T.KIND: T.COMPARE_RUN,
        T.COMPARE: cmp.name,
        T.COMPARE_METHODS: ",".join(cmp.methods),
        T.COMPARE_BUDGET: cmp.budget,
        T.COMPARE_STAGES: json.dumps({m: cmp.stage(m) for m in cmp.methods}),
        T.COMPARE_CONFIRMATION: cmp.confirmation,
    }


def _experiment_id(client, name: str) -> str:
    from orchestrator.tracking.store import artifact_root

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root(client.tracking_uri))


def open_client(uri: str):
    """An MlflowClient on the comparison's store, created (as a sweep would) when it is a new SQLite file."""
    from orchestrator.tracking.store import check_reachable, open_client, sqlite_path

    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    check_reachable(uri)
    return open_client(uri)


def saved_costs(client, run_id: str) -> dict[str, float]:
    text = client.get_run(run_id).data.tags.get(T.COMPARE_COSTS)
    return json.loads(text) if text else {}


def adopt(client, compare_id: str, sweep_name: str) -> None:
    """Nest a stage's parent run under the compare run (the MLflow UI shows them as its children)."""
    from orchestrator.tracking import reader

    try:
        parent = reader.find_sweep(client, sweep_name).parent
    except UserError:
        return
    if parent.data.tags.get(T.PARENT) != compare_id:
        client.set_tag(parent.info.run_id, T.PARENT, compare_id)


# ------------------------------------------------------------------ the confirmation


def best_picks(client, cmp: Compare, specs: dict[str, SweepSpec]) -> list[Pick]:
    """Each method's best trial that ran every epoch (by the spec's first objective) as a cell
    labelled by the method; a method whose sweep finished no trial stops the comparison."""
    from orchestrator.tracking import reader

    picks = []
    for m in cmp.methods:
        spec = specs[m]
        sweep = reader.find_sweep(client, spec.name)
        objectives = [o.model_dump() for o in spec.objectives]
        rows = rank(reader.trials_table(client, sweep).to_pylist(), objectives, 1, False)
        if not rows:
            raise UserError(
                f"compare: sweep {spec.name!r} ({m}) has no trial that finished every epoch; "
                f"resume it (--resume) or give it more trials"
            )
        point = {**point_of(rows[0], spec.space), METHOD: m}
        if cmp.budget == "time":
            point[EPOCHS] = cmp.epochs[m]
        point.pop(S.LABEL, None)
        metric = objectives[0]["metric"]
        picks.append(Pick(m, CONFIG, point, rows[0].get("trial_id"), rows[0].get(metric)))
    return picks


def pairs_of(methods: list[str]) -> list[tuple[str, str]]:
    """Every method against every method listed before it (later minus earlier)."""
    return [(b, a) for i, a in enumerate(methods) for b in methods[i + 1 :]]


def confirmation(cmp: Compare, picks: list[Pick], uri: str, overrides: list[str]):
    seed = int((cmp.raw.get("train") or {}).get("seed", 0))
    tags = {
        **cmp.tags(),
        T.COMPARE_BUDGET: cmp.budget,
        T.COMPARE_STAGES: json.dumps({m: cmp.stage(m) for m in cmp.methods}),
        T.COMPARE_EPOCHS: json.dumps(cmp.epochs),
    }
    return confirmation_ablation(
        cmp.raw,
        cmp.confirmation,
        picks,
        pairs_of(cmp.methods),
        uri=uri,
        seeds=cmp.seeds,
        exclude={seed},
        overrides=overrides,
        tags=tags,
    )


# ------------------------------------------------------------------ dry run


def budget_line(cmp: Compare) -> str:
    if cmp.budget != "time":
        return f"budget: iterations (every method: the same trials, {next(iter(cmp.epochs.values()))} epochs each)"
    cheapest = min(cmp.costs.values())
    parts = [
        f"{m} {cmp.costs[m] * 1000:.0f} ms/step ({cmp.costs[m] / cheapest:.2f}x) -> {cmp.epochs[m]} epochs"
        for m in cmp.methods
    ]
    return "budget: time (the same trainer seconds per trial): " + "; ".join(parts)


def render(cmp: Compare, uri: str):
    """Each method's search (the keys it reads, trials, epochs), then the confirmation; starts nothing."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"compare {cmp.name}: {', '.join(cmp.methods)} ({cmp.budget} budget)", title_justify="left")
    for col in ("method", "sweep", "searched", "trials", "epochs", "early stopping"):
        table.add_column(col, overflow="fold")
    for m in cmp.methods:
        spec = cmp.method_spec(m, uri)
        searched = ", ".join(k for k in spec.space if k != METHOD) or "nothing (one trial)"
        epochs = "scaled by measured step cost" if cmp.budget == "time" else str(spec.max_epochs)
        es = spec.early_stopping
        stop = "none" if es.kind == "none" else f"{es.kind} (grace {es.grace_period}, factor {es.reduction_factor:g})"
        table.add_row(m, spec.name, escape(searched), str(spec.num_samples), epochs, stop)
    pairs = ", ".join(f"{a} - {b}" for a, b in pairs_of(cmp.methods))
    return Group(
        table,
        Text(
            f"then {cmp.confirmation}: each method's best finished trial on the same {cmp.seeds} fresh seeds, "
            f"every epoch, no early stopping; differences {pairs} on test (Holm over the {len(pairs_of(cmp.methods))} "
            "pairs), val as the selection split",
        ),
        Text("dry run: nothing was started", style="bold green"),
    )
