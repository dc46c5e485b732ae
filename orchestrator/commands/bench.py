"""`python -m orchestrator bench`: side-by-side step times and peak memory of CE, PI, XGD with
each CAM method and the baselines (orchestrator.bench); a rich table and a JSON file."""

from __future__ import annotations

import argparse

from orchestrator.bench.presets import STUDENTS, TEACHERS
from orchestrator.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark one training step of every distillation variant, side by side")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--student", default="dlv3p_r18", help=f"{', '.join(STUDENTS)} or arch:encoder")
    p.add_argument("--teacher", default="r101", help=f"{', '.join(TEACHERS)} or arch:encoder")
    p.add_argument("--crop", type=int, default=64, help="square input size (multiple of 32)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of: ce, pi, xgd_<CAM method> for each of "
        "the trainer's CAM methods (xgd_gradcam, ...), xgd_gradcam_exact_bn (distill.cam_bn_grad: exact), "
        "each baseline method (skd, ...), and pi@cache, xgd_<CAM method>@cache (the teacher's outputs "
        "from a warm teacher-output cache); default: all",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--amp", choices=("auto", "off", "bf16", "fp16"), default="auto", help="auto: bf16 on CUDA, off on CPU"
    )
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="CUDA: keep NCHW")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders (run.compile)")
    p.add_argument(
        "--builtin-conv-grad",
        action="store_true",
        help="also time each XGD variant with PyTorch's own conv double backward (suffix +builtin)",
    )
    p.add_argument("--profile", default="", help="comma-separated variants to profile (operator table, phases)")
    p.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the per-trial orchestration overhead of both executors (stub trials, one at a "
        "time, on a local Ray; default on)",
    )
    p.add_argument("--sweep-trials", type=int, default=3)
    p.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="also run a load sweep of N stub trials, 2 at a time, and count its MLflow runs",
    )
    p.add_argument("--out", default="results/bench", help="folder for the JSON")
    p.add_argument("--name", default=None, help="JSON file name (default: a timestamp)")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    import time

    from rich.console import Console

    from orchestrator.bench import steps as bench

    console = Console() if sys.stdout.isatty() else Console(width=150)  # a log file gets the whole table
    settings = bench.BenchSettings(
        device=args.device,
        student=args.student,
        teacher=args.teacher,
        crop=args.crop,
        batch=args.batch,
        iters=args.iters,
        warmup=args.warmup,
        variants=[v for v in args.variants.split(",") if v] or list(bench.DEFAULT_VARIANTS),
        threads=args.threads,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        profile=[v for v in args.profile.split(",") if v],
        builtin_conv_grad=args.builtin_conv_grad,
    )
    if args.sweep_trials < 2 or args.load < 0:
        raise UserError(f"--sweep-trials must be >= 2 (got {args.sweep_trials}) and --load >= 0 (got {args.load})")
    t0 = time.perf_counter()
    try:
        result = bench.run_bench(settings, log=console.print)
    except ValueError as e:
        raise UserError(str(e)) from None
    from orchestrator.bench import sweep as bench_sweep

    for key, wanted, fn in (
        ("orchestration", args.sweep, lambda: bench_sweep.sweep_overhead(args.sweep_trials, log=console.print)),
        ("load", args.load, lambda: bench_sweep.sweep_load(args.load, log=console.print)),
    ):
        if wanted:
            try:
                result[key] = fn()
            except Exception as e:  # the step figures are kept either way
                result[key] = {"error": f"{type(e).__name__}: {e}"}
    for name, prof in result["profiles"].items():
        console.print(
            f"[bold]profile of {name}[/] (2 steps; phases in s/step: "
            + ", ".join(f"{k} {v:.4f}" for k, v in prof["phases_s"].items())
            + ")"
        )
        print(prof["table"])
    console.print(bench.table(result))
    for key, t in result["targets"].items():
        console.print(
            f"target {key}: {t['ratio']:.2f} <= {t['limit']} {'met' if t['met'] else '[red]NOT met[/]'} "
            f"(CPU-time ratio {t['ratio_cpu']:.2f}: {'met' if t['met_cpu'] else 'NOT met'}; "
            f"fastest-step ratio {t['ratio_min']:.2f})"
        )
    print_orchestration(console, result)
    result["total_wall_s"] = time.perf_counter() - t0  # step bench + orchestration sweeps
    path = bench.write_result(result, args.out, args.name)
    la = result["load_avg_before"]
    console.print(
        f"bench took {result['total_wall_s']:.0f} s, steps {result['bench_wall_s']:.0f} s "
        f"(load average {la[0]:.2f} before, "
        f"{result['load_avg_after'][0]:.2f} after); wrote {path}"
    )
    return 0


def print_orchestration(console, result: dict) -> None:
    for key in ("orchestration", "load"):
        if "error" in result.get(key, {}):
            console.print(f"[red]{key} measurement failed[/]: {result[key]['error']}")
    o = result.get("orchestration")
    if o and "error" not in o:
        for ex, r in o["by_executor"].items():
            b = {k: "?" if v is None else f"{v:.1f}" for k, v in r["breakdown_s"].items()}
            console.print(
                f"orchestration, executor {ex}: {r['per_trial_overhead_s']:.1f} s per trial (median, previous "
                f"trial's report to this one's first step; target <= {r['target_s']:g} s: "
                f"{'met' if r['met'] else 'NOT met'}), {r['trials_per_min']:.1f} stub trials/min; trial "
                f"function to step {b['trial_fn_to_step']} s, report to Tune {b['report_to_tune']} s "
                "(Tune clock +-1 s)"
            )
    lo = result.get("load")
    if lo and "error" not in lo:
        console.print(
            f"load: {lo['completed']}/{lo['trials']} stub trials completed, {lo['concurrent']} at a time, in "
            f"{lo['wall_s']:.0f} s: {lo['trials_per_min']:.1f} trials/min; MLflow holds {lo['mlflow_runs']} "
            f"trial runs, {lo['mlflow_finished_with_metric']} finished with val_miou"
        )
