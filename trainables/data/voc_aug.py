"""Pascal VOC 2012 augmented with SBD: the 10,582-image `train_aug` split, VOC 2012 val for val.

Under VOCdevkit/VOC2012/ (data.root as for `voc`): SegmentationClassAug/<id>.png (SBD's masks
converted to VOC's index PNGs, one per image of train_aug and val) and the train_aug list,
ImageSets/SegmentationAug/train_aug.txt or ImageSets/Segmentation/train_aug.txt, one id a line or
DeepLab's `/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png` pairs. val is VOC 2012's own
(ImageSets/Segmentation/val.txt, SegmentationClass/), which train_aug must not overlap.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data.base import PairedFiles, require_dir
from trainables.data.errors import DataError
from trainables.data.voc import BACKGROUND, CLASSES, LABELS, devkit_parent

__all__ = ["BACKGROUND", "CLASSES", "LABELS", "build"]
LISTS = ("ImageSets/SegmentationAug/train_aug.txt", "ImageSets/Segmentation/train_aug.txt")
SPLITS = ("train", "val")  # train = train_aug
LAYOUT = "VOCdevkit/VOC2012/{JPEGImages, SegmentationClassAug, SegmentationClass, ImageSets/...}"


def read_ids(path: Path) -> list[str]:
    """Ids of a split list: the stem of each line's first field (an id or an image path)."""
    lines = (ln.split()[0] for ln in path.read_text().splitlines() if ln.strip())
    return [Path(first.replace("\\", "/")).stem for first in lines]


class VOCAugSource(PairedFiles):
    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        voc = devkit_parent(require_dir(Path(cfg["root"]).expanduser(), "data.root")) / "VOCdevkit" / "VOC2012"
        self.lut = LABELS.lookup(cfg)
        if split not in SPLITS:
            raise DataError(f"VOC-aug split {split!r} is not one of {list(SPLITS)} (train is SBD's train_aug)")
        val_file = voc / "ImageSets" / "Segmentation" / "val.txt"
        if split == "val":
            if not val_file.is_file():
                raise DataError(f"VOC 2012 val list {str(val_file)!r} not found; expected {LAYOUT}")
            ids, mask_dir, listed = read_ids(val_file), voc / "SegmentationClass", val_file
        else:
            listed = next((voc / p for p in LISTS if (voc / p).is_file()), None)
            if listed is None:
                raise DataError(f"train_aug.txt not found under {str(voc)!r} (looked in {', '.join(LISTS)})")
            ids, mask_dir = read_ids(listed), voc / "SegmentationClassAug"
            seen = set(read_ids(val_file)) & set(ids) if val_file.is_file() else set()
            if seen:
                raise DataError(
                    f"{str(listed)!r} lists {len(seen)} VOC 2012 val images (e.g. {sorted(seen)[0]}); "
                    "train_aug must hold none of them"
                )
        if not ids:
            raise DataError(f"split list {str(listed)!r} lists no images")
        self.images = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        self.masks = [mask_dir / f"{i}.png" for i in ids]
        for path in self.images + self.masks:
            if not path.is_file():
                raise DataError(f"VOC-aug file {str(path)!r} listed in {str(listed)!r} is missing; expected {LAYOUT}")


def build(cfg: dict, split: str) -> VOCAugSource:
    return VOCAugSource(cfg, split)
