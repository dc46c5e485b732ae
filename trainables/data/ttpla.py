"""TTPLA (power lines and towers) in either on-disk layout, rasterised to semantic masks.

Layouts (detected from what is on disk):
  LabelMe (the original release): one JSON per image anywhere under root, next to its image;
      split lists `<split>.txt` in root or root/splitting_dataset_txt/.
  Supervisely / DatasetNinja: root/meta.json, root/<split>/img/<image>, root/<split>/ann/<image>.json.
Labels and JSON are validated when the dataset is built; images are read (and masks rasterised,
then cached) when a sample is first loaded.

Draw order: towers, then 'void' (255), then cables. Cables are thin (a few px) polygons that run
in front of towers; drawn earlier they would be painted over by the tower polygons around them,
and the rare, thin cable pixels are exactly what the metric is most sensitive to.
"""

from __future__ import annotations

import base64
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from trainables.constants import IGNORE_INDEX
from trainables.data.base import IMAGE_EXTS, MaskCache, read_image, require_dir, strip_ext
from trainables.data.errors import DataError

CLASSES = ["background", "cable", "tower_lattice", "tower_tucohy", "tower_wooden"]
BACKGROUND = "background"  # every pixel no polygon covers
LABELS = {**{name: k for k, name in enumerate(CLASSES)}, "void": IGNORE_INDEX}
PRIORITY = {IGNORE_INDEX: 1, CLASSES.index("cable"): 2}  # everything else 0: drawn first
SPLIT_DIRS = ("", "splitting_dataset_txt")


@dataclass
class Shape:
    cls: int
    exterior: list[tuple[float, float]] = field(default_factory=list)
    holes: list[list[tuple[float, float]]] = field(default_factory=list)
    bitmap: np.ndarray | None = None  # bool HxW placed at `origin` (x, y)
    origin: tuple[int, int] = (0, 0)


@dataclass
class Item:
    image: Path
    ann: Path
    size: tuple[int, int]  # (height, width) the annotation was made on
    shapes: list[Shape]


def rasterise(size: tuple[int, int], shapes: list[Shape]) -> np.ndarray:
    """uint8 HxW mask: shapes drawn by PRIORITY (stable), each exterior filled minus its holes."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    for s in sorted(shapes, key=lambda s: PRIORITY.get(s.cls, 0)):
        if s.bitmap is not None:
            ox, oy = s.origin
            bh, bw = s.bitmap.shape
            x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + bw, w), min(oy + bh, h)
            if x1 > x0 and y1 > y0:
                sel = s.bitmap[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
                mask[y0:y1, x0:x1][sel] = s.cls
            continue
        pts = np.asarray(s.exterior, dtype=np.float64)
        x0, y0 = max(int(np.floor(pts[:, 0].min())), 0), max(int(np.floor(pts[:, 1].min())), 0)
        x1, y1 = min(int(np.ceil(pts[:, 0].max())) + 1, w), min(int(np.ceil(pts[:, 1].max())) + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue  # entirely outside the image: nothing to draw
        local = Image.new("L", (x1 - x0, y1 - y0), 0)  # bbox-sized, so holes reveal what lies below
        draw = ImageDraw.Draw(local)
        draw.polygon([(x - x0, y - y0) for x, y in s.exterior], fill=1)
        for hole in s.holes:
            draw.polygon([(x - x0, y - y0) for x, y in hole], fill=0)
        mask[y0:y1, x0:x1][np.asarray(local, dtype=bool)] = s.cls
    return mask


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"annotation {str(path)!r} is not readable JSON ({type(e).__name__}: {e})") from None


def _label(raw: Any, path: Path) -> int:
    name = str(raw).strip().lower()
    if name not in LABELS:
        raise DataError(f"{str(path)!r}: unknown label {raw!r}; allowed: {', '.join(LABELS)}")
    return LABELS[name]


def _points(raw: Any, path: Path, what: str) -> list[tuple[float, float]]:
    try:
        pts = [(float(p[0]), float(p[1])) for p in raw]
    except (TypeError, ValueError, IndexError, KeyError):
        raise DataError(f"{str(path)!r}: {what} points must be a list of [x, y] numbers") from None
    if len(pts) < 2:
        raise DataError(f"{str(path)!r}: {what} has {len(pts)} point(s); a polygon needs at least 2")
    return pts


def _size(h: Any, w: Any, path: Path) -> tuple[int, int]:
    try:
        size = (int(h), int(w))
    except (TypeError, ValueError):
        raise DataError(f"{str(path)!r}: image height/width missing or not integers (got {h!r}, {w!r})") from None
    if min(size) < 1:
        raise DataError(f"{str(path)!r}: image size {size[1]}x{size[0]} is empty")
    return size


class TTPLASource:
    """Items of one split; masks rasterised on first load at the annotation's native size."""

    classes = CLASSES

    def __init__(self, items: list[Item], where: str):
        if not items:
            raise DataError(f"TTPLA split {where!r} holds no images")
        self.items = items
        self._masks = MaskCache()

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return str(self.items[i].image)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        it = self.items[i]
        img = read_image(it.image, exif=True)
        if img.shape[:2] != it.size:
            raise DataError(
                f"image {str(it.image)!r} is {img.shape[1]}x{img.shape[0]} but {str(it.ann)!r} "
                f"says {it.size[1]}x{it.size[0]} (WxH)"
            )
        return img, self._masks.get(i, lambda: rasterise(it.size, it.shapes))

    def files(self, i: int) -> tuple[Path, ...]:
        return self.items[i].image, self.items[i].ann


