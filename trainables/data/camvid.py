"""CamVid in the SegNet layout: 11 classes, void stored as 11 and ignored.

data.root holds train/, trainannot/, val/, valannot/, test/, testannot/ (the CamVid folder of the
SegNet tutorial): each image <name>.png with its mask of the same name in <split>annot/.
Splits: train (367), val (101), test (233).
"""

from __future__ import annotations

from pathlib import Path

from trainables.constants import IGNORE_INDEX
from trainables.data.base import PairedFiles, list_images, require_dir
from trainables.data.errors import DataError
from trainables.data.labels import Convention

CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]  # fmt: skip
VOID = 11  # the SegNet masks' 12th value, 'unlabelled'
BACKGROUND = None  # a street scene: every labelled pixel is one of the 11 classes
LABELS = Convention({VOID: IGNORE_INDEX})
SPLITS = ("train", "val", "test")
LAYOUT = "<split>/<name>.png with <split>annot/<name>.png (split: train, val, test)"


class CamVidSource(PairedFiles):
    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        root = require_dir(Path(cfg["root"]).expanduser(), "data.root")
        self.lut = LABELS.lookup(cfg)
        if split not in SPLITS:
            raise DataError(f"CamVid split {split!r} is not one of {list(SPLITS)}")
        img_dir = root / split
        if not img_dir.is_dir():
            raise DataError(f"CamVid split folder {str(img_dir)!r} not found; expected {LAYOUT}")
        mask_dir = root / f"{split}annot"
        self.images = list_images(img_dir)
        if not self.images:
            raise DataError(f"CamVid split folder {str(img_dir)!r} holds no images")
        self.masks = [mask_dir / f"{p.stem}.png" for p in self.images]
        self.check_masks(LAYOUT)


def build(cfg: dict, split: str) -> CamVidSource:
    return CamVidSource(cfg, split)
