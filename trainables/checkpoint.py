"""Checkpoints as plain dicts of tensors and primitives: loadable with `weights_only=True`, so a
checkpoint from elsewhere can never run code. Writes are atomic (temp file + rename)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not weights-only (one line)."""


def save(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Load with `weights_only=True`; a directory means its checkpoint.pt."""
    p = Path(path)
    if p.is_dir():
        p = p / FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler raises many types; all mean "refused"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {str(p)!r} is not a weights-only checkpoint: {first}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {str(p)!r} holds no 'model' state (not written by this tool?)")
    return state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/primitives (weights_only-loadable)."""
    np_state = np.random.get_state()
    out = {
        "python": torch.tensor(list(_flatten_py_state(random.getstate())), dtype=torch.int64),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, *internal, gauss = state["python"].tolist()
    random.setstate((version, tuple(internal), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten_py_state(s: tuple) -> list[int]:
    version, internal, gauss = s
    return [version, *internal, -1]  # gauss_next is dropped: nothing here draws from random.gauss
