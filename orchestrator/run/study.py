"""The sweep's Optuna study, persisted, and the stages of a sweep that grows.

The study: one Optuna JournalStorage file per sweep, `<results>/optuna/<sweep>.log`, holding the
study named after the sweep. Ray Tune's OptunaSearch asks and tells through it in the driver, so
the study outlives the driver: optuna-dashboard browses it (`ui --optuna`), a resumed sweep's
restored searcher keeps writing to the same file, and a sweep that grows starts its sampler from
every trial told so far.

The stages: Tune cannot raise a restored experiment's num_samples, so `--resume --set
search.num_samples=N` on a sweep planned for fewer trials adds a Tune experiment `<sweep>~N` beside
the first (in the same storage path) that runs the missing trials with a searcher on the same
study. The planned totals, one per stage, are kept in the first experiment's folder
(`xgd_stages.json`), so a later `--resume` restores every stage in order (finished ones only
re-show their trials). Each stage's trials are children of the sweep's one MLflow parent run.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.run.storage import SPEC_FILE, read_text, write_text
from orchestrator.spec.paths import join
from orchestrator.spec.sweep import SweepSpec

STUDY_DIR = "optuna"  # under the results folder
STAGES_FILE = "xgd_stages.json"
STAGE_MARK = "~"  # not allowed in sweep names, so a stage's experiment never collides with a sweep


def study_path(results: str, sweep: str) -> Path:
    return Path(results) / STUDY_DIR / f"{sweep}.log"


def only_study(results: str) -> str:
    """The sweep of the one study under `results`, or a one-line error listing them."""
    from orchestrator.errors import UserError

    names = sorted(p.stem for p in (Path(results) / STUDY_DIR).glob("*.log"))
    if len(names) == 1:
        return names[0]
    found = f"studies: {', '.join(names)}" if names else f"no study under {Path(results) / STUDY_DIR}"
    raise UserError(f"ui --optuna: name the sweep ({found})")


def open_storage(path: Path):
    """The sweep's journal file (created on first write). Opened with the same file lock that
    optuna-dashboard uses for a journal file, so the two can share it."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def set_aside_stale(spec: SweepSpec, say) -> None:
    """A new sweep whose name has a study file left from a deleted sweep of that name: the file is
    renamed (kept, not deleted), so the new sweep's sampler does not start from someone else's trials."""
    path = study_path(spec.results, spec.name)
    if path.exists():
        kept = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(kept)
        say(f"an Optuna study of an earlier sweep named {spec.name!r} was kept as {kept}")


@dataclass(frozen=True)
class Stage:
    name: str  # the Tune experiment's name (a folder of the storage path)
    experiment_dir: str
    num_samples: int  # trials this stage runs
    total: int  # trials planned for the sweep once this stage is done


def planned_totals(spec: SweepSpec) -> list[int]:
    """The sweep's planned totals, one per stage; a sweep that never grew has one: its saved num_samples."""
    try:
        return [int(n) for n in json.loads(read_text(join(spec.experiment_dir, STAGES_FILE)))]
    except (OSError, ValueError, TypeError):
        pass
    try:
        return [SweepSpec.model_validate(json.loads(read_text(join(spec.experiment_dir, SPEC_FILE)))).num_samples]
    except (OSError, ValueError):
        return [spec.num_samples]


def record_totals(spec: SweepSpec, totals: list[int]) -> None:
    write_text(join(spec.experiment_dir, STAGES_FILE), json.dumps(totals))


def stages(spec: SweepSpec, totals: list[int]) -> list[Stage]:
    out, before = [], 0
    for i, total in enumerate(totals):
        name = spec.name if i == 0 else f"{spec.name}{STAGE_MARK}{total}"
        exp = spec.experiment_dir if i == 0 else join(spec.storage_path or "", name)
        out.append(Stage(name, exp, total - before, total))
        before = total
    return out


def grown(spec: SweepSpec) -> list[int]:
    """The planned totals after this run: the recorded ones, plus spec.num_samples when it is larger."""
    totals = planned_totals(spec)
    return totals + [spec.num_samples] if spec.num_samples > totals[-1] else totals


