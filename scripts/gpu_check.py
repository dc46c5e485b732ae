"""`make gpu-check`: what the project does on CUDA, in one run, with the project's own commands.

Each step runs `python -m orchestrator ...` as a user would, logs it under
`results/gpu-check/<timestamp>/<step>.log`, and has its figures read back from what the command
wrote (the bench's JSON, the sweep's MLflow runs):

- bench-eager: `bench --device cuda` (every variant, the cached-teacher ones (`@cache`: the teacher's
  outputs from a warm teacher-output cache) included; crop 512, batch 8 by default, no orchestration sweeps);
- bench-compile: the same with `--compile`, for PI, XGD(GradCAM) and XGD(GradCAM) with a warm cache;
- shared-gpu: a 4-trial sweep of search_spaces/quickstart.yaml on CUDA with
  `resources.gpus_per_worker: 0.5`, so two trials share one GPU; all 4 must finish and two must
  have run at the same time on the same GPU, and each must have logged its peak GPU memory and
  mean GPU utilisation (peak_mem_mb, gpu_util_pct);
- ddp-nccl: one Ray Train trial of 2 workers with one GPU each (NCCL), when 2 GPUs are visible;
- oom: two trials one at a time of a DeepLabV3+ ResNet-152 student in fp32, batch 48, crop 64 and
  crop 1280. The second cannot fit: its saved activations come to about 311 GB (measured on the
  CPU at 128 px and scaled by the pixel count), over twice an H200's 141 GB, while its largest
  activation stays at 0.7 x 2^31 elements (so no 32-bit index limit trips first). It must fail
  alone, with the project's out-of-memory hint (orchestrator.run.failures), and the other must finish.

It writes one JSON, `results/gpu-check/<timestamp>.json` (each step: command, rc, seconds,
figures, what was wrong), and prints a summary table. Without CUDA it refuses in one line (exit 2).

    .venv/bin/python scripts/gpu_check.py              # make gpu-check
    .venv/bin/python scripts/gpu_check.py --plan       # print the commands; needs no GPU
    .venv/bin/python scripts/gpu_check.py --only bench-eager,oom --crop 256 --batch 4
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.run.failures import FATAL

ROOT = Path(__file__).resolve().parents[1]
SPEC = "search_spaces/quickstart.yaml"
OOM_CROP, OOM_BATCH, OOM_ENCODER = 1280, 48, "resnet152"  # see the module doc; 48 = the quickstart's num_train
OOM_HINT = FATAL["OutOfMemoryError"]


def sets(*overrides: str) -> list[str]:
    return [x for kv in overrides for x in ("--set", kv)]


ON_CUDA = sets("train.run.device=cuda", "teacher.recipe.run.device=cuda")
SHORT = sets("train.optim.epochs=2", "early_stopping.kind=none")


@dataclass
class Step:
    name: str
    argv: list[str]  # after `python -m orchestrator`
    expect: str  # what must hold, in words
    figures: Callable[[Step], dict] = field(repr=False)
    check: Callable[[dict], str] = field(repr=False)  # "" when the figures are as expected
    skip: str = ""  # why the step does not run on this machine

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "orchestrator", *self.argv])


@dataclass
class Outcome:
    step: str
    command: str
    expect: str
    rc: int | None
    seconds: float
    figures: dict
    status: str  # ok | failed | skipped
    problem: str = ""  # what was wrong (or why skipped)
    log: str = ""


# ------------------------------------------------------------------ reading back what a step wrote


def oom_failure(error: str | None) -> bool:
    """Whether a trial's error line is CUDA out-of-memory with the project's hint."""
    return bool(error) and "OutOfMemoryError" in error and OOM_HINT in error


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one time."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda ev: (ev[0], ev[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def gpu_of(device: str | None) -> str:
    """The physical GPU a trial ran on, from its `xgd.device` tag ("cuda:0 NAME (CUDA_VISIBLE_DEVICES=3)")."""
    if not device:
        return "?"
    return device.rsplit("CUDA_VISIBLE_DEVICES=", 1)[-1].rstrip(")") if "VISIBLE" in device else device.split()[0]


def sweep_figures(results: Path, name: str) -> dict:
    """Each trial of sweep `name` as MLflow holds it, with trial_figures."""
    from orchestrator.tracking import tags as T
    from orchestrator.tracking.reader import find_sweep, open_store
    from orchestrator.tracking.store import results_store

    sweep = find_sweep(open_store(results_store(results)), name)
    trials = [
        {
            "trial": r.data.tags.get(T.TRIAL_ID),
            "status": r.info.status,
            "crop": r.data.params.get("data.crop"),
            "batch": r.data.params.get("data.batch_size"),
            "device": r.data.tags.get(T.DEVICE),
            "error": r.data.tags.get(T.ERROR),
            "val_miou": r.data.metrics.get("val_miou"),
            "peak_mem_mb": r.data.metrics.get("peak_mem_mb"),  # trainables.device_stats, per epoch
            "gpu_util_pct": r.data.metrics.get("gpu_util_pct"),
            "start_s": r.info.start_time / 1000 if r.info.start_time else None,
            "end_s": r.info.end_time / 1000 if r.info.end_time else None,
        }
        for r in sweep.trials
    ]
    return trial_figures(trials)


def trial_figures(trials: list[dict]) -> dict:
    """Counts by status and the most trials that ran at once on one GPU."""
    by_gpu: dict[str, list] = {}
    for t in trials:
        if t["start_s"] and t["end_s"]:
            by_gpu.setdefault(gpu_of(t["device"]), []).append((t["start_s"], t["end_s"]))
    statuses = [t["status"] for t in trials]
    finished = [t for t in trials if t["status"] == "FINISHED"]
    return {
        "without_device_figures": sum(t.get("peak_mem_mb") is None or t.get("gpu_util_pct") is None for t in finished),
        "trials": trials,
        "finished": statuses.count("FINISHED"),
        "failed": statuses.count("FAILED"),
        "most_at_once_on_one_gpu": max((max_overlap(s) for s in by_gpu.values()), default=0),
        "gpus": sorted(by_gpu),
    }


def bench_figures(path: Path) -> dict:
    """The step bench's JSON, cut to what the summary shows: per variant s/step and peak MB, targets."""
    r = json.loads(path.read_text())
    return {
        "gpu": r["machine"].get("gpu"),
        "variants": {v: {"s_per_step": x["median_s"], "peak_mb": x["peak_mem_mb"]} for v, x in r["variants"].items()},
        "targets": {k: {"ratio": t["ratio"], "met": t["met"]} for k, t in r["targets"].items()},
        "json": str(path),
    }


