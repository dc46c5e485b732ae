"""Per-epoch device figures: the CPU's peak resident set is reset at each epoch's start (so an
epoch that allocates less reports less), checked against /proc's VmRSS; the CUDA
branch (peak allocated memory, NVML utilisation sampled over the epoch) with fakes, as no GPU is
lent here; and the loop logs them with every epoch."""

from __future__ import annotations

import mmap
import sys
import time
import types

import numpy as np
import pytest
import torch

from trainables import device_stats as D


def rss_kb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_cpu_peak_is_the_epochs_own():
    stats = D.DeviceStats(torch.device("cpu"))
    assert D.GPU_UTIL not in (stats.start() or stats.stop())  # no utilisation figure on the CPU
    stats.start()
    # 300 MB of fresh anonymous pages, touched: a malloc'd array may reuse a resident free region of a
    # long-lived process (seen in a full test run: RSS moved neither on allocation nor on free)
    region = mmap.mmap(-1, 300 * 2**20)
    big = np.frombuffer(region, dtype=np.uint8)
    big[:] = 1
    held = rss_kb() / 1024  # resident while the array lives (the oracle: /proc's VmRSS)
    first = stats.stop()[D.PEAK_MEM]
    del big
    region.close()  # munmap: the pages leave the resident set
    after = rss_kb() / 1024
    stats.start()
    small = np.ones(10 * 2**20 // 8)
    second = stats.stop()[D.PEAK_MEM]
    del small
    assert held > after + 250  # the array was given back
    assert first >= held  # the first epoch's peak saw it
    assert after - 1 <= second < held - 250  # reset: the second epoch's peak never held it


def test_cuda_peak_and_nvml_utilisation_with_fakes(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: calls.append(("reset", i)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 3 * 2**20 * 100)
    rates = iter([40, 60, 50, 50, 50, 50, 50, 50, 50, 50] * 100)

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=next(rates)),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(D, "_nvml_handle", lambda index: "handle")
    stats = D.DeviceStats(torch.device("cuda", 1), period_s=0.01)
    stats.start()
    deadline = time.monotonic() + 10
    while len(stats._samples) < 3 and time.monotonic() < deadline:  # a loaded machine may starve the thread
        time.sleep(0.01)
    out = stats.stop()
    assert calls == [("reset", 1)] and out[D.PEAK_MEM] == 300.0
    assert 45 <= out[D.GPU_UTIL] <= 50  # the mean of what was sampled: 40, 60, then 50s


def test_without_nvml_there_is_no_utilisation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: 0)
    monkeypatch.setattr(D, "_nvml_handle", lambda index: None)
    stats = D.DeviceStats(torch.device("cuda", 0))
    stats.start()
    assert stats.stop() == {D.PEAK_MEM: 0.0}
