"""Loss terms registered by name, and methods as lists of terms.

`registry` holds the registry (Step, Term, TERMS, register, active_terms) and imports no term;
`methods` names each method's terms; every other module is one group of terms and registers
them on import: seg and pi (`seg_pi`), XGD's saliency term (`saliency`), the baselines (`skd`,
`holistic`, `cwd`, `at`, `cat`, `attnfd`) with their shared `hyperparams`, `roles` (tapped
layers) and `features`. This package imports them all, so importing it registers every term.
"""

from trainables.losses import at, attnfd, cat, cwd, holistic, saliency, seg_pi, skd  # noqa: F401  (register terms)
from trainables.losses.hyperparams import HYPERPARAMS
from trainables.losses.methods import BASELINES, METHODS
from trainables.losses.registry import TERMS, Step, Taps, Term, active_terms, register, weight_from
from trainables.losses.roles import decoder_output
from trainables.losses.seg_pi import cross_entropy, pixel_kl

__all__ = [
    "BASELINES",
    "HYPERPARAMS",
    "METHODS",
    "TERMS",
    "Step",
    "Taps",
    "Term",
    "active_terms",
    "cross_entropy",
    "decoder_output",
    "pixel_kl",
    "register",
    "weight_from",
]
