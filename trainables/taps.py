"""Feature taps: read a module's output by dotted path with a forward hook; model code untouched.

`leaf=True` cuts the graph at the tap (the output is detached and made a leaf that requires
grad), which is how the frozen teacher gets CAM gradients without building an autograd graph
through its encoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def get_module(model: nn.Module, path: str) -> nn.Module:
    """`model.get_submodule` with an error that lists nearby names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        import difflib

        close = difflib.get_close_matches(path, names, n=3)
        raise ValueError(
            f"layer {path!r} is not a module of {type(model).__name__}; close matches: {close or names[:8]}"
        ) from None


@contextmanager
def tap(model: nn.Module, paths: dict[str, str], leaf: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, `feats[name]` holds the latest output of module `paths[name]`."""
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, path in paths.items():

        def hook(_m, _inp, out, name=name):
            if leaf:
                out = out.detach().requires_grad_(True)
                feats[name] = out
                return out  # the rest of the forward starts its graph from this leaf
            feats[name] = out

        handles.append(get_module(model, path).register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
