"""Time spent in a part of the training step (the saliency term), without a host sync per step.

On CUDA, host timers around enqueued work measure enqueue time, not what the device spends, and
an op that waits on the device (e.g. `eigh`) would inflate only its own method's figure. So a
`SpanTimer` records a pair of CUDA timing events around each span on the current stream and
reads them (`elapsed_time`) only in `seconds()`, which the caller runs after its own
`torch.cuda.synchronize()`: once per epoch in the worker loop, once per timed step in the bench.
On other devices it adds host `perf_counter` seconds as each span ends (there the host does the
work it times).
"""

from __future__ import annotations

import time

import torch


class SpanTimer:
    """Total time of the spans it is entered around (`with timer: ...`); merge timers with `add`."""

    event_class = torch.cuda.Event  # the tests swap in a fake where there is no GPU

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.host_s = 0.0
        self.events: list[tuple] = []  # (start, end) CUDA event pairs, read in seconds()
        self._open: object | None = None

    def __enter__(self) -> SpanTimer:
        if self._open is not None:
            raise RuntimeError("SpanTimer spans do not nest")
        if self.cuda:
            self._open = self.event_class(enable_timing=True)
            self._open.record()
        else:
            self._open = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        start, self._open = self._open, None
        if self.cuda:
            end = self.event_class(enable_timing=True)
            end.record()
            self.events.append((start, end))
        else:
            self.host_s += time.perf_counter() - start

    def add(self, other: SpanTimer) -> SpanTimer:
        """Take in another timer's spans (e.g. one step's into the epoch's); nothing is read yet."""
        self.host_s += other.host_s
        self.events.extend(other.events)
        return self

    def seconds(self) -> float:
        """Total seconds of all spans. Waits for the recorded events, which costs nothing after a
        `torch.cuda.synchronize()`; call it once, when the caller syncs anyway."""
        for _, end in self.events:
            end.synchronize()
        return self.host_s + sum(start.elapsed_time(end) for start, end in self.events) / 1000.0