def finished_trials(storage_file: Path, sweep: str) -> int:
    """How many trials of the sweep's study are COMPLETE (0 when there is no study yet)."""
    import optuna

    if not storage_file.exists():
        return 0
    try:
        study = optuna.load_study(study_name=sweep, storage=open_storage(storage_file))
    except KeyError:
        return 0
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _load(storage_file: Path, spec: SweepSpec):
    import optuna

    directions = ["maximize" if o.mode == "max" else "minimize" for o in spec.objectives]
    return optuna.create_study(
        study_name=spec.name, storage=open_storage(storage_file), directions=directions, load_if_exists=True
    )


def enqueue_initial(spec: SweepSpec) -> int:
    """Put `search.initial_points` in the sweep's new study as waiting trials: Optuna's `ask` hands
    them out before its sampler proposes anything (Tune's points_to_evaluate is not used: it is
    ignored with a define-by-run space). Returns how many were enqueued."""
    points = spec.search.initial_points
    if not points:
        return 0
    study = _load(study_path(spec.results, spec.name), spec)
    for point in points:
        study.enqueue_trial(dict(point), skip_if_exists=True)
    return len(points)


def seed_study(spec: SweepSpec, rows, define) -> int:
    """A sweep grows but its study holds no trial (it started before studies were persisted here,
    or the file was lost): tell the study each ended trial of the earlier stages again, from the
    driver's view of them (sampled point, last report), so the new stage's sampler still starts
    from them. Each is enqueued with its point, asked (define-by-run sets the distributions) and
    told its objectives. Returns how many were told."""
    study = _load(study_path(spec.results, spec.name), spec)
    if study.trials:
        return 0
    told = 0
    for row in rows:
        values = [row.result.get(o.metric) for o in spec.objectives]
        if row.state not in ("completed", "stopped") or not all(isinstance(v, (int, float)) for v in values):
            continue
        study.enqueue_trial({k: v for k, v in row.point.items() if k in spec.space})
        trial = study.ask()
        define(trial)
        study.tell(trial, values if len(values) > 1 else values[0])
        told += 1
    return told


def fail_stale(spec: SweepSpec) -> list[int]:
    """After every stage ended: trials still RUNNING in the study were asked by a driver killed
    before Tune's next snapshot, and no restored searcher will tell them; mark them FAIL (as
    Optuna's own stale-trial check does), so the dashboard and the next stage's sampler see them
    as ended. Returns their numbers."""
    return [t.number for t in _fail_stale(spec)[1]]


def _fail_stale(spec: SweepSpec) -> tuple:
    """(the study or None when it has no file, its stale trials, now FAIL)."""
    import optuna

    path = study_path(spec.results, spec.name)
    if not path.exists():
        return None, []
    study = _load(path, spec)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study, stale


def rerun_stage(spec: SweepSpec, missing: int) -> Stage | None:
    """The sweep's stages ended with `missing` planned trials never run: a driver killed while
    Tune wrote its snapshot left a searcher state that counts trials the restored experiment does
    not hold (seen in CI: a grid point asked, then lost). Stale trials are failed (fail_stale); the
    points of up to `missing` of them are enqueued again, and the Stage returned runs them as one
    more Tune experiment. None when nothing is missing or no stale trial had its point set."""
    study, stale = _fail_stale(spec)
    stale = [t for t in stale if t.params]  # killed before its point was set: nothing to run
    if missing <= 0 or not stale:
        return None
    for t in stale[:missing]:
        study.enqueue_trial(dict(t.params))
    name = f"{spec.name}{STAGE_MARK}rerun-{time.strftime('%Y%m%d-%H%M%S')}"
    return Stage(name, join(spec.storage_path or "", name), min(missing, len(stale)), planned_totals(spec)[-1])


WARM_SOURCE = "xgd.warm_start_from"  # user attribute of a trial added from an earlier sweep: its name
WARM_TRIAL = "xgd.warm_start_trial"  # ... and that trial's number in the earlier sweep's study


@dataclass
class WarmStart:
    source: str
    added: int
    skipped: dict[str, int]  # why -> how many

    def line(self) -> str:
        text = f"warm start: {self.added} finished trial(s) of sweep {self.source!r} added to the study"
        if self.skipped:
            why = "; ".join(f"{n} {reason}" for reason, n in self.skipped.items())
            text += f"; {sum(self.skipped.values())} skipped ({why})"
        return text