# ---------------------------------------------------------------- LabelMe (original release)


def _labelme_item(path: Path) -> Item:
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise DataError(f"{str(path)!r} is not a LabelMe annotation (no 'shapes' list)")
    size = _size(doc.get("imageHeight"), doc.get("imageWidth"), path)
    shapes = []
    for k, sh in enumerate(doc["shapes"]):
        kind = sh.get("shape_type") or "polygon"
        if kind not in ("polygon", "rectangle"):
            raise DataError(f"{str(path)!r}: shape {k} has shape_type {kind!r}; allowed: polygon, rectangle")
        pts = _points(sh.get("points"), path, f"shape {k}")
        if kind == "rectangle":
            (ax, ay), (bx, by) = pts[:2]
            pts = [(ax, ay), (bx, ay), (bx, by), (ax, by)]
        shapes.append(Shape(_label(sh.get("label"), path), pts))
    return Item(_labelme_image(path, doc.get("imagePath")), path, size, shapes)


def _labelme_image(ann: Path, image_path: Any) -> Path:
    rel = str(image_path or "").replace("\\", "/")
    candidates = [ann.parent / rel, ann.parent / Path(rel).name] if rel else []
    candidates += [ann.with_suffix(ext) for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS)]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{str(ann)!r}: its image {rel or ann.stem!r} is not next to it")


def _split_file(root: Path, split: str) -> Path:
    options = [root / d / f"{split}.txt" for d in SPLIT_DIRS]
    for p in options:
        if p.is_file():
            return p
    raise DataError(f"TTPLA split file for {split!r} not found; expected one of {', '.join(map(str, options))}")


def labelme_items(root: Path, split: str) -> list[Item]:
    listing = _split_file(root, split)
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*.json")):
        if p.stem in index:
            raise DataError(
                f"two annotations named {p.name!r}: {str(index[p.stem])!r} and {str(p)!r}; point data.root at one copy"
            )
        index[p.stem] = p
    names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataError(f"TTPLA split file {str(listing)!r} lists no images")
    items = []
    for n in names:
        ann = index.get(strip_ext(n))
        if ann is None:
            raise DataError(f"{str(listing)!r} lists {n!r} but no {strip_ext(n)}.json exists under {str(root)!r}")
        items.append(_labelme_item(ann))
    return items


# ---------------------------------------------------------------- Supervisely / DatasetNinja


def _bitmap(obj: dict, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Supervisely bitmap: base64 of a zlib-compressed PNG (alpha or gray = mask) + origin [x, y]."""
    try:
        bm = obj["bitmap"]
        png = zlib.decompress(base64.b64decode(bm["data"]))
        with Image.open(io.BytesIO(png)) as im:
            arr = np.asarray(im.getchannel("A") if "A" in im.getbands() else im.convert("L")) > 0
        return arr, (int(bm["origin"][0]), int(bm["origin"][1]))
    except Exception as e:  # any decoding failure is a bad file, reported with its name
        raise DataError(f"{str(path)!r}: bitmap object cannot be decoded ({type(e).__name__}: {e})") from None


def _supervisely_item(image: Path, ann: Path) -> Item:
    doc = _read_json(ann)
    if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
        raise DataError(f"{str(ann)!r} is not a Supervisely annotation (no 'objects' list)")
    sz = doc.get("size") if isinstance(doc.get("size"), dict) else {}
    size = _size(sz.get("height"), sz.get("width"), ann)
    shapes = []
    for k, obj in enumerate(doc["objects"]):
        cls, geom = _label(obj.get("classTitle"), ann), obj.get("geometryType")
        if geom == "polygon":
            pts = obj.get("points") or {}
            holes = [_points(h, ann, f"object {k} interior") for h in pts.get("interior") or []]
            shapes.append(Shape(cls, _points(pts.get("exterior"), ann, f"object {k}"), holes))
        elif geom == "bitmap":
            bitmap, origin = _bitmap(obj, ann)
            shapes.append(Shape(cls, bitmap=bitmap, origin=origin))
        else:
            raise DataError(f"{str(ann)!r}: object {k} has geometryType {geom!r}; supported: polygon, bitmap")
    return Item(image, ann, size, shapes)


def supervisely_items(root: Path, split: str) -> list[Item]:
    meta = _read_json(root / "meta.json")
    for c in meta.get("classes", []) if isinstance(meta, dict) else []:
        _label(c.get("title"), root / "meta.json")
    img_dir = require_dir(root / split / "img", f"TTPLA split {split!r} image folder")
    ann_dir = require_dir(root / split / "ann", f"TTPLA split {split!r} annotation folder")
    items = []
    for img in sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        ann = ann_dir / f"{img.name}.json"
        if not ann.is_file():
            raise DataError(f"image {str(img)!r} has no annotation {str(ann)!r}")
        items.append(_supervisely_item(img, ann))
    return items


def build(cfg: dict, split: str) -> TTPLASource:
    root = require_dir(Path(cfg["root"]).expanduser(), "data.root")
    layout = supervisely_items if (root / "meta.json").is_file() else labelme_items
    return TTPLASource(layout(root, split), str(root / split))
