"""Tiny on-disk datasets for tests/test_data.py, written into tmp_path with known masks."""

from __future__ import annotations

import base64
import io
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from orchestrator.spec.train import DataSpec


def data_cfg(kind: str, root: Path | None = None, **kw) -> dict:
    """A full data config as the trainer gets it (DataSpec defaults + overrides)."""
    return DataSpec(kind=kind, root=None if root is None else str(root), **kw).model_dump()


def write_image(path: Path, w: int, h: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def box(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# ---------------------------------------------------------------- TTPLA, LabelMe layout


def write_labelme(root: Path) -> None:
    """Two 20x16 images under root/data_original_size with split files in splitting_dataset_txt/.

    a: cable rows 6-7 (listed first, must still win over the tower), tower_lattice x 4-10 y 2-13,
       void x 15-18 y 10-14.  b (listed as 'data_original_size/b', imagePath a Windows path):
       ' Tower_Wooden ' x 0-3 y 0-15.
    """
    d = root / "data_original_size"
    write_image(d / "a.png", 20, 16, 1)
    write_image(d / "b.png", 20, 16, 2)
    shapes_a = [
        {"label": "cable", "points": box(0, 6, 19, 7), "shape_type": "polygon"},
        {"label": "tower_lattice", "points": box(4, 2, 10, 13), "shape_type": "polygon"},
        {"label": "void", "points": box(15, 10, 18, 14), "shape_type": "polygon"},
    ]
    labelme_json(d / "a.json", "a.png", shapes_a)
    labelme_json(d / "b.json", "C:\\data\\ttpla\\b.png", [{"label": " Tower_Wooden ", "points": box(0, 0, 3, 15)}])
    splits = root / "splitting_dataset_txt"
    splits.mkdir()
    (splits / "train.txt").write_text("a.jpg\ndata_original_size/b\n\n")
    (splits / "val.txt").write_text("b.json\n")


def labelme_json(path: Path, image_path: str, shapes: list[dict], w: int = 20, h: int = 16) -> None:
    doc = {"version": "4.5.6", "imagePath": image_path, "imageHeight": h, "imageWidth": w, "shapes": shapes}
    path.write_text(json.dumps(doc))


# ---------------------------------------------------------------- TTPLA, Supervisely layout


def bitmap_data(bits: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(bits.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return base64.b64encode(zlib.compress(buf.getvalue())).decode()


def write_supervisely(root: Path) -> None:
    """root/train/img/x.png (24x16): wooden box 6-9, tucohy 2-12 with hole 5-10, cable bitmap at (18, 4)."""
    root.mkdir(parents=True, exist_ok=True)
    titles = ["cable", "tower_lattice", "tower_tucohy", "tower_wooden", "void"]
    (root / "meta.json").write_text(json.dumps({"classes": [{"title": t, "shape": "polygon"} for t in titles]}))
    write_image(root / "train" / "img" / "x.png", 24, 16, 3)
    objects = [
        {
            "classTitle": "tower_wooden",
            "geometryType": "polygon",
            "points": {"exterior": box(6, 6, 9, 9), "interior": []},
        },
        {
            "classTitle": "tower_tucohy",
            "geometryType": "polygon",
            "points": {"exterior": box(2, 2, 12, 12), "interior": [box(5, 5, 10, 10)]},
        },
        {
            "classTitle": "cable",
            "geometryType": "bitmap",
            "bitmap": {"data": bitmap_data(np.array([[1, 1, 0], [0, 1, 1]])), "origin": [18, 4]},
        },
    ]
    supervisely_ann(root / "train" / "ann" / "x.png.json", objects)


def supervisely_ann(path: Path, objects: list[dict], w: int = 24, h: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"size": {"height": h, "width": w}, "objects": objects}))


# ---------------------------------------------------------------- VOC and folder


def voc_mask(w: int = 20, h: int = 12) -> np.ndarray:
    """Person (15) at x 5-11, y 4-7 inside a 255 ring one pixel wide; background elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:13] = 255
    m[4:8, 5:12] = 15
    return m


def write_voc(root: Path, ids: tuple[str, ...] = ("2007_000032", "2007_000033")) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir(parents=True)
    for k, i in enumerate(ids):
        write_image(voc / "JPEGImages" / f"{i}.jpg", 20, 12, k)
        save_palette(voc_mask(), voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[0] + "\n")
    return voc


def save_palette(mask: np.ndarray, path: Path) -> None:
    im = Image.fromarray(mask, mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[15] = (192, 128, 128)
    pal[255] = (224, 224, 192)
    im.putpalette(pal.ravel().tolist())
    im.save(path)


def folder_mask() -> np.ndarray:
    """16x16: class 1 in the left half, class 2 in rows 10-13 of the right half, a 255 column at x=15."""
    m = np.zeros((16, 16), np.uint8)
    m[:, :8] = 1
    m[10:14, 8:] = 2
    m[:, 15] = 255
    return m


def write_folder(root: Path, split: str = "train") -> None:
    write_image(root / split / "images" / "a.png", 16, 16, 5)
    (root / split / "masks").mkdir(parents=True)
    Image.fromarray(folder_mask(), mode="L").save(root / split / "masks" / "a.png")
