"""A plain folder of images and index masks: root/<split>/images/*, root/<split>/masks/<stem>.png."""

from __future__ import annotations

from pathlib import Path

from trainables.data.base import PairedFiles, list_images, require_dir
from trainables.data.errors import DataError
from trainables.data.labels import Convention

# mask value = index into data.classes; data.reduce_zero_label: true shifts them (0 = ignore)
LABELS = Convention(reduce_zero_label=None)


def classes(cfg: dict) -> list[str]:
    names = cfg.get("classes")
    if not names:
        raise DataError("data.classes (list of class names, index = mask value) is required for data.kind='folder'")
    return list(names)


def background(cfg: dict) -> str | None:
    """The class `data.background` names (None: the folder has none, e.g. sky/road/car street scenes)."""
    return cfg.get("background")


class FolderSource(PairedFiles):
    def __init__(self, cfg: dict, split: str):
        self.classes = classes(cfg)
        self.lut = LABELS.lookup(cfg)
        root = require_dir(Path(cfg["root"]).expanduser(), "data.root")
        img_dir = require_dir(root / split / "images", f"split {split!r} image folder")
        mask_dir = root / split / "masks"
        self.images = list_images(img_dir)
        if not self.images:
            raise DataError(f"image folder {str(img_dir)!r} holds no images (.jpg, .png, ...)")
        seen: dict[str, Path] = {}
        for img in self.images:
            if img.stem in seen:
                raise DataError(f"images {str(seen[img.stem])!r} and {str(img)!r} would share mask {img.stem}.png")
            seen[img.stem] = img
            if not (mask_dir / f"{img.stem}.png").is_file():
                raise DataError(f"image {str(img)!r} has no mask {str(mask_dir / (img.stem + '.png'))!r}")
        self.masks = [mask_dir / f"{p.stem}.png" for p in self.images]


def test_split(cfg: dict) -> str | None:
    """`test` when the folder has root/test/images, else none (a folder with train/val only)."""
    return "test" if (Path(cfg["root"]).expanduser() / "test" / "images").is_dir() else None


def build(cfg: dict, split: str) -> FolderSource:
    return FolderSource(cfg, split)
