"""Per-epoch device figures a user sizes batches and fractional GPUs from: the epoch's peak memory
and, on CUDA, the GPU's mean utilisation over the epoch.

Peak memory: on CUDA `torch.cuda.max_memory_allocated`, reset at each epoch's start; on the CPU the
process's peak resident set (VmHWM), reset at each epoch's start through /proc/self/clear_refs
(Linux 4.0+); where /proc is missing, the process's lifetime peak (`resource.getrusage`).
Utilisation: NVML's `nvmlDeviceGetUtilizationRates` sampled every `period_s` by a daemon thread
during the epoch (the percent of time a kernel ran), averaged at its end; absent without NVML.
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import torch

PEAK_MEM = "peak_mem_mb"  # the metric names the loop logs and the report shows
GPU_UTIL = "gpu_util_pct"
_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


class DeviceStats:
    """`start()` at an epoch's start, `stop()` after its last step: {PEAK_MEM: MB, GPU_UTIL: %}."""

    def __init__(self, device: torch.device, period_s: float = 0.5) -> None:
        self.cuda = device.type == "cuda"
        self.index = device.index if device.index is not None else (torch.cuda.current_device() if self.cuda else 0)
        self.period_s = period_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = _nvml_handle(self.index) if self.cuda else None

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.index)
        else:
            _reset_peak_rss()
        if self._nvml is not None:
            self._samples, self._stop = [], threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> dict[str, float]:
        out = {PEAK_MEM: self.peak_mb()}
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._samples:
                out[GPU_UTIL] = sum(self._samples) / len(self._samples)
        return out

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.index) / 2**20
        return peak_rss_kb() / 1024

    def _sample(self) -> None:
        import pynvml

        while True:
            try:
                self._samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu))
            except pynvml.NVMLError:
                return
            if self._stop.wait(self.period_s):
                return


def peak_rss_kb() -> float:
    """This process's peak resident set since the last reset (VmHWM), else its lifetime peak."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _reset_peak_rss() -> None:
    try:
        _CLEAR.write_text("5")  # 5: reset the peak resident set to the current one
    except OSError:
        pass


def _nvml_handle(index: int):
    """NVML's handle of CUDA device `index`, found by PCI address (CUDA_VISIBLE_DEVICES renumbers
    devices, NVML does not), or None where there is no NVML or it does not list the device."""
    try:
        import pynvml

        pynvml.nvmlInit()
        p = torch.cuda.get_device_properties(index)
        return pynvml.nvmlDeviceGetHandleByPciBusId(f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0")
    except Exception:  # no driver, no NVML, an address NVML does not list: no utilisation figure
        return None
