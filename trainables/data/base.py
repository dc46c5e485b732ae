"""What every dataset kind shares: the Source protocol, the Dataset around it, the training
sampler that seeds its augmentations, and safe file readers.

A *source* knows where samples live and how to load one as raw uint8 arrays (image HxWx3, mask
HxW with 255 = ignore); `SegDataset` checks the pair and applies the transform. Keeping sources
free of torch makes them cheap to test and lets every kind share one error path.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, DistributedSampler
from torchvision import tv_tensors

from trainables.constants import IGNORE_INDEX
from trainables.data import labels
from trainables.data.errors import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# PIL raises a zoo of types for broken files; all of them become one DataError naming the file.
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class Source(Protocol):
    classes: list[str]

    def __len__(self) -> int: ...

    def name(self, i: int) -> str:
        """The file (or synthetic id) of sample i, for error messages."""
        ...

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw sample i: image uint8 HxWx3, mask uint8 HxW (class ids, 255 = ignore)."""
        ...

    def files(self, i: int) -> tuple[Path, ...]:
        """The files sample i is read from (image, mask or annotation): the dataset's fingerprint
        (trainables.data.fingerprint) lists them with their sizes. A generated source has none."""
        ...


class SegDataset(Dataset):
    """(image FloatTensor 3xHxW normalised, mask LongTensor HxW) from a source and a transform.

    `ds[i]` draws the transform's randomness from torch's global RNG; `ds[(i, seed)]` (what
    `SeededSampler` yields) draws it from a fresh stream seeded with `seed` and leaves the global
    RNG untouched, so an item does not depend on which process loads it or what it loaded before.
    """

    def __init__(self, source: Source, transform: Transform):
        self.source = source
        self.transform = transform
        self.classes = list(source.classes)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        img, mask = self.source.load(i)
        if img.shape[:2] != mask.shape:
            raise DataError(
                f"{self.source.name(i)}: image is {img.shape[1]}x{img.shape[0]} (WxH) "
                f"but its mask is {mask.shape[1]}x{mask.shape[0]}"
            )
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        if seed is None:
            x, y = self.transform(image, target)
        else:
            with torch.random.fork_rng(devices=[]):  # v2 ops and RandomScale draw from the global RNG
                torch.manual_seed(seed)
                x, y = self.transform(image, target)
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor).long()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch` of a run seeded `seed` (a SeedSequence
    hash, so nearby triples give unrelated streams)."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, np.uint64)[0])


class SeededSampler(DistributedSampler):
    """This rank's shard of a shuffle that is a function of (seed, epoch) (DistributedSampler's,
    `set_epoch` each epoch), each index paired with `sample_seed(seed, epoch, index)` for
    `SegDataset`. The sampler runs in the main process, so the epoch reaches persistent loader
    workers with every index, and the augmentations are the same for any `data.workers` and
    after a resume. One process is rank 0 of a world of 1."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, sample_seed(self.seed, self.epoch, i)) for i in super().__iter__())


# ---------------------------------------------------------------- readers


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} {str(path)!r} does not exist or is not a directory")
    return path


def read_image(path: Path, exif: bool = False) -> np.ndarray:
    """RGB uint8 HxWx3; `exif` applies the EXIF orientation (as LabelMe does when annotating)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im) if exif else im
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist") from None
    except _PIL_ERRORS as e:
        raise DataError(f"image {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None


def read_index_mask(path: Path, num_classes: int, lut: np.ndarray | None = None) -> np.ndarray:
    """A PNG of class indices (mode P, L or I) as uint8, its ids mapped through `lut` (the kind's
    and the spec's label convention, trainables.data.labels); then ids must be < num_classes or 255."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DataError(
                    f"mask {str(path)!r} has mode {im.mode}; expected a palette (P) or grayscale (L) "
                    "PNG of class indices"
                )
            arr = np.array(im)
    except FileNotFoundError:
        raise DataError(f"mask {str(path)!r} does not exist") from None
    except _PIL_ERRORS as e:
        raise DataError(f"mask {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None
    arr = labels.apply(lut, arr, str(path))
    ids = np.unique(arr)
    bad = ids[(ids >= num_classes) & (ids != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"mask {str(path)!r} holds class id {int(bad[0])}; allowed 0..{num_classes - 1} or {IGNORE_INDEX} "
            "(ignore); data.label_map or data.ignore_ids map other ids"
        )
    return arr.astype(np.uint8, copy=False)


def read_pair(
    image: Path, mask: Path, num_classes: int, lut: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An image and its index mask (mapped through `lut`), which must have the same size."""
    img, lab = read_image(image), read_index_mask(mask, num_classes, lut)
    if img.shape[:2] != lab.shape:
        raise DataError(
            f"mask {str(mask)!r} is {lab.shape[1]}x{lab.shape[0]} but its image is {img.shape[1]}x{img.shape[0]}"
        )
    return img, lab


class PairedFiles:
    """A source of image files each with an index-mask PNG (VOC, folder, ...): subclasses fill
    `images`, `masks` and `classes` in their constructor, after checking the layout, and `lut`
    from their label convention (`labels.Convention.lookup`; None: ids are class indices)."""

    images: list[Path]
    masks: list[Path]
    classes: list[str]
    lut: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return str(self.images[i])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(self.images[i], self.masks[i], len(self.classes), self.lut)

    def files(self, i: int) -> tuple[Path, ...]:
        return self.images[i], self.masks[i]

    def check_masks(self, layout: str = "") -> None:
        """Every image has its mask file, or a DataError naming the first that lacks it."""
        for img, mask in zip(self.images, self.masks):
            if not mask.is_file():
                raise DataError(
                    f"image {str(img)!r} has no mask {str(mask)!r}" + (f"; expected {layout}" if layout else "")
                )


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def strip_ext(name: str) -> str:
    """'a/b/x.jpg' -> 'x', 'x.json' -> 'x', 'x' -> 'x' (only known extensions are removed)."""
    base = Path(name.replace("\\", "/")).name
    stem, ext = Path(base).stem, Path(base).suffix.lower()
    return stem if ext in IMAGE_EXTS + (".json",) else base


class MaskCache:
    """Masks built once per image, kept zlib-compressed: a 4K TTPLA mask is 8 MB raw, ~50 kB packed."""

    def __init__(self) -> None:
        self._store: dict[int, tuple[bytes, tuple[int, int]]] = {}

    def get(self, key: int, build: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._store.get(key)
        if hit is None:
            mask = build()
            self._store[key] = (zlib.compress(mask.tobytes(), 1), mask.shape)
            return mask
        data, shape = hit
        return np.frombuffer(bytearray(zlib.decompress(data)), dtype=np.uint8).reshape(shape)
