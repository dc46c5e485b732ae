"""A teacher recipe shared by sweeps is trained once (a file lock in its cache folder), and a
teacher training that was killed resumes from its last checkpoint. Each sweep is a separate
process, as two users' commands would be, a driver of the session's shared Ray (a local Ray each
cost about 10 s of start-up and shut-down per process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.run import lock

ROOT = Path(__file__).resolve().parents[1]

# One "sweep" process: connect a local Ray and obtain the teacher of a tiny quickstart recipe.
OBTAIN = """
import json, sys
from orchestrator.run import cluster, teachers
from orchestrator.run.ablate import load_ablation
results, name, epochs, address = sys.argv[1:5]
ab = load_ablation("search_spaces/ablations/quickstart_table2.yaml",
                   [f"results={results}", f"name={name}", f"teacher.recipe.optim.epochs={epochs}",
                    "teacher.recipe.run.max_steps_per_epoch=2", "teacher.cpus=1"])
cluster.connect(address, verbose=False)
t = teachers.obtain(ab.sweep, say=lambda line: print(line, flush=True),
                    progress=lambda e, n, m: print(f"epoch {e}/{n}", flush=True))
print("RESULT", json.dumps({"checkpoint": t.checkpoint, "cached": t.cached, "metrics": t.metrics}), flush=True)
"""


def start(ray, results: Path, name: str, epochs: int = 2) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    address = ray.get_runtime_context().gcs_address
    return subprocess.Popen(
        [sys.executable, "-c", OBTAIN, str(results), name, str(epochs), address],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def result(out: str) -> dict:
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def held_elsewhere(context: str, folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock (`context`: a call of orchestrator.run.lock on
    `folder`) until killed; it prints 'held' once it has it."""
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom orchestrator.run.lock import exclusive, hold\n"
        f"folder = Path(sys.argv[1])\nwith {context}:\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = held_elsewhere("hold(folder, 'sweep demo', print)", tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited: list[str] = []
        t0 = time.monotonic()
        killer = subprocess.Popen(["bash", "-c", f"sleep 1; kill -9 {holder.pid}"])
        with lock.hold(tmp_path, "sweep other", waited.append, poll_s=0.1):
            took = time.monotonic() - t0
        killer.wait()
        assert len(waited) == 1 and "sweep demo" in waited[0] and f"pid {holder.pid}" in waited[0]
        assert 0.5 < took < 30  # waited for the holder, got the lock once its process died
    finally:
        holder.kill()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sweeps_with_one_recipe_train_the_teacher_once(ray_cluster, tmp_path):
    procs = {name: start(ray_cluster, tmp_path, name, epochs=12) for name in ("sweep-a", "sweep-b")}  # started together
    outs = {name: p.communicate(timeout=500)[0] for name, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), "\n".join(o[-2000:] for o in outs.values())
    trained = [n for n, o in outs.items() if "training the teacher recipe" in o]
    assert len(trained) == 1, outs
    (trainer,), (waiter,) = trained, [n for n in outs if n not in trained]
    key = next((tmp_path / "teachers").iterdir()).name
    assert f"waiting for the teacher {key} trained by sweep {trainer!r}" in outs[waiter], outs[waiter][-2000:]
    rt, rw = result(outs[trainer]), result(outs[waiter])
    assert not rt["cached"] and rw["cached"] and rt["checkpoint"] == rw["checkpoint"]
    assert len(list((tmp_path / "teachers").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_teacher_training_resumes_exactly(ray_cluster, tmp_path):
    epochs = 3
    whole = start(ray_cluster, tmp_path / "whole", "whole", epochs)
    out, _ = whole.communicate(timeout=400)
    assert whole.returncode == 0, out[-2000:]
    expect = result(out)["metrics"]

    killed = start(ray_cluster, tmp_path / "killed", "killed", epochs)
    log = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once the first epoch's checkpoint is written
        logs = (
            list((tmp_path / "killed" / "teachers").glob("*/teacher/metrics.jsonl"))
            if (tmp_path / "killed" / "teachers").exists()
            else []
        )
        if logs and logs[0].read_text().count("\n") >= 1 and (logs[0].parent / "checkpoint.pt").is_file():
            log = logs[0]
            break
        time.sleep(0.1)
    assert log is not None, "the training never wrote its first checkpoint"
    os.killpg(killed.pid, signal.SIGKILL)  # the sweep's driver: Ray then kills its job's workers
    killed.wait()
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed driver's teacher task kept its CPU"
        time.sleep(0.2)  # none may train on under the resumed run
    done = len(log.read_text().splitlines())
    assert done < epochs, "killed too late to test a resume"

    again = start(ray_cluster, tmp_path / "killed", "killed", epochs)
    out, _ = again.communicate(timeout=400)
    assert again.returncode == 0, out[-2000:]
    assert "resuming the teacher" in out
    got = result(out)["metrics"]
    for key in ("train_loss", "val_miou", "best_val_miou", "epoch"):
        assert got[key] == pytest.approx(expect[key], rel=1e-6, abs=1e-9), key
    lines = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(epochs))  # each epoch logged once
