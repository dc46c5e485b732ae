"""Every MLflow tag the sweep writes and the report, export and UI read back: one name each.

The tags are the store's layout. Runs are found again by them, so a resumed sweep never creates
a second run or logs an epoch twice, and `report`/`export` need nothing but the store:
  parent run   KIND=sweep, SWEEP; the dataset, teacher and git commit; the best trial at the end;
               an ablation's LAYOUTS, ABLATION, SEEDS and LABELS (which tables `report` prints);
               a confirmation's CONFIRM_SOURCE, CONFIRM_SOURCE_RUN, CONFIRM_CELLS, CONFIRM_SEEDS
  child run    PARENT, KIND=trial, SWEEP, TRIAL_ID, STATUS, CHECKPOINT, ERROR, EPOCHS_DONE, FEASIBLE; HOST,
               RAY_NODE and DEVICE (where it ran)
  teacher run  KIND=teacher, TEACHER_HASH (a recipe the sweep trained), CHECKPOINT
  model version (export) SWEEP, RANK, SELECTION
"""

from __future__ import annotations

# per-epoch trial metrics of the frozen teacher, named where the trainer reports them; the parent
# run gets each summed over the sweep
from trainables.constants import TEACHER_COUNTS  # noqa: F401

PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a child under its parent
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own: the UI shows it as the source version

KIND = "xgd.kind"  # what a run is: one of the three below
SWEEP_RUN, TRIAL_RUN, TEACHER_RUN = "sweep", "trial", "teacher"
SWEEP = "xgd.sweep"  # the sweep's name
TRIAL_ID = "xgd.trial_id"  # Tune's trial id
STATUS = "xgd.status"  # running | completed | stopped | failed | interrupted | orphaned
ERROR = "xgd.error"  # why a trial failed, one line
EPOCHS_DONE = "xgd.epochs_done"
CHECKPOINT = "xgd.checkpoint"  # a trial's best.pt (or its checkpoint folder); a teacher's best.pt
TRIAL_DIR = "xgd.trial_dir"

GIT_COMMIT, GIT_DIRTY = "xgd.git_commit", "xgd.git_dirty"
DATASET, DATA_ROOT, CLASSES = "xgd.dataset", "xgd.data_root", "xgd.classes"
EXPERIMENT_DIR = "xgd.experiment_dir"  # the sweep's Tune experiment folder
RESULTS = "xgd.results"  # the sweep's results folder (its driver lock, pending MLflow writes)
TEACHER_CHECKPOINT, TEACHER_HASH, TEACHER_RUN_ID = "xgd.teacher_checkpoint", "xgd.teacher_hash", "xgd.teacher_run"
BEST_TRIAL_ID, BEST_RUN_ID = "xgd.best_trial_id", "xgd.best_run_id"
BEST_CHECKPOINT, BEST_PARAMS = "xgd.best_checkpoint", "xgd.best_params"
PARETO_TRIALS = "xgd.pareto_trials"  # on the parent: the front's trial ids, comma-separated
PARETO = "xgd.pareto"  # on a trial of the front: "true"
# the driver running the sweep now ("host pid started"), and a stop asked of it by `stop SWEEP`
# ("who at when"): the driver polls its parent run for it, from any shell that sees the store
DRIVER, STOP_REQUESTED = "xgd.driver", "xgd.stop_requested"
STOP_REASON = "xgd.stop_reason"  # on the parent: why the sweep stopped before its last trial (a budget, `stop`)
CONSTRAINTS = "xgd.constraints"  # on the parent: the spec's constraints, e.g. "latency_ms <= 15; params <= 2e+07"
FEASIBLE = "xgd.feasible"  # on a trial of a sweep with constraints: "true" | "false" (its last result)
LEAKED_PGS_RELEASED = "xgd.leaked_pgs_released"  # placement groups the reaper had to remove
# where a trial ran, as its trainer reports it (trainables.setup.placement): result key -> tag
HOST, RAY_NODE, DEVICE = "xgd.host", "xgd.ray_node", "xgd.device"
PLACEMENT = {"host": HOST, "ray_node": RAY_NODE, "device": DEVICE}

LAYOUTS = "xgd.layouts"  # report tables, comma-separated (orchestrator.results.tables.LAYOUTS)
ABLATION = "xgd.ablation"  # factorial | cells
SEEDS = "xgd.seeds"
LABELS = "xgd.labels"  # listed cells' labels in spec order, a JSON list
# a confirmation (`confirm SWEEP`, orchestrator.run.confirm): an ablation that reruns a sweep's best
CONFIRM_SOURCE = "xgd.confirm.source"  # the source sweep's name
CONFIRM_SOURCE_RUN = "xgd.confirm.source_run"  # the source sweep's parent run id
CONFIRM_CELLS = "xgd.confirm.cells"  # JSON list of {label, role: config|baseline, trial, value, point}
CONFIRM_SEEDS = "xgd.confirm.seeds"  # the trainer seeds every cell ran, comma-separated
# a comparison (`compare SPEC`, orchestrator.run.compare): its own run (KIND=compare) is the MLflow
# parent of one sweep per method and of the confirmation of their best; each of those carries COMPARE
COMPARE_RUN = "compare"
COMPARE = "xgd.compare"  # the comparison's name
COMPARE_METHODS = "xgd.compare.methods"  # comma-separated, in the order given
COMPARE_BUDGET = "xgd.compare.budget"  # iterations | time
COMPARE_STAGES = "xgd.compare.stages"  # JSON {method: its sweep's name}
COMPARE_EPOCHS = "xgd.compare.epochs"  # JSON {method: epochs per trial}
COMPARE_COSTS = "xgd.compare.costs"  # JSON {method: measured seconds per step} (time budget)
COMPARE_CONFIRMATION = "xgd.compare.confirmation"  # the confirmation's name

RANK, SELECTION = "xgd.rank", "xgd.selection"  # on an exported model version


def quote(value: str) -> str:
    """A string literal for an MLflow filter."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def equals(tag: str, value: str) -> str:
    """The MLflow filter clause `tag = value`."""
    return f"tags.`{tag}` = {quote(value)}"


def matching(tags: dict[str, str]) -> str:
    """The MLflow filter for runs carrying every tag = value of `tags`."""
    return " and ".join(equals(k, v) for k, v in tags.items())
