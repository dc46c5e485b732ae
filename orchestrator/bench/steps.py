"""Side-by-side step benchmark: what one training step of each distillation variant costs.

Every variant runs `trainables.step.train_step`, the step the worker loop runs, on one fixed
batch of the synthetic scene set, with its own student (same initial weights) and one shared
frozen teacher (random weights: speed does not depend on them). Variants are interleaved
round-robin, the start rotating each repetition, so load from other processes hits all of them
alike. Figures per variant, after warm-up: median wall time per step (the headline), median
process CPU time (less sensitive to other processes on a shared CPU) and the fastest step.
The saliency column ("CAM s") is the median time of the step's saliency terms (`Term.saliency`:
CAM gradients, maps and their loss, not their share of the one backward): host seconds on the
CPU, device seconds from CUDA events on CUDA (`trainables.timing.SpanTimer`).

Peak memory is the most bytes the step held on top of what was live when it started (which
includes the previous step's gradients, freed by this step's zero_grad): on CUDA
`torch.cuda.max_memory_allocated` after a reset; on the CPU the running sum of the allocation
and free events torch.profiler records (profile_memory=True) during the last warm-up step.
tracemalloc and maxrss see neither torch's allocator nor per-step peaks. On CUDA each variant also lists the
host-device synchronisations one step makes (torch.cuda sync debug mode); the step should make
none, except GradScaler's with fp16 and linalg.eigh's error check in EigenGradCAM.

The orchestration overhead (trial start to first training step, and throughput of a sweep of
stub trials) is measured by orchestrator.bench.sweep when requested.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from orchestrator.bench import cached as C
from orchestrator.bench.measure import host_syncs, machine_info, peak_bytes, profile_step, timed
from orchestrator.bench.presets import STUDENTS, TEACHERS, model_cfg
from orchestrator.spec.load import validate
from orchestrator.spec.train import TrainSpec
from trainables.cams import CAMS
from trainables.losses import BASELINES

# variant -> distill settings on top of DistillSpec's defaults (alpha = beta = tau = 1): CE only, PI,
# XGD with each CAM method of the trainer's registry, XGD(GradCAM) with distill.cam_bn_grad 'exact'
# (its "x GradCAM" column: the cost over the default 'constant'), each baseline method
EXACT_BN = "xgd_gradcam_exact_bn"
VARIANTS: dict[str, dict] = {
    "ce": {"method": "none"},
    "pi": {"method": "pi"},
    **{f"xgd_{cam}": {"method": "xgd", "cam": cam} for cam in CAMS},
    EXACT_BN: {"method": "xgd", "cam": "gradcam", "cam_bn_grad": "exact"},
    **{name: {"method": name} for name in BASELINES},
}
PI, GRADCAM = "pi", "xgd_gradcam"
BUILTIN = "+builtin"  # suffix: the variant with PyTorch's convolution double backward (before trainables.convgrad)
CACHED = C.CACHED  # suffix: the variant with its teacher outputs from a warm cache (orchestrator.bench.cached)
DEFAULT_VARIANTS = [*VARIANTS, *C.cached_variants(VARIANTS)]


def base_variant(v: str) -> str:
    """The VARIANTS entry a variant name stands on (suffixes off)."""
    return v.removesuffix(BUILTIN).removesuffix(CACHED)


@dataclass
class BenchSettings:
    device: str = "cpu"
    student: str = "dlv3p_r18"
    teacher: str = "r101"
    crop: int = 64
    batch: int = 4
    iters: int = 10
    warmup: int = 2
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    profile: list[str] = field(default_factory=list)  # variants to profile (operator table)
    profile_rows: int = 25
    builtin_conv_grad: bool = False  # also time each XGD variant with nn.Conv2d's own double backward ("+builtin")


def check_settings(s: BenchSettings) -> None:
    unknown = [v for v in [*s.variants, *s.profile] if base_variant(v) not in VARIANTS] + C.check_cached(s.variants)
    if unknown:
        raise ValueError(f"unknown bench variant(s) {unknown}; allowed: {', '.join(DEFAULT_VARIANTS)}")
    if s.iters < 1 or s.warmup < 0 or s.batch < 1 or s.crop < 32:
        raise ValueError("bench needs iters >= 1, warmup >= 0, batch >= 1 and crop >= 32")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible (allowed: cpu, cuda)")


def variant_config(s: BenchSettings, variant: str) -> dict:
    """The TrainSpec dict the variant's step is built from (the loop's defaults otherwise)."""
    return validate(
        TrainSpec,
        {
            "name": "bench",
            "seed": s.seed,
            "data": {
                "kind": "synthetic",
                "num_train": s.batch,
                "image_size": max(96, s.crop),
                "crop": s.crop,
                "batch_size": s.batch,
            },
            "model": model_cfg(s.student, STUDENTS, "student"),
            "distill": VARIANTS[base_variant(variant)],
            "optim": {"amp": s.amp, "epochs": 1},
            "run": {"device": s.device, "channels_last": s.channels_last, "compile": s.compile},
        },
    ).model_dump()  # a bad name is one SpecError line


def fixed_batch(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    from trainables.data import build_dataset, pad_collate

    data = config["data"]
    ds = build_dataset(data, data["train_split"], train=True)
    return pad_collate([ds[i] for i in range(data["batch_size"])])


# ------------------------------------------------------------------ the bench


def run_bench(s: BenchSettings, log: Callable[[str], None] = lambda _m: None) -> dict:
    """Measure every variant of `s`; returns the JSON-able result (figures, ratios, settings, machine)."""
    from trainables.setup import pick_device
    from trainables.step import train_step

    check_settings(s)
    t_start = time.perf_counter()
    if s.threads:
        torch.set_num_threads(s.threads)
    device = pick_device(s.device)
    load_before = os.getloadavg()
    configs = {v: variant_config(s, v) for v in s.variants}
    if s.builtin_conv_grad:
        configs.update({v + BUILTIN: configs[v] for v in s.variants if v.startswith("xgd_") and not v.endswith(CACHED)})
    x, y = fixed_batch(next(iter(configs.values())))
    x, y = x.to(device), y.to(device)
    trainers = build_trainers(s, configs, x, device)
    items = {v: C.warm(tr, x, y) for v, tr in trainers.items() if tr.cache is not None}
    log(
        f"built {len(trainers)} variants in {time.perf_counter() - t_start:.1f} s; timing "
        f"{s.warmup} warm-up + {s.iters} steps each, round-robin"
    )
    steps = {v: partial(train_step, tr, x, y, items.get(v)) for v, tr in trainers.items()}
    try:
        rows = measure(steps, s, device)
        profiles = {v: profile_step(steps[v], device, s.profile_rows) for v in s.profile if v in steps}
    finally:
        for tr in trainers.values():
            if tr.cache is not None:
                shutil.rmtree(tr.cache.store.root, ignore_errors=True)
    return {
        "settings": asdict(s),
        "machine": machine_info(device),
        "memory_method": "cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events",
        "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
        "variants": rows,
        "targets": targets(rows),
        "profiles": profiles,
        "bench_wall_s": time.perf_counter() - t_start,
    }


def build_trainers(s: BenchSettings, configs: dict[str, dict], x: torch.Tensor, device: torch.device) -> dict:
    """One Trainer per variant: the same initial student each, one shared frozen teacher."""
    from trainables.data import class_names
    from trainables.models import model_from_config
    from trainables.step import build_trainer

    num_classes = len(class_names(next(iter(configs.values()))["data"]))
    torch.manual_seed(s.seed)
    teacher = model_from_config(model_cfg(s.teacher, TEACHERS, "teacher"), num_classes)
    teacher.to(device).eval().requires_grad_(False)
    # a compiled teacher encoder would ignore taps added later (dynamo does not guard hooks):
    # variants that tap it get an uncompiled copy
    plain = copy.deepcopy(teacher) if s.compile and any(_taps_encoder(c, teacher) for c in configs.values()) else None
    trainers = {}
    for v, cfg in configs.items():
        torch.manual_seed(s.seed)
        student = model_from_config(cfg["model"], num_classes).to(device)
        t = plain if plain is not None and _taps_encoder(cfg, teacher) else teacher
        store = C.new_store() if v.endswith(CACHED) else None
        trainers[v] = build_trainer(cfg, student, t, x[:2], device, 10 * (s.warmup + s.iters), store)
        if v.endswith(BUILTIN):
            _builtin_convs(student)
    return trainers


def measure(steps: dict[str, Callable[[], object]], s: BenchSettings, device: torch.device) -> dict[str, dict]:
    """Round-robin timing (the start rotates every repetition), memory, syncs; figures and ratios per variant."""
    names = list(steps)
    times: dict[str, list[float]] = {v: [] for v in names}
    cpu: dict[str, list[float]] = {v: [] for v in names}  # process CPU seconds: robust to other processes' load
    saliency: dict[str, list[float]] = {v: [] for v in names}
    peaks: dict[str, int] = {}
    for r in range(s.warmup + s.iters):
        for v in names[r % len(names) :] + names[: r % len(names)]:
            if r == s.warmup - 1:  # the last warm-up step is not timed: it measures memory
                peaks[v] = peak_bytes(steps[v], device)
                continue
            out: list = []
            c0 = time.process_time()
            t = timed(lambda: out.append(steps[v]()), device)  # noqa: B023 (called at once, in this iteration)
            if r >= s.warmup:
                times[v].append(t)
                cpu[v].append(time.process_time() - c0)
                saliency[v].append(out[0].saliency.seconds())  # CUDA: device time, read after timed()'s sync
    if not peaks:
        peaks = {v: peak_bytes(steps[v], device) for v in names}
    rows = {}
    for v in names:
        rows[v] = {
            "median_s": statistics.median(times[v]),
            "min_s": min(times[v]),
            "max_s": max(times[v]),
            "cpu_median_s": statistics.median(cpu[v]),
            "saliency_s": statistics.median(saliency[v]),
            "peak_mem_mb": peaks[v] / 2**20,
            "host_syncs": host_syncs(steps[v], device),
            "times_s": times[v],
            "distill": VARIANTS[base_variant(v)],
            "cached_teacher": v.endswith(CACHED),
        }
    for ref, key in ((PI, "ratio_pi"), (GRADCAM, "ratio_gradcam")):
        for v in names:
            rows[v][key] = rows[v]["median_s"] / rows[ref]["median_s"] if ref in rows else None
            rows[v][key + "_cpu"] = rows[v]["cpu_median_s"] / rows[ref]["cpu_median_s"] if ref in rows else None
            rows[v][key + "_min"] = rows[v]["min_s"] / rows[ref]["min_s"] if ref in rows else None
    return rows


def _builtin_convs(model: torch.nn.Module) -> None:
    from trainables.convgrad import FastGradConv2d

    for m in model.modules():
        if type(m) is FastGradConv2d:
            m.__class__ = torch.nn.Conv2d


def _taps_encoder(config: dict, teacher: torch.nn.Module) -> bool:
    from trainables.losses import active_terms
    from trainables.setup import collect_taps

    _, t_paths, t_leaf = collect_taps(active_terms(config["distill"], True), config["distill"], teacher, teacher)
    return any(p.split(".")[0] == "encoder" for p in {**t_paths, **t_leaf}.values())


def targets(rows: dict[str, dict]) -> dict[str, dict]:
    """The cost targets: XGD(GradCAM) <= 1.15 x PI; every CAM method <= 1.3 x GradCAM; XGD(GradCAM)
    with a warm teacher-output cache <= 0.65 x the live PI step. `met` judges
    the ratio of median wall times, `met_cpu` that of median process CPU times (fairer on a shared,
    loaded CPU); `ratio_min` (fastest steps) is given too, the least disturbed by other processes."""
    checks = [
        (GRADCAM, "ratio_pi", "xgd_gradcam_vs_pi", 1.15),
        (GRADCAM + CACHED, "ratio_pi", "xgd_gradcam_cached_vs_pi", 0.65),
    ]
    checks += [(f"xgd_{cam}", "ratio_gradcam", f"xgd_{cam}_vs_gradcam", 1.3) for cam in CAMS if cam != "gradcam"]
    out = {}
    for v, key, name, limit in checks:
        if v in rows and rows[v][key] is not None:
            r = rows[v][key]
            r_cpu = rows[v][key + "_cpu"]
            out[name] = {
                "ratio": r,
                "ratio_cpu": r_cpu,
                "ratio_min": rows[v][key + "_min"],
                "limit": limit,
                "met": r <= limit,
                "met_cpu": r_cpu <= limit,
            }
    return out


def write_result(result: dict, out_dir: str | Path, name: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name or time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def table(result: dict):
    """A rich Table of the step figures."""
    from rich.table import Table

    m = result["machine"]
    st = result["settings"]
    t = Table(
        title=f"step bench: {st['student']} <- {st['teacher']}, crop {st['crop']}, batch {st['batch']}, "
        f"{st['iters']} steps, {m['device']} ({m.get('gpu') or m['cpu']}, {m['torch_threads']} threads)"
    )
    t.add_column("variant", no_wrap=True, min_width=16)
    for col in ("median s/step", "x PI", "x GradCAM", "CPU s/step", "x PI (CPU)", "CAM s", "peak MB"):
        t.add_column(col, justify="right")

    def ratio(r):
        return "-" if r is None else f"{r:.2f}"

    for v, row in result["variants"].items():
        t.add_row(
            v,
            f"{row['median_s']:.4f}",
            ratio(row["ratio_pi"]),
            ratio(row["ratio_gradcam"]),
            f"{row['cpu_median_s']:.4f}",
            ratio(row["ratio_pi_cpu"]),
            f"{row['saliency_s']:.4f}" if row["saliency_s"] else "-",
            f"{row['peak_mem_mb']:.1f}",
        )
    return t
