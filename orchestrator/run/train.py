"""One training run (teacher or student) as plain Python, with the checks that turn a bad spec,
a bad teacher checkpoint or bad data into one-line errors before any epoch runs."""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import SpecError
from orchestrator.spec.train import TrainSpec
from trainables.checkpoint import CheckpointError, load
from trainables.data import build_dataset, class_names


def precheck(spec: TrainSpec) -> list[str]:
    """Fail fast on what would otherwise fail inside a worker; returns the class names."""
    import torch

    from trainables.setup import make_test_loader

    data = spec.data.model_dump()
    classes = class_names(data)
    for split in (data["train_split"], data["val_split"]):
        build_dataset(data, split, train=False)  # DataError names the missing/empty/bad file
    make_test_loader({"data": data}, torch.device("cpu"))  # the held-out split, when there is one
    if spec.teacher is not None:
        try:
            state = load(spec.teacher.checkpoint)
        except CheckpointError as e:
            raise SpecError(f"teacher.checkpoint: {e}") from None
        if list(state["classes"]) != classes:
            raise SpecError(
                f"teacher.checkpoint {spec.teacher.checkpoint!r} has {len(state['classes'])} classes "
                f"{list(state['classes'])}; the data has {len(classes)}: {classes}"
            )
    out = Path(spec.run.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").touch()
        (out / ".write_test").unlink()
    except OSError as e:
        raise SpecError(f"run.out_dir {str(out)!r} is not writable: {e.strerror}") from None
    return classes


def run_training(spec: TrainSpec) -> dict:
    """Train and return {"metrics": final metrics, "checkpoint": best.pt path, "dir": run folder}."""
    from trainables.loop import train_loop

    precheck(spec)
    metrics = train_loop(spec.model_dump())
    run_dir = Path(spec.run.out_dir) / spec.name
    return {"metrics": metrics, "checkpoint": str((run_dir / "best.pt").resolve()), "dir": str(run_dir.resolve())}
