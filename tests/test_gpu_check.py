"""`make gpu-check` (scripts/gpu_check.py) without a GPU: it refuses in one line, the sweeps it would
run are valid specs (the orchestrator's own --dry-run), its checks, JSON and table work on made-up
results, its bench reader reads a real (CPU) bench JSON, and a one-process trial lets go of its
models and CUDA cache when it ends."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.cli import main
from orchestrator.run import trial
from orchestrator.run.failures import fatal_cause

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gc_mod = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gc_mod  # dataclasses look their module up
_spec.loader.exec_module(gc_mod)


def test_refuses_without_cuda_in_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check needs a CUDA GPU: torch.cuda.is_available() is False"), (
        r.stderr
    )
    assert r.stdout == ""


def test_make_target_runs_the_script():
    # --no-print-directory: under CI's `make test` (MAKELEVEL set) make would also print "Entering directory"
    r = subprocess.run(
        ["make", "-n", "--no-print-directory", "gpu-check"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == ".venv/bin/python scripts/gpu_check.py"


def test_plan_skips_ddp_on_one_gpu_and_names_every_step(tmp_path):
    names = [s.name for s in gc_mod.plan(1, tmp_path)]
    assert names == ["bench-eager", "bench-compile", "shared-gpu", "ddp-nccl", "oom"]
    skips = {s.name: s.skip for s in gc_mod.plan(1, tmp_path)}
    assert skips["ddp-nccl"] == "needs 2 GPUs, 1 visible" and not any(v for k, v in skips.items() if k != "ddp-nccl")
    assert not any(s.skip for s in gc_mod.plan(2, tmp_path))
    bench = gc_mod.plan(2, tmp_path)[1]
    assert bench.argv[:3] == ["bench", "--device", "cuda"] and "--compile" in bench.argv


@pytest.mark.parametrize("step", ["shared-gpu", "ddp-nccl", "oom"])
def test_each_sweep_it_runs_passes_the_orchestrators_dry_run(step, tmp_path, capsys):
    (s,) = [s for s in gc_mod.plan(2, tmp_path) if s.name == step]
    assert s.argv[0] == "sweep" and "train.run.device=cuda" in s.argv
    assert main([*s.argv, "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    expected = {
        "shared-gpu": ["1 CPU, 0.5 GPU", "4 trials"],
        "ddp-nccl": ["2 Ray Train worker(s) x (1 CPU, 1 GPU)", "DDP over the workers"],
        "oom": ["data.crop", f"64, {gc_mod.OOM_CROP}", "2 trials"],
    }[step]
    for text in expected:
        assert text in out, (text, out)


def test_bench_flags_are_the_bench_commands_own():
    from orchestrator.cli import build_parser

    for s in gc_mod.plan(2, Path("results/gpu-check/x"))[:2]:
        args = build_parser().parse_args(s.argv)
        assert args.device == "cuda" and args.sweep is False and args.crop == 512 and args.batch == 8


OOM_TRACE = """Failure # 1 (occurred at 2026-01-01_00-00-00)
ray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)
  File "trainables/step.py", line 80, in train_step
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 GiB. GPU 0 has a total capacity of 139.72 GiB
"""


def test_oom_hint_parser_reads_the_projects_oom_line():
    line = fatal_cause(OOM_TRACE)  # what the sweep puts in the trial's xgd.error tag
    assert gc_mod.oom_failure(line)
    assert not gc_mod.oom_failure("torch.OutOfMemoryError: CUDA out of memory")  # no hint
    assert not gc_mod.oom_failure(fatal_cause("FloatingPointError: training loss became nan at epoch 1; trial stopped"))
    assert not gc_mod.oom_failure(None)


def trial_row(status: str, crop: int, start: float, end: float, gpu: str = "0", error: str | None = None) -> dict:
    dev = f"cuda:0 NVIDIA H200 (CUDA_VISIBLE_DEVICES={gpu})"
    return dict(
        trial="t",
        status=status,
        crop=str(crop),
        device=dev,
        error=error,
        start_s=start,
        end_s=end,
        peak_mem_mb=812.0,
        gpu_util_pct=57.0,
    )


def figures(rows: list[dict]) -> dict:
    return gc_mod.trial_figures(rows)


def test_checks_on_made_up_sweeps():
    ok = [trial_row("FINISHED", 64, a, a + 10) for a in (0, 5, 20, 25)]  # pairs overlap on GPU 0
    assert figures(ok)["most_at_once_on_one_gpu"] == 2 and gc_mod.check_shared(figures(ok)) == ""
    apart = [trial_row("FINISHED", 64, 0, 10, gpu=g) for g in "0123"]  # one trial per GPU
    assert "no two trials" in gc_mod.check_shared(figures(apart))
    assert "3 of 4" in gc_mod.check_shared(figures(ok[:3]))
    blind = [{**r, "gpu_util_pct": None} for r in ok]  # e.g. NVML missing on the node
    assert "4 finished trial(s) logged no peak_mem_mb or gpu_util_pct" in gc_mod.check_shared(figures(blind))

    oom_line = fatal_cause(OOM_TRACE)
    good = [trial_row("FINISHED", 64, 0, 5), trial_row("FAILED", gc_mod.OOM_CROP, 6, 8, error=oom_line)]
    assert gc_mod.check_oom(figures(good)) == ""
    both = [trial_row("FAILED", 64, 0, 5, error=oom_line), good[1]]
    assert "did not finish" in gc_mod.check_oom(figures(both))
    no_hint = [good[0], trial_row("FAILED", gc_mod.OOM_CROP, 6, 8, error="RuntimeError: boom")]
    assert "without the OOM hint" in gc_mod.check_oom(figures(no_hint))


def test_report_json_and_summary_table(tmp_path):
    bench = gc_mod.Outcome(
        "bench-eager",
        "python -m orchestrator bench --device cuda",
        "every variant",
        0,
        61.0,
        {
            "gpu": "NVIDIA H200",
            "variants": {
                "pi": {"s_per_step": 0.012, "peak_mb": 900.0},
                "xgd_gradcam": {"s_per_step": 0.013, "peak_mb": 950},
            },
            "targets": {"xgd_gradcam_vs_pi": {"ratio": 1.08, "met": True}},
        },
        "ok",
    )
    sweep = gc_mod.Outcome(
        "oom",
        "python -m orchestrator sweep ...",
        "fails alone",
        0,
        90.0,
        figures([trial_row("FINISHED", 64, 0, 1)]),
        "failed",
        "x",
    )
    skipped = gc_mod.Outcome(
        "ddp-nccl", "python -m orchestrator sweep ...", "2 GPUs", None, 0.0, {}, "skipped", "needs 2 GPUs, 1 visible"
    )
    path = gc_mod.write_report(
        [bench, sweep, skipped], {"gpus": ["NVIDIA H200"]}, tmp_path / "gpu-check", "20260101-000000"
    )
    assert path == tmp_path / "gpu-check" / "20260101-000000.json"
    data = json.loads(path.read_text())
    assert [s["step"] for s in data["steps"]] == ["bench-eager", "oom", "ddp-nccl"]
    assert data["steps"][0]["rc"] == 0 and data["steps"][0]["seconds"] == 61.0 and data["steps"][2]["rc"] is None
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(gc_mod.summary([bench, sweep, skipped]))
    text = console.export_text()
    assert "pi 12.0 ms, 900 MB" in text and "xgd_gradcam_vs_pi 1.08 met" in text
    assert "needs 2 GPUs, 1 visible" in text and "1 finished, 0 failed" in text


# ------------------------------------------------------------------ the one-process executor lets go


class Model:
    pass


def test_one_process_trial_releases_a_failed_loops_models(tmp_path):
    refs = []

    def loop():
        model = Model()  # what a loop's frame holds: models, optimizer, batches
        refs.append(weakref.ref(model))
        raise ValueError("the loop failed")

    with pytest.raises(ValueError) as info:
        trial.run_and_release(loop, str(tmp_path / "fatal.txt"))
    assert refs[0]() is None  # the traceback kept by pytest no longer holds the loop's locals
    assert info.value.__traceback__ is not None


def test_cuda_cache_freed_after_each_trial_once_cuda_is_used(monkeypatch, tmp_path):
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    trial.run_and_release(lambda: None, str(tmp_path / "a.txt"))
    assert calls == []  # CUDA never used: nothing to free
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    trial.run_and_release(lambda: None, str(tmp_path / "b.txt"))
    with pytest.raises(RuntimeError):
        trial.run_and_release(lambda: (_ for _ in ()).throw(RuntimeError("x")), str(tmp_path / "c.txt"))
    assert calls == ["empty", "empty"]


@pytest.mark.slow  # a few seconds of CPU: two tiny bench variants
def test_bench_figures_read_the_bench_commands_own_json(tmp_path):
    """The bench-compile step's command, on the CPU and tiny (no --compile: slow on a CPU), then its
    figures read back from the JSON the bench wrote."""
    (s,) = [s for s in gc_mod.plan(1, tmp_path, crop=32, batch=2) if s.name == "bench-compile"]
    argv = [a for a in s.argv if a != "--compile"]
    argv[argv.index("cuda")] = "cpu"
    assert main([*argv, "--iters", "1", "--warmup", "1", "--teacher", "r18", "--threads", "1"]) == 0
    f = s.figures(s)
    assert set(f["variants"]) == {"pi", "xgd_gradcam", "xgd_gradcam@cache"} and gc_mod.check_bench(f) == ""
    assert f["variants"]["pi"]["s_per_step"] > 0
    assert set(f["targets"]) == {"xgd_gradcam_vs_pi", "xgd_gradcam_cached_vs_pi"}
    assert "cached-teacher" in gc_mod.check_bench({**f, "variants": {"pi": f["variants"]["pi"]}})
