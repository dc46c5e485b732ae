"""Procedural power-line scenes with TTPLA's five classes, for offline runs and tests.

Each image is a pure function of (data_seed, split, index): a numpy Generator is seeded from
those three numbers and the scene is drawn on the fly, then memoised as raw uint8 arrays.

Scene grammar (sizes scale with image_size; 96 px is the reference):
  sky/ground backgrounds with gradients, low-frequency blotches and pixel noise;
  background distractors: trees (brown trunk like a wooden pole), buildings (grey/white like a
  tubular pole), fence posts, straight wires/contrails (thin like a cable but not sagging);
  0-3 towers of three types, far ones first: lattice trusses (outline + cross bracing, labelled
  as their filled outline as TTPLA does), tapered shaded grey/white tubes (tucohy), brown wooden
  poles with a cross-arm; catenary cables (cosh curves, 2-3 px at 96 px) strung between towers,
  from a tower off-image, or across the sky. Cables are drawn last, in the image and the mask.
Masks are drawn with PIL ImageDraw (no anti-aliasing), so labels are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trainables.data.errors import DataError

CLASSES = ["background", "cable", "tower_lattice", "tower_tucohy", "tower_wooden"]
BACKGROUND = "background"  # the class of everything that is no object (sky, ground, distractors)
BG, CABLE, LATTICE, TUCOHY, WOODEN = range(5)
SPLITS = {"train": ("num_train", 0), "val": ("num_val", 1), "test": ("num_test", 2)}

Point = tuple[float, float]


class Scene:
    """An RGB canvas and its label mask, drawn together."""

    def __init__(self, rgb: np.ndarray):
        self.size = rgb.shape[0]
        self.img = Image.fromarray(rgb)
        self.mask = Image.new("L", (self.size, self.size), BG)
        self.draw = ImageDraw.Draw(self.img)
        self.mdraw = ImageDraw.Draw(self.mask)

    def shaded_polygon(self, pts: list[Point], cls: int, colour: np.ndarray, shade: np.ndarray) -> None:
        """Fill a polygon with colour * shade (HxW field); used for tubes and wood grain."""
        layer = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(layer).polygon(pts, fill=255)
        fill = np.clip(shade[..., None] * colour.astype(np.float32), 0, 255).astype(np.uint8)
        self.img.paste(Image.fromarray(fill), (0, 0), layer)
        if cls != BG:
            self.mdraw.polygon(pts, fill=cls)


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid upsampled bilinearly."""
    grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((size, size), Image.BILINEAR))


def _background(rng: np.random.Generator, s: int) -> tuple[np.ndarray, float]:
    horizon = s * (rng.uniform(0.45, 0.85) if rng.random() < 0.8 else 1.05)  # sometimes all sky
    sky = [((95, 145, 215), (175, 205, 235)), ((165, 170, 180), (215, 215, 220)), ((120, 120, 160), (235, 180, 140))]
    top, bottom = (np.array(c, np.float32) + rng.uniform(-15, 15, 3) for c in sky[rng.integers(len(sky))])
    ground = [(80, 115, 60), (125, 105, 75), (115, 115, 110), (95, 100, 70)][rng.integers(4)]
    ground = np.array(ground, np.float32) + rng.uniform(-15, 15, 3)
    top, bottom, ground = top.astype(np.float32), bottom.astype(np.float32), ground.astype(np.float32)
    rows = np.arange(s, dtype=np.float32)[:, None, None]
    t = np.clip(rows / max(horizon, 1.0), 0, 1)
    img = np.broadcast_to(top + (bottom - top) * t, (s, s, 3)).copy()
    img += _smooth(rng, s, 4)[..., None] * np.float32(rng.uniform(5, 25))  # clouds / haze
    below = np.arange(s)[:, None] >= horizon
    tex = _smooth(rng, s, 8)[..., None] * 25 + rng.standard_normal((s, s, 1), dtype=np.float32) * 10
    depth = 0.8 + 0.3 * np.clip((rows - horizon) / s, 0, 1)
    img = np.where(below[..., None], ground * depth + tex, img)
    return img, float(horizon)


def _line(scene: Scene, pts: list[Point], colour, width: int, cls: int) -> None:
    scene.draw.line(pts, fill=_ink(colour), width=width)
    if cls != BG:
        scene.mdraw.line(pts, fill=cls, width=width)


