"""Cityscapes (fine annotations) in its official layout; the 34 label ids mapped to the 19 train ids.

data.root holds leftImg8bit/ and gtFine/ (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip
unpacked side by side). Splits: train (2,975) and val (500); the test split's masks are not public.
"""

from __future__ import annotations

from pathlib import Path

from trainables.constants import IGNORE_INDEX
from trainables.data.base import PairedFiles, require_dir
from trainables.data.errors import DataError
from trainables.data.labels import Convention

# The official label definitions (cityscapesScripts' labels.py): (label id, name, train id);
# train id None = ignored in training and evaluation. License plate (id -1) is not in labelIds PNGs.
LABEL_TABLE = [
    (0, "unlabeled", None), (1, "ego vehicle", None), (2, "rectification border", None),
    (3, "out of roi", None), (4, "static", None), (5, "dynamic", None), (6, "ground", None),
    (7, "road", 0), (8, "sidewalk", 1), (9, "parking", None), (10, "rail track", None),
    (11, "building", 2), (12, "wall", 3), (13, "fence", 4), (14, "guard rail", None),
    (15, "bridge", None), (16, "tunnel", None), (17, "pole", 5), (18, "polegroup", None),
    (19, "traffic light", 6), (20, "traffic sign", 7), (21, "vegetation", 8), (22, "terrain", 9),
    (23, "sky", 10), (24, "person", 11), (25, "rider", 12), (26, "car", 13), (27, "truck", 14),
    (28, "bus", 15), (29, "caravan", None), (30, "trailer", None), (31, "train", 16),
    (32, "motorcycle", 17), (33, "bicycle", 18),
]  # fmt: skip
TRAIN_IDS = {i: IGNORE_INDEX if t is None else t for i, _, t in LABEL_TABLE}
CLASSES = [name for _, name, t in sorted((r for r in LABEL_TABLE if r[2] is not None), key=lambda r: r[2])]
BACKGROUND = None  # a street scene: every pixel is some stuff or thing class (or ignored)
LABELS = Convention(TRAIN_IDS)  # data.label_map / ignore_ids name label ids (0..33), targets train ids
SPLITS = ("train", "val")
IMAGE_SUFFIX, MASK_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
LAYOUT = (
    "leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png, gtFine/<split>/<city>/<...>_gtFine_labelIds.png"
)


class CityscapesSource(PairedFiles):
    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        root = require_dir(Path(cfg["root"]).expanduser(), "data.root")
        self.lut = LABELS.lookup(cfg)
        if split not in SPLITS:
            why = " (its masks are not public)" if split == "test" else ""
            raise DataError(f"Cityscapes split {split!r}{why} is not one of {list(SPLITS)}")
        img_dir = root / "leftImg8bit" / split
        mask_dir = root / "gtFine" / split
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise DataError(f"Cityscapes split folders {str(img_dir)!r} and {str(mask_dir)!r} expected: {LAYOUT}")
        self.images = sorted(img_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self.images:
            raise DataError(f"{str(img_dir)!r} holds no <city>/*{IMAGE_SUFFIX} images; expected {LAYOUT}")
        self.masks = [mask_dir / p.parent.name / (p.name[: -len(IMAGE_SUFFIX)] + MASK_SUFFIX) for p in self.images]
        self.check_masks()


def build(cfg: dict, split: str) -> CityscapesSource:
    return CityscapesSource(cfg, split)