def warm_source(spec: SweepSpec, objectives_of=None):
    """The earlier sweep's study `search.warm_start_from` names (None when it names none), or a
    one-line UserError: no such study here, or other objectives than this sweep's
    (`objectives_of(name)` gives its saved [(metric, mode)], None when unknown: then the study's
    directions must match). Checked before Ray starts."""
    import optuna

    from orchestrator.errors import UserError

    source = spec.search.warm_start_from
    if not source:
        return None
    path = study_path(spec.results, source)
    if not path.exists():
        names = sorted(p.stem for p in path.parent.glob("*.log")) if path.parent.is_dir() else []
        raise UserError(
            f"search.warm_start_from: no study of sweep {source!r} at {path}; "
            f"studies in {path.parent}: {', '.join(names) or 'none'}"
        )
    try:
        old = optuna.load_study(study_name=source, storage=open_storage(path))
    except KeyError:
        raise UserError(f"search.warm_start_from: {path} holds no study named {source!r}") from None
    ours = [(o.metric, o.mode) for o in spec.objectives]
    theirs = objectives_of(source) if objectives_of else None
    directions = ["max" if d == optuna.study.StudyDirection.MAXIMIZE else "min" for d in old.directions]
    if (theirs is not None and theirs != ours) or directions != [m for _, m in ours]:
        said = ", ".join(f"{m} {k}" for m, k in theirs) if theirs else f"directions {', '.join(directions)}"
        raise UserError(
            f"search.warm_start_from: sweep {source!r} optimised {said}, this one "
            f"{', '.join(f'{m} {k}' for m, k in ours)}; warm-start from a sweep with the same objectives"
        )
    return old


def warm_start(spec: SweepSpec, define, objectives_of=None) -> WarmStart | None:
    """`search.warm_start_from`: add the COMPLETE trials of an earlier sweep's study (in this results
    folder, checked by warm_source) to the new sweep's study, as finished trials with their values,
    so the sampler starts from what that sweep learned. A trial is skipped (and counted, by reason)
    when a parameter is not a key of the new space, is outside it or inactive there, or an active
    key of the new space is missing from it. Its distributions are the new space's (define-by-run on
    a FixedTrial), so the sampler sees one space."""
    import optuna

    from orchestrator.spec.samplers import CONSTRAINTS_ATTR, Feasibility, outside

    old = warm_source(spec, objectives_of)
    if old is None:
        return None
    source = spec.search.warm_start_from
    new = _load(study_path(spec.results, spec.name), spec)
    feasible = Feasibility.of(spec.constraints) if spec.constraints else None
    added, skipped = 0, {}
    for t in old.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        reason = outside(spec.space, t.params)
        fixed = optuna.trial.FixedTrial(t.params)
        if reason is None:
            try:
                define(fixed)
            except ValueError as e:  # an active key of the new space the old trial never drew
                key = re.search(r"parameter '([^']+)'", str(e))
                reason = f"{key.group(1) if key else '?'}: missing"
        if reason is not None:
            why = _why(reason)
            skipped[why] = skipped.get(why, 0) + 1
            continue
        system = {CONSTRAINTS_ATTR: tuple(feasible.values(t.user_attrs))} if feasible else {}
        new.add_trial(
            optuna.trial.create_trial(
                params={k: t.params[k] for k in fixed.distributions},
                distributions=fixed.distributions,
                values=t.values,
                user_attrs={**t.user_attrs, WARM_SOURCE: source, WARM_TRIAL: t.number},
                system_attrs=system,
            )
        )
        added += 1
    return WarmStart(source, added, skipped)


def _why(reason: str) -> str:
    """'<key>: <why ...>' (samplers.outside) -> a short count label."""
    key, _, why = reason.partition(":")
    for word, label in (
        ("not a key", "not in this space"),
        ("outside", "outside this space"),
        ("inactive", "inactive here"),
    ):
        if word in why:
            return f"{key} {label}"
    return f"{key} missing (a key of this space)"