def _ink(colour: np.ndarray) -> tuple[int, int, int]:
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def _grey(rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-8, 8, 3), 0, 255)


# ---------------------------------------------------------------- towers: return cable attachment points


def _lattice(scene: Scene, rng: np.random.Generator, x: float, base: float, h: float, u: float) -> list[Point]:
    wb, top = h * rng.uniform(0.12, 0.2), base - h
    wt = wb * rng.uniform(0.2, 0.35)
    arm_y, arm_w = top + h * rng.uniform(0.08, 0.15), wb * rng.uniform(1.0, 1.6)
    ink, lw = _ink(_grey(rng, 90, 165)), max(1, round(u * rng.uniform(0.8, 1.6)))

    def half(y: float) -> float:  # half-width of the tapered body at height y
        return wt + (wb - wt) * (y - top) / h

    body = [(x - wb, base), (x - wt, top), (x + wt, top), (x + wb, base)]
    ab = arm_y + h * 0.06
    arm = [(x - arm_w, arm_y), (x + arm_w, arm_y), (x + half(ab), ab), (x - half(ab), ab)]
    scene.mdraw.polygon(body, fill=LATTICE)  # labelled as the filled outline, as TTPLA annotates towers
    scene.mdraw.polygon(arm, fill=LATTICE)
    thin: list[list[Point]] = [[arm[0], arm[2]], [arm[1], arm[3]]]
    levels = np.linspace(top, base, int(rng.integers(4, 8)))
    for y0, y1 in zip(levels[:-1], levels[1:]):  # cross bracing panel by panel
        a, b = half(y0), half(y1)
        thin += [[(x - a, y0), (x + b, y1)], [(x + a, y0), (x - b, y1)], [(x - b, y1), (x + b, y1)]]
    for pts in thin:
        scene.draw.line(pts, fill=ink, width=max(1, lw - 1))
    for pts in ([body[0], body[1]], [body[3], body[2]], arm + [arm[0]]):  # legs and arm outline
        scene.draw.line(pts, fill=ink, width=lw)
    return [(x - arm_w, arm_y), (x + arm_w, arm_y), (x, top)]


def _tube_shade(s: int, x: float, w: float) -> np.ndarray:
    """Cylinder shading across a vertical tube centred at x: bright left of centre, dark rims."""
    d = (np.arange(s, dtype=np.float32)[None, :] - x + 0.3 * w) / max(w, 1.0)
    return np.broadcast_to(0.7 + 0.35 * np.clip(1 - d * d, 0, 1), (s, s))


def _tucohy(scene: Scene, rng: np.random.Generator, x: float, base: float, h: float, u: float) -> list[Point]:
    wb, top = max(1.5 * u, h * rng.uniform(0.03, 0.055)), base - h
    wt = wb * rng.uniform(0.4, 0.6)
    colour = _grey(rng, 175, 235)
    pole = [(x - wb, base), (x - wt, top), (x + wt, top), (x + wb, base)]
    scene.shaded_polygon(pole, TUCOHY, colour, _tube_shade(scene.size, x, wb))
    arm_y, arm_w, th = top + h * rng.uniform(0.03, 0.1), wb * rng.uniform(3, 6), max(1.0, wt * 0.8)
    arm = [(x - arm_w, arm_y), (x + arm_w, arm_y), (x + arm_w * 0.8, arm_y + th), (x - arm_w * 0.8, arm_y + th)]
    scene.shaded_polygon(arm, TUCOHY, colour * 0.95, np.ones((scene.size, scene.size), np.float32))
    return [(x - arm_w, arm_y), (x + arm_w, arm_y), (x, top)]


