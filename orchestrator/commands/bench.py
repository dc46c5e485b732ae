"""`python -m orchestrator bench`: side-by-side step times and peak memory of CE, PI, XGD with
each CAM method and the baselines (orchestrator.bench); a rich table and a JSON file."""
from __future__ import annotations


def add_parser(sub) -> None:
    from orchestrator.bench import STUDENTS, TEACHERS, VARIANTS

    p = sub.add_parser("bench", help="benchmark one training step of every distillation variant, side by side")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--student", default="dlv3p_r18", help=f"{', '.join(STUDENTS)} or arch:encoder")
    p.add_argument("--teacher", default="r101", help=f"{', '.join(TEACHERS)} or arch:encoder")
    p.add_argument("--crop", type=int, default=64, help="square input size (multiple of 32)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="auto: bf16 on CUDA, off on CPU")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="CUDA: keep NCHW")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders (run.compile)")
    p.add_argument("--builtin-conv-grad", action="store_true",
                   help="also time each XGD variant with PyTorch's own conv double backward (suffix +builtin)")
    p.add_argument("--profile", default="", help="comma-separated variants to profile (operator table, phases)")
    p.add_argument("--sweep", action="store_true",
                   help="also measure per-trial orchestration overhead and stub-sweep throughput (Ray Tune + Train)")
    p.add_argument("--sweep-trials", type=int, default=4)
    p.add_argument("--out", default="results/bench", help="folder for the JSON")
    p.add_argument("--name", default=None, help="JSON file name (default: a timestamp)")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from rich.console import Console

    from orchestrator import bench
    from orchestrator.cli import UserError

    console = Console() if sys.stdout.isatty() else Console(width=150)  # a log file gets the whole table
    settings = bench.BenchSettings(
        device=args.device, student=args.student, teacher=args.teacher, crop=args.crop, batch=args.batch,
        iters=args.iters, warmup=args.warmup, variants=[v for v in args.variants.split(",") if v],
        threads=args.threads, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        profile=[v for v in args.profile.split(",") if v], builtin_conv_grad=args.builtin_conv_grad)
    try:
        result = bench.run_bench(settings, log=console.print)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.sweep:
        try:
            result["orchestration"] = bench.sweep_overhead(args.sweep_trials, log=console.print)
        except Exception as e:  # the step figures are kept either way
            result["orchestration"] = {"error": f"{type(e).__name__}: {e}"}
    for name, prof in result["profiles"].items():
        console.print(f"[bold]profile of {name}[/] (2 steps; phases in s/step: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in prof["phases_s"].items()) + ")")
        print(prof["table"])
    console.print(bench.table(result))
    for key, t in result["targets"].items():
        console.print(f"target {key}: {t['ratio']:.2f} <= {t['limit']} {'met' if t['met'] else '[red]NOT met[/]'} "
                      f"(CPU-time ratio {t['ratio_cpu']:.2f}: {'met' if t['met_cpu'] else 'NOT met'}; "
                      f"fastest-step ratio {t['ratio_min']:.2f})")
    o = result.get("orchestration")
    if o and "error" in o:
        console.print(f"[red]orchestration measurement failed[/]: {o['error']}")
    elif o:
        b = {k: "?" if v is None else f"{v:.1f}" for k, v in o["breakdown_s"].items()}
        console.print(f"orchestration: {o['per_trial_overhead_s']:.1f} s per trial (median, previous trial's report "
                      f"to this one's first step; target <= {o['target_s']:g} s: {'met' if o['met'] else 'NOT met'}), "
                      f"{o['trials_per_min']:.1f} stub trials/min; Train run start {b['train_run_start']} s, "
                      f"report to Tune {b['report_to_tune']} s (Tune clock +-1 s)")
    path = bench.write_result(result, args.out, args.name)
    la = result["load_avg_before"]
    console.print(f"bench took {result['bench_wall_s']:.0f} s (load average {la[0]:.2f} before, "
                  f"{result['load_avg_after'][0]:.2f} after); wrote {path}")
    return 0