def check_shared(f: dict) -> str:
    if f["finished"] != 4:
        return f"{f['finished']} of 4 trials finished"
    if f["most_at_once_on_one_gpu"] < 2:
        return "no two trials ran on one GPU at the same time"
    if f.get("without_device_figures"):
        return f"{f['without_device_figures']} finished trial(s) logged no peak_mem_mb or gpu_util_pct"
    return ""


def check_ddp(f: dict) -> str:
    return "" if f["finished"] == 1 else "the 2-worker trial did not finish"


def check_oom(f: dict) -> str:
    big = [t for t in f["trials"] if str(t["crop"]) == str(OOM_CROP)]
    rest = [t for t in f["trials"] if t not in big]
    if len(big) != 1 or not rest:
        return f"expected one crop-{OOM_CROP} trial and others, got {len(big)} and {len(rest)}"
    if big[0]["status"] != "FAILED" or not oom_failure(big[0]["error"]):
        return f"the crop-{OOM_CROP} trial is {big[0]['status']} without the OOM hint: {big[0]['error']}"
    if any(t["status"] != "FINISHED" for t in rest):
        return "a trial that fits did not finish: " + "; ".join(f"{t['status']} {t['error']}" for t in rest)
    return ""


def check_bench(f: dict) -> str:
    if not f["variants"]:
        return "no variant was measured"
    return "" if any(v.endswith("@cache") for v in f["variants"]) else "no cached-teacher variant was measured"


# ------------------------------------------------------------------ the plan


def plan(n_gpus: int, work: Path, crop: int = 512, batch: int = 8) -> list[Step]:
    """The steps for a machine with `n_gpus` visible GPUs; sweeps share `work` (one MLflow store,
    one teacher cache), bench JSONs go under it too."""
    results, sweeps = work.resolve(), (work / "sweeps").resolve()

    def sweep(name: str, *extra: str) -> list[str]:
        where = sets(f"name={name}", f"results={results}", f"storage_path={sweeps}")
        return ["sweep", SPEC, *where, *ON_CUDA, *SHORT, *extra]

    def bench(name: str, *extra: str) -> list[str]:
        size = ["--crop", str(crop), "--batch", str(batch)]
        return [
            "bench",
            "--device",
            "cuda",
            *size,
            "--no-sweep",
            "--out",
            str(results / "bench"),
            "--name",
            name,
            *extra,
        ]

    def bench_step(name: str, *extra: str, expect: str) -> Step:
        return Step(
            name,
            bench(name, *extra),
            expect,
            lambda s: bench_figures(results / "bench" / f"{s.name}.json"),
            check_bench,
        )

    def sweep_step(name: str, sets: list[str], expect: str, check, skip: str = "") -> Step:
        return Step(name, sweep(name, *sets), expect, lambda s: sweep_figures(results, s.name), check, skip)

    oom_space = f"space={{data.crop: {{type: grid, values: [64, {OOM_CROP}]}}}}"
    oom = [oom_space, "search.algorithm=grid", "search.num_samples=2", f"train.data.batch_size={OOM_BATCH}"]
    oom += [f"train.model.encoder={OOM_ENCODER}", "train.optim.amp='off'"]  # quoted: YAML reads a bare off as false
    one_gpu = ["resources.gpus_per_worker=1", "resources.max_concurrent=1"]
    return [
        bench_step("bench-eager", expect="every variant measured on CUDA"),
        bench_step(
            "bench-compile",
            "--compile",
            "--variants",
            "pi,xgd_gradcam,xgd_gradcam@cache",
            expect="PI and XGD compiled, XGD cached too",
        ),
        sweep_step(
            "shared-gpu",
            sets("search.num_samples=4", "resources.gpus_per_worker=0.5", "resources.max_concurrent=4"),
            "4 trials finish, 2 at a time on one GPU",
            check_shared,
        ),
        sweep_step(
            "ddp-nccl",
            sets("search.num_samples=1", "resources.num_workers=2", "resources.executor=train", *one_gpu),
            "a 2-worker NCCL Ray Train trial finishes",
            check_ddp,
            "" if n_gpus >= 2 else f"needs 2 GPUs, {n_gpus} visible",
        ),
        sweep_step(
            "oom",
            sets(*oom, *one_gpu),
            f"the crop-{OOM_CROP} trial fails alone with the OOM hint; the other finishes",
            check_oom,
        ),
    ]


