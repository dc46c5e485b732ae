"""How the step bench measures: wall time with the device drained, the most bytes a step holds,
host-device synchronisations, a profile of phases and operators, the machine (docstring of
orchestrator.bench.steps)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import torch

PHASES = (
    "step.student_forward",
    "step.teacher_forward",
    "step.losses",
    "step.backward",
    "step.optimizer",
    "cam.teacher",
    "cam.student",
)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of fn() with the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most bytes allocated by fn() on top of what was live before it (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def host_syncs(fn: Callable[[], object], device: torch.device) -> list[str] | None:
    """CUDA: the host-device synchronisations fn() makes (torch.cuda sync debug mode); None elsewhere."""
    if device.type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def profile_step(fn: Callable[[], object], device: torch.device, rows: int, steps: int = 2) -> dict:
    """Operator table (self time) and the step's phases (record_function labels) over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    avg = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    phases = {e.key: e.cpu_time_total / 1e6 / steps for e in avg if e.key in PHASES}
    return {"table": avg.table(sort_by=sort, row_limit=rows, max_name_column_width=48), "phases_s": phases}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
