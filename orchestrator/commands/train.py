"""`python -m orchestrator train SPEC.yaml [--set key=value ...]`: one teacher or student."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train one teacher or student from a YAML spec")
    p.add_argument("spec", help="YAML train spec (see search_spaces/quickstart_teacher.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set optim.epochs=2 (repeatable)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.console import Console

    from orchestrator.run.train import run_training
    from orchestrator.spec.train import load_train_spec

    spec = load_train_spec(args.spec, args.overrides)
    result = run_training(spec)
    m = result["metrics"]
    test = f"test mIoU {m['test_miou']:.4f} (best-on-val weights), " if "test_miou" in m else ""
    Console().print(
        f"[bold]{spec.name}[/]: val mIoU {m.get('val_miou', float('nan')):.4f}, "
        f"best {m.get('best_val_miou', float('nan')):.4f}, {test}{m.get('step_time_s', 0):.3f} s/step; "
        f"best checkpoint {result['checkpoint']}"
    )
    return 0
