"""Label conventions: the ids a dataset's mask files hold -> the class indices the trainer uses.

Each kind that reads mask files declares its `Convention` (Cityscapes: label ids -> 19 train ids;
ADE20K: reduce_zero_label; CamVid: void 11 ignored); the spec's `data.label_map`,
`data.ignore_ids` and `data.reduce_zero_label` adjust it. The result is one lookup table per
source, applied to each mask as a single numpy index (`lut[mask]`), so a map of any size costs
one pass over the pixels. Validated here, once, for the spec (`check`) and the loader alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainables.constants import IGNORE_INDEX
from trainables.data.errors import DataError

MAX_ID = 65535  # masks are 8- or 16-bit PNGs
KEYS = ("label_map", "ignore_ids", "reduce_zero_label")


def reduce_zero() -> dict[int, int]:
    """mmsegmentation's reduce_zero_label: 0 -> ignore, k -> k-1, and 255 stays ignore."""
    return {0: IGNORE_INDEX, **{k: k - 1 for k in range(1, IGNORE_INDEX)}}


@dataclass(frozen=True)
class Convention:
    """How a kind's masks name classes: `native` maps the stored ids that are not already class
    indices; `reduce_zero_label` is the kind's fixed setting, None where the spec chooses (a
    folder, whose data.classes name the reduced ids)."""

    native: dict[int, int] = field(default_factory=dict)
    reduce_zero_label: bool | None = False

    def reduces(self, cfg: dict) -> bool:
        own = cfg.get("reduce_zero_label")
        return bool(self.reduce_zero_label if own is None else own)

    def table(self, cfg: dict) -> dict[int, int]:
        """stored id -> class index or 255: the spec's entries over the kind's own (or the shift)."""
        table = reduce_zero() if self.reduces(cfg) else dict(self.native)
        table.update({int(i): IGNORE_INDEX for i in cfg.get("ignore_ids") or ()})
        table.update({int(k): int(v) for k, v in (cfg.get("label_map") or {}).items()})
        return table

    def lookup(self, cfg: dict) -> np.ndarray | None:
        """The table as a uint16 array over every id (identity where it says nothing); None when
        it is the identity, so masks that need no map are not copied."""
        table = {k: v for k, v in self.table(cfg).items() if k != v}
        if not table:
            return None
        lut = np.arange(MAX_ID + 1, dtype=np.uint16)
        lut[np.fromiter(table, np.int64)] = np.fromiter(table.values(), np.int64)
        return lut

    def check(self, cfg: dict, num_classes: int) -> None:
        """One-line DataError for a spec whose label keys cannot hold: see `check_keys`."""
        kind = cfg.get("kind")
        fixed, own = self.reduce_zero_label, cfg.get("reduce_zero_label")
        if fixed is not None and own is not None and own != fixed:
            raise DataError(
                f"data.reduce_zero_label: data.kind={kind!r} fixes it to {str(fixed).lower()} (its class "
                "list is declared for that); leave it out, or use data.label_map / data.ignore_ids"
            )
        check_keys(cfg, num_classes)


def check_keys(cfg: dict, num_classes: int) -> None:
    """Ids inside 0..MAX_ID, each named once across label_map and ignore_ids, and every target a
    class index (0..num_classes-1) or 255."""
    ignore = [int(i) for i in cfg.get("ignore_ids") or ()]
    mapped = {int(k): int(v) for k, v in (cfg.get("label_map") or {}).items()}
    for key, ids in (("data.ignore_ids", ignore), ("data.label_map", list(mapped))):
        bad = [i for i in ids if not 0 <= i <= MAX_ID]
        if bad:
            raise DataError(f"{key} names id {bad[0]}; mask ids are 0..{MAX_ID}")
    twice = sorted({i for i in ignore if ignore.count(i) > 1} | (set(ignore) & set(mapped)))
    if twice:
        where = "data.ignore_ids twice" if ignore.count(twice[0]) > 1 else "data.ignore_ids and data.label_map"
        raise DataError(f"id {twice[0]} is named in {where}; name each mask id once")
    for src, dst in mapped.items():
        if not (0 <= dst < num_classes or dst == IGNORE_INDEX):
            raise DataError(
                f"data.label_map maps {src} to {dst}; allowed targets are 0..{num_classes - 1} "
                f"(the class indices) or {IGNORE_INDEX} (ignore)"
            )


def apply(lut: np.ndarray | None, arr: np.ndarray, name: str) -> np.ndarray:
    """`arr` through the lookup table (vectorised); ids outside 0..MAX_ID are a DataError naming `name`."""
    if lut is None:
        return arr
    if arr.dtype != np.uint8 and arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_ID):
        bad = int(arr.min()) if int(arr.min()) < 0 else int(arr.max())
        raise DataError(f"mask {name!r} holds id {bad}; mask ids are 0..{MAX_ID}")
    return lut[arr]