def _wooden(scene: Scene, rng: np.random.Generator, x: float, base: float, h: float, u: float) -> list[Point]:
    w, top = max(1.0 * u, h * rng.uniform(0.018, 0.035)), base - h
    colour = np.array([rng.uniform(95, 145), rng.uniform(60, 90), rng.uniform(30, 55)])
    grain = np.broadcast_to(rng.uniform(0.8, 1.1, (1, scene.size)).astype(np.float32), (scene.size, scene.size))
    pole = [(x - w, base), (x - w * 0.75, top), (x + w * 0.75, top), (x + w, base)]
    scene.shaded_polygon(pole, WOODEN, colour, grain)
    arm_y, arm_w, th = top + h * rng.uniform(0.05, 0.12), h * rng.uniform(0.12, 0.22), max(1.0, w * 0.7)
    arm = [(x - arm_w, arm_y), (x + arm_w, arm_y), (x + arm_w, arm_y + th), (x - arm_w, arm_y + th)]
    scene.shaded_polygon(arm, WOODEN, colour * 0.9, grain)
    return [(x - arm_w * 0.9, arm_y), (x + arm_w * 0.9, arm_y), (x, top)]


TOWERS: dict[int, tuple[Callable[..., list[Point]], tuple[float, float]]] = {
    # class -> (draw function, height range as a fraction of the image)
    LATTICE: (_lattice, (0.35, 0.95)),
    TUCOHY: (_tucohy, (0.3, 0.9)),
    WOODEN: (_wooden, (0.25, 0.8)),
}


# ---------------------------------------------------------------- cables and distractors


def _catenary(p: Point, q: Point, sag: float, c: float, n: int) -> list[Point]:
    """Points of a cosh curve from p to q that hangs `sag` px below the chord at mid-span."""
    t = np.linspace(0.0, 1.0, n)
    drop = sag * (np.cosh(c) - np.cosh(c * (2 * t - 1))) / (np.cosh(c) - 1)
    xs = p[0] + (q[0] - p[0]) * t
    ys = p[1] + (q[1] - p[1]) * t + drop
    return list(zip(xs.tolist(), ys.tolist()))


def _cable(scene: Scene, rng: np.random.Generator, p: Point, q: Point, u: float) -> None:
    span = abs(q[0] - p[0])
    sag = span * rng.uniform(0.03, 0.18)
    colour = _grey(rng, 25, 70) if rng.random() < 0.75 else _grey(rng, 150, 200)  # dark, or glinting
    width = max(1, round(u * rng.integers(2, 4)))
    _line(scene, _catenary(p, q, sag, rng.uniform(0.8, 2.0), max(8, int(span / 3))), colour, width, CABLE)


def _tree(scene: Scene, rng: np.random.Generator, x: float, gy: float, u: float) -> None:
    """Brown trunk (coloured like a wooden pole) under a green crown."""
    h, w = rng.uniform(0.1, 0.35) * scene.size, max(1.0, u * rng.uniform(1, 2.5))
    brown = (int(rng.uniform(90, 140)), int(rng.uniform(60, 90)), int(rng.uniform(30, 55)))
    scene.draw.rectangle([x - w, gy - h, x + w, gy], fill=brown)
    r = h * rng.uniform(0.3, 0.5)
    green = (int(rng.uniform(40, 90)), int(rng.uniform(80, 130)), int(rng.uniform(30, 70)))
    scene.draw.ellipse([x - r, gy - h - r, x + r, gy - h + r * 0.6], fill=green)


def _building(scene: Scene, rng: np.random.Generator, x: float, gy: float, u: float) -> None:
    """Grey/white block: the colour of a tubular pole, but wide and low."""
    w, h = rng.uniform(0.08, 0.25) * scene.size, rng.uniform(0.05, 0.2) * scene.size
    scene.draw.rectangle([x - w, gy - h, x + w, gy], fill=_ink(_grey(rng, 150, 230)))
    scene.draw.line([(x - w, gy - h), (x + w, gy - h)], fill=_ink(_grey(rng, 60, 110)), width=1)


def _fence(scene: Scene, rng: np.random.Generator, x: float, gy: float, u: float) -> None:
    """Short thin posts and a rail."""
    n, h = int(rng.integers(3, 7)), rng.uniform(0.04, 0.1) * scene.size
    colour = _ink(_grey(rng, 60, 140))
    xs = x + np.arange(n) * rng.uniform(3, 8) * u
    for px in xs:
        scene.draw.line([(px, gy), (px, gy - h)], fill=colour, width=1)
    scene.draw.line([(xs[0], gy - h * 0.7), (xs[-1], gy - h * 0.7)], fill=colour, width=1)


