"""ADE20K as released for the MIT Scene Parsing Benchmark (ADEChallengeData2016), 150 classes.

data.root may be ADEChallengeData2016/ or the folder holding it: images/{training,validation}/
ADE_*.jpg with annotations/{training,validation}/ADE_*.png. Splits: train (20,210) and val
(2,000); the test release has no masks. Masks store 0 for 'other' and k for class k-1:
reduce_zero_label (0 ignored, the rest shifted down), as mmsegmentation reads them.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data.base import PairedFiles, require_dir
from trainables.data.errors import DataError
from trainables.data.labels import Convention

# objectInfo150's first name of each class, in id order (mask id k = class k-1)
CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip
BACKGROUND = None  # 'other' (0) is ignored, not a class
LABELS = Convention(reduce_zero_label=True)
SPLITS = {"train": "training", "val": "validation"}
LAYOUT = "ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}"


class ADE20KSource(PairedFiles):
    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        root = require_dir(Path(cfg["root"]).expanduser(), "data.root")
        root = root if root.name == "ADEChallengeData2016" else root / "ADEChallengeData2016"
        self.lut = LABELS.lookup(cfg)
        if split not in SPLITS:
            why = " (the test release has no masks)" if split == "test" else ""
            raise DataError(f"ADE20K split {split!r}{why} is not one of {list(SPLITS)}")
        img_dir, mask_dir = root / "images" / SPLITS[split], root / "annotations" / SPLITS[split]
        if not img_dir.is_dir():
            raise DataError(f"ADE20K folder {str(img_dir)!r} not found; expected {LAYOUT}")
        self.images = sorted(img_dir.glob("ADE_*.jpg"))
        if not self.images:
            raise DataError(f"ADE20K folder {str(img_dir)!r} holds no ADE_*.jpg images")
        self.masks = [mask_dir / f"{p.stem}.png" for p in self.images]
        self.check_masks(LAYOUT)


def build(cfg: dict, split: str) -> ADE20KSource:
    return ADE20KSource(cfg, split)