# ------------------------------------------------------------------ running it


def require_cuda() -> int:
    """The number of visible GPUs; a one-line UserError without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"gpu-check needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); run it on a machine with an NVIDIA GPU and its driver"
        )
    return torch.cuda.device_count()


def machine() -> dict:
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {"host": platform.node(), "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus}


def run_step(step: Step, logs: Path) -> Outcome:
    if step.skip:
        return Outcome(step.name, step.command, step.expect, None, 0.0, {}, "skipped", step.skip)
    log = logs / f"{step.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *step.argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in proc.stdout:  # the step's own output, live, and in its log
            sys.stdout.write(line)
            out.write(line)
        rc = proc.wait()
    seconds = time.perf_counter() - t0
    try:
        figures = step.figures(step)
        problem = step.check(figures)
    except Exception as e:  # noqa: BLE001 - a step that wrote nothing readable is a failed step
        figures, problem = {}, f"its results could not be read: {type(e).__name__}: {e}"
    if rc != 0:  # the oom sweep too exits 0: one of its trials finishes
        problem = problem or f"exit code {rc}"
    return Outcome(
        step.name, step.command, step.expect, rc, seconds, figures, "failed" if problem else "ok", problem, str(log)
    )


def write_report(outcomes: list[Outcome], info: dict, out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    path.write_text(json.dumps({"stamp": stamp, "machine": info, "steps": [asdict(o) for o in outcomes]}, indent=1))
    return path


def brief(o: Outcome) -> str:
    """The step's key figures in one cell."""
    f = o.figures
    if o.status == "skipped" or not f:
        return o.problem
    if "variants" in f:
        v = f["variants"]
        cells = [
            f"{k} {x['s_per_step'] * 1000:.1f} ms, {x['peak_mb']:.0f} MB"
            for k, x in v.items()
            if k in ("pi", "xgd_gradcam")
        ]
        cells += [f"{k} {t['ratio']:.2f} {'met' if t['met'] else 'NOT met'}" for k, t in f["targets"].items()][:1]
        return "; ".join(cells)
    text = f"{f['finished']} finished, {f['failed']} failed, at most {f['most_at_once_on_one_gpu']} at once on one GPU"
    return text + (f"; {o.problem}" if o.problem else "")


def summary(outcomes: list[Outcome]):
    from rich.table import Table

    t = Table(title="gpu-check")
    for col in ("step", "result", "s", "figures"):
        t.add_column(col, justify="right" if col == "s" else "left")
    style = {"ok": "green", "failed": "red", "skipped": "yellow"}
    for o in outcomes:
        t.add_row(o.step, f"[{style[o.status]}]{o.status}[/]", f"{o.seconds:.0f}", brief(o))
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", default="results/gpu-check", help="folder for <timestamp>.json and <timestamp>/")
    p.add_argument("--only", default="", help="comma-separated step names (default: all)")
    p.add_argument("--crop", type=int, default=512, help="bench crop")
    p.add_argument("--batch", type=int, default=8, help="bench batch")
    p.add_argument("--plan", action="store_true", help="print the steps' commands and exit (needs no GPU)")
    args = p.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = Path(args.out) / stamp
    if args.plan:
        import torch

        for s in plan(torch.cuda.device_count(), work, args.crop, args.batch):
            print(f"# {s.name}: {s.expect}" + (f" (skipped: {s.skip})" if s.skip else "") + f"\n{s.command}")
        return 0
    try:
        n_gpus = require_cuda()
        steps = plan(n_gpus, work, args.crop, args.batch)
        only = [n for n in args.only.split(",") if n]
        unknown = sorted(set(only) - {s.name for s in steps})
        if unknown:
            raise UserError(f"--only {','.join(unknown)}: unknown step; steps: {', '.join(s.name for s in steps)}")
    except UserError as e:
        print(e, file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    outcomes = [run_step(s, work) for s in steps if not only or s.name in only]
    path = write_report(outcomes, machine(), Path(args.out), stamp)
    from rich.console import Console

    Console().print(summary(outcomes))
    print(f"wrote {path}")
    return 0 if all(o.status != "failed" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
