"""Pascal VOC 2012 segmentation via torchvision's VOCSegmentation file lists (no download).

data.root may be the folder holding VOCdevkit/, VOCdevkit/ itself, or VOCdevkit/VOC2012/.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets import VOCSegmentation

from trainables.data.base import PairedFiles, require_dir
from trainables.data.errors import DataError
from trainables.data.labels import Convention

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
BACKGROUND = "background"  # VOC's class 0: every pixel of none of the 20 object classes
SPLITS = ("train", "trainval", "val")
LABELS = Convention()  # mask value = class index, 255 = the 'void' object outlines
LAYOUT = "VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt}"


def devkit_parent(root: Path) -> Path:
    """The folder that holds VOCdevkit/, accepting the devkit or year folder as well."""
    if root.name == "VOC2012" and root.parent.name == "VOCdevkit":
        return root.parent.parent
    if root.name == "VOCdevkit":
        return root.parent
    return root


class VOCSource(PairedFiles):
    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        root = devkit_parent(require_dir(Path(cfg["root"]).expanduser(), "data.root"))
        self.lut = LABELS.lookup(cfg)
        if split not in SPLITS:
            raise DataError(f"VOC split {split!r} is not one of {list(SPLITS)}")
        voc = root / "VOCdevkit" / "VOC2012"
        split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"VOC split file {str(split_file)!r} not found; expected {root}/{LAYOUT}")
        try:
            ds = VOCSegmentation(str(root), year="2012", image_set=split, download=False)
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(f"VOC under {str(root)!r} cannot be opened ({e}); expected {LAYOUT}") from None
        self.images, self.masks = [Path(p) for p in ds.images], [Path(p) for p in ds.targets]
        if not self.images:
            raise DataError(f"VOC split file {str(split_file)!r} lists no images")
        for path in self.images + self.masks:
            if not path.is_file():
                raise DataError(f"VOC file {str(path)!r} listed in {str(split_file)!r} is missing; expected {LAYOUT}")


def build(cfg: dict, split: str) -> VOCSource:
    return VOCSource(cfg, split)
