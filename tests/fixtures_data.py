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


# ---------------------------------------------------------------- benchmarks in their release layouts


def every_id(seed: int, ids: range, h: int = 16, w: int = 24) -> np.ndarray:
    """A mask holding every id of `ids` at least once, the rest random from `ids`."""
    m = np.random.default_rng(seed).choice(np.array(ids), (h, w)).astype(np.uint8)
    m.flat[: len(ids)] = np.array(ids)
    return m


def write_cityscapes(root: Path) -> dict[str, np.ndarray]:
    """leftImg8bit/ and gtFine/ as the release zips unpack (with the gtFine files a loader must skip);
    label ids 0..33 in every mask; returns the labelIds masks by frame name."""
    frames = {"train": ["aachen_000000_000019", "bochum_000000_000313"], "val": ["frankfurt_000000_000294"]}
    written = {}
    for split, names in frames.items():
        for k, name in enumerate(names):
            city = name.split("_")[0]
            write_image(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", 24, 16, k)
            gt = root / "gtFine" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            m = every_id(len(written), range(34))
            Image.fromarray(m, mode="L").save(gt / f"{name}_gtFine_labelIds.png")
            Image.fromarray(m.astype(np.uint16) * 1000).save(gt / f"{name}_gtFine_instanceIds.png")
            write_image(gt / f"{name}_gtFine_color.png", 24, 16, 9)
            (gt / f"{name}_gtFine_polygons.json").write_text("{}")
            written[name] = m
    return written


def write_voc_aug(root: Path) -> dict[str, np.ndarray]:
    """VOC 2012 val (palette PNG with 255 outlines) plus SBD's SegmentationClassAug (grayscale,
    no outlines) and ImageSets/SegmentationAug/train_aug.txt in DeepLab's two-path format."""
    voc = root / "VOCdevkit" / "VOC2012"
    train, val = ["2007_000032", "2008_000002"], ["2007_000033"]
    written = {}
    for k, i in enumerate(train + val):
        write_image(voc / "JPEGImages" / f"{i}.jpg", 24, 16, k)
        aug = every_id(k, range(21))
        (voc / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(aug, mode="L").save(voc / "SegmentationClassAug" / f"{i}.png")
        written[i] = aug
    (voc / "SegmentationClass").mkdir(parents=True)
    outlined = every_id(7, range(21))
    outlined[0, :] = 255
    save_palette(outlined, voc / "SegmentationClass" / f"{val[0]}.png")
    written[f"{val[0]}/official"] = outlined
    (voc / "ImageSets" / "SegmentationAug").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in train]
    (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val) + "\n")
    return written


def write_ade20k(root: Path) -> dict[str, np.ndarray]:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; ids 0 ('other')..150."""
    base = root / "ADEChallengeData2016"
    written = {}
    for k, (folder, name) in enumerate([("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                                         ("validation", "ADE_val_00000001")]):  # fmt: skip
        write_image(base / "images" / folder / f"{name}.jpg", 24, 16, k)
        (base / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        m = every_id(k, range(151), 16, 24)
        Image.fromarray(m, mode="L").save(base / "annotations" / folder / f"{name}.png")
        written[name] = m
    return written


def write_camvid(root: Path) -> dict[str, np.ndarray]:
    """The SegNet tutorial's CamVid folder: <split>/ and <split>annot/, ids 0..10 and void 11."""
    names = {"train": ["0001TP_006690", "0006R0_f00930"], "val": ["0016E5_07959"], "test": ["0001TP_008550"]}
    written = {}
    for split, stems in names.items():
        for stem in stems:
            write_image(root / split / f"{stem}.png", 24, 16, len(written))
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            m = every_id(len(written), range(12))
            Image.fromarray(m, mode="L").save(root / f"{split}annot" / f"{stem}.png")
            written[stem] = m
    return written
