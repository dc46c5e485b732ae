"""Methods as lists of term names: XGD and its ablations, the baselines, and each baseline
combined with XGD (`xgd+<baseline>`: the union of both term lists, XGD's first).

The total loss of a method is sum(weight(term) * term) over its terms; a term whose weight is 0
is not computed at all (beta = 0 computes no CAM), which is how optional parts (SKD's holistic
term, CWD on features) stay off by default. Names only: the terms register in their modules.
"""

from __future__ import annotations

XGD: dict[str, tuple[str, ...]] = {
    "none": ("seg",),
    "pi": ("seg", "pi"),
    "xgd": ("seg", "pi", "sa"),
}

BASELINES: dict[str, tuple[str, ...]] = {
    "skd": ("seg", "pi", "skd_pa", "skd_ho"),  # PI weight = distill.alpha; skd_ho off unless weights.skd_ho > 0
    "cwd": ("seg", "cwd", "cwd_feat"),  # cwd_feat is off unless weights.cwd_feat > 0
    "at": ("seg", "at"),
    "cat": ("seg", "cat"),
    "attnfd": ("seg", "attnfd"),
}


def union(*methods: tuple[str, ...]) -> tuple[str, ...]:
    """The terms of several methods, each once, in first-seen order."""
    return tuple(dict.fromkeys(t for m in methods for t in m))


METHODS: dict[str, tuple[str, ...]] = {
    **XGD,
    **BASELINES,
    **{f"xgd+{name}": union(XGD["xgd"], terms) for name, terms in BASELINES.items()},
}


# the distill keys each term reads (besides its own entries in distill.weights): a key no term of a
# method reads is not a setting of that method (a PI run has no beta and no CAM), which the report
# shows as empty
READS: dict[str, tuple[str, ...]] = {
    "pi": ("alpha", "tau"),
    "sa": ("beta", "cam", "cam_target", "cam_classes", "cam_reduce", "cam_bn_grad", "teacher_layer", "student_layer"),
}


def ignored_keys(method: str) -> set[str]:
    """The distill keys in READS that no term of `method` reads (empty for an unknown method)."""
    if method not in METHODS:
        return set()
    used = {k for term in METHODS[method] for k in READS.get(term, ())}
    return {k for keys in READS.values() for k in keys} - used