def _wire(scene: Scene, rng: np.random.Generator, x: float, gy: float, u: float) -> None:
    """Straight wire / contrail / road edge: thin like a cable, but it does not sag."""
    s = scene.size
    y0, y1 = rng.uniform(0, s), rng.uniform(0, s)
    colour = _grey(rng, 30, 80) if rng.random() < 0.5 else _grey(rng, 200, 245)
    width = max(1, round(u * rng.uniform(0.5, 1.5)))
    scene.draw.line([(-2, y0), (s + 2, y1)], fill=_ink(colour), width=width)


DISTRACTORS = (_tree, _building, _fence, _wire)  # all background class: drawn in the image only


def _distractor(scene: Scene, rng: np.random.Generator, horizon: float, u: float) -> None:
    draw = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
    gy = min(horizon, scene.size - 2) + rng.uniform(0, 0.15) * scene.size  # a point on the ground
    draw(scene, rng, rng.uniform(0, scene.size), gy, u)


def render(seed: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image uint8 HxWx3, mask uint8 HxW) from a SeedSequence entropy list."""
    rng = np.random.default_rng(seed)
    s, u = size, size / 96.0
    rgb, horizon = _background(rng, s)
    scene = Scene(np.clip(rgb, 0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(0, 4))):
        _distractor(scene, rng, horizon, u)
    n = int(rng.choice(4, p=[0.12, 0.4, 0.32, 0.16]))
    xs = np.sort(rng.uniform(0.08, 0.92, n)) * s
    towers = []
    for x in xs:
        draw, (lo, hi) = TOWERS[int(rng.integers(LATTICE, WOODEN + 1))]
        h = rng.uniform(lo, hi) * s
        base = min(horizon, s) + rng.uniform(0.0, 0.2) * h  # nearer (taller) towers stand lower
        towers.append((h, x, base, draw))
    pts: list[list[Point]] = [[] for _ in towers]
    for k in sorted(range(n), key=lambda k: towers[k][0]):  # far (short) towers first
        h, x, base, draw = towers[k]
        pts[k] = draw(scene, rng, x, base, h, u)
    spans: list[tuple[Point, Point]] = []
    for a, b in zip(pts[:-1], pts[1:]):  # strung between neighbouring towers
        spans += [(a[k], b[k]) for k in rng.choice(3, int(rng.integers(1, 4)), replace=False)]
    if pts and rng.random() < 0.7:  # and on out of the picture
        k = int(rng.integers(3))
        spans.append(((-3.0, pts[0][k][1] + rng.uniform(-0.1, 0.2) * s), pts[0][k]))
        spans.append((pts[-1][k], (s + 3.0, pts[-1][k][1] + rng.uniform(-0.1, 0.2) * s)))
    if not pts and rng.random() < 0.85:  # free cables across the sky
        for _ in range(int(rng.integers(1, 4))):
            y = rng.uniform(0.0, 0.6) * s
            spans.append(((-3.0, y), (s + 3.0, y + rng.uniform(-0.2, 0.2) * s)))
    for p, q in spans:
        _cable(scene, rng, p, q, u)
    img = np.asarray(scene.img, dtype=np.float32) * np.float32(rng.uniform(0.75, 1.15))  # exposure
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 9))
    return np.clip(img, 0, 255).astype(np.uint8), np.array(scene.mask)


class SyntheticSource:
    """num_<split> scenes of image_size px; generated on first access and memoised."""

    classes = CLASSES

    def __init__(self, cfg: dict, split: str):
        if split not in SPLITS:
            raise DataError(f"synthetic data has splits {sorted(SPLITS)}, not {split!r}")
        count_key, code = SPLITS[split]
        self.count, self.size, self.split = int(cfg[count_key]), int(cfg["image_size"]), split
        self._seed = [int(cfg["data_seed"]) % 2**63, code]
        self._memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.count

    def name(self, i: int) -> str:
        return f"synthetic:{self.split}/{i}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._memo:
            self._memo[i] = render(self._seed + [i], self.size)
        return self._memo[i]

    def files(self, i: int) -> tuple[Path, ...]:
        return ()  # generated from (data_seed, split, i): the spec's own keys name it


def build(cfg: dict, split: str) -> SyntheticSource:
    return SyntheticSource(cfg, split)
