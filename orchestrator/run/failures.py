"""Why a trial failed, in one line, and which failures a retry cannot fix.

Tune appends every failure of a trial to its error file ("Failure # n" blocks), each holding Ray's
wrappers around the worker's own traceback; the line worth showing is the worker's root cause.
A diverged loss (the loop raises FloatingPointError) or CUDA out-of-memory comes back the same
on every retry, so such a trial is failed at once instead of being retried (see orchestrator.run.trial).
"""

from __future__ import annotations

import re

# root cause -> what to do about it ("" : the message says it all); these are never retried
FATAL = {
    "OutOfMemoryError": "lower data.batch_size or data.crop, run fewer trials at once (resources.max_concurrent) "
    "or give each trial more of a GPU (resources.gpus_per_worker)",
    "FloatingPointError": "",  # the loop's own message says what diverged and at which epoch
    "FatalTrialError": "",  # a retry of a trial that already failed fatally (the message is the first line)
}
_EXC = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception))(?::\s*(.*))?$")


class FatalTrialError(RuntimeError):
    """Raised by a retried trial whose earlier attempt failed in a way a retry cannot fix."""


def _causes(text: str) -> list[tuple[str, str]]:
    last = text.rsplit("\nFailure # ", 1)[-1]  # the latest failure only
    lines = [ln.strip() for ln in last.splitlines() if ln.strip()]
    return [(m.group(1), ln) for ln in lines if (m := _EXC.match(ln))]


def fatal_cause(text: str) -> str | None:
    """The one-line reason when the error text holds a cause no retry fixes, else None."""
    for name, ln in _causes(text):
        if name in FATAL:
            if name == "FatalTrialError":
                return ln.split(": ", 1)[-1][:400]
            return f"{ln[:250]}; try: {FATAL[name]}" if FATAL[name] else ln[:300]
    return None


def summarize_error(text: str) -> str:
    """One line for a failed trial: the root cause (not the Ray wrappers around it), with a hint
    for causes that have a known remedy."""
    fatal = fatal_cause(text)
    if fatal:
        return fatal
    own = [ln for _, ln in _causes(text) if not ln.startswith("ray.")]  # Ray's wrappers say "a worker failed"
    if own:
        return own[-1][:300]
    lines = [ln.strip() for ln in text.rsplit("\nFailure # ", 1)[-1].splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "failed"
