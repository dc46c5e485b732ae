"""Datasets by kind (synthetic, ttpla, voc, voc_aug, cityscapes, ade20k, camvid, folder) behind one
`build_dataset`.

Items are (image FloatTensor 3xHxW, ImageNet-normalised; mask LongTensor HxW, 255 = ignore).
Each kind is a `Kind` in `KINDS`: its class names, its background class (the one no object is,
which `distill.cam_classes: foreground` leaves out of the CAM target; a folder names it, or has
none), a builder of a raw-array source and, for kinds that read mask files, its label convention
(trainables.data.labels: the stored ids -> class indices); the transforms and the Dataset
wrapper are shared (trainables.data.base / .transforms).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from trainables.constants import IGNORE_INDEX
from trainables.data import ade20k, camvid, cityscapes, folder, synthetic, ttpla, voc, voc_aug
from trainables.data.base import SegDataset, Source
from trainables.data.errors import DataError
from trainables.data.labels import KEYS as LABEL_KEYS
from trainables.data.labels import Convention
from trainables.data.transforms import eval_transform, train_transform

PAD_MULTIPLE = 32  # smp encoders downsample by 32: inputs must be divisible by it


@dataclass(frozen=True)
class Kind:
    classes: Callable[[dict], list[str]]
    source: Callable[[dict, str], Source]
    test_split: Callable[[dict], str | None]  # the held-out split `data.test_split: auto` means
    background: Callable[[dict], str | None]  # name of the background class, None: the dataset has none
    labels: Convention | None = None  # None: no mask files (generated or drawn from polygons)


KINDS: dict[str, Kind] = {
    "synthetic": Kind(
        lambda cfg: list(synthetic.CLASSES), synthetic.build, lambda cfg: "test", lambda cfg: synthetic.BACKGROUND
    ),
    "ttpla": Kind(lambda cfg: list(ttpla.CLASSES), ttpla.build, lambda cfg: "test", lambda cfg: ttpla.BACKGROUND),
    # VOC2012 test masks are not public
    "voc": Kind(lambda cfg: list(voc.CLASSES), voc.build, lambda cfg: None, lambda cfg: voc.BACKGROUND, voc.LABELS),
    # SBD's train_aug for train, VOC 2012 val for val; no test masks
    "voc_aug": Kind(
        lambda cfg: list(voc_aug.CLASSES),
        voc_aug.build,
        lambda cfg: None,
        lambda cfg: voc_aug.BACKGROUND,
        voc_aug.LABELS,
    ),
    # Cityscapes and ADE20K test masks are not public
    "cityscapes": Kind(
        lambda cfg: list(cityscapes.CLASSES),
        cityscapes.build,
        lambda cfg: None,
        lambda cfg: cityscapes.BACKGROUND,
        cityscapes.LABELS,
    ),
    "ade20k": Kind(
        lambda cfg: list(ade20k.CLASSES), ade20k.build, lambda cfg: None, lambda cfg: ade20k.BACKGROUND, ade20k.LABELS
    ),
    "camvid": Kind(
        lambda cfg: list(camvid.CLASSES), camvid.build, lambda cfg: "test", lambda cfg: camvid.BACKGROUND, camvid.LABELS
    ),
    "folder": Kind(folder.classes, folder.build, folder.test_split, folder.background, folder.LABELS),
}


def _kind(data_cfg: dict) -> Kind:
    name = data_cfg.get("kind")
    if name not in KINDS:
        raise DataError(f"data.kind {name!r} is not one of {sorted(KINDS)}")
    return KINDS[name]


def class_names(data_cfg: dict) -> list[str]:
    """Class names of the configured dataset; index = class id in the masks."""
    return _kind(data_cfg).classes(data_cfg)


def background_index(data_cfg: dict) -> int | None:
    """Index of the configured dataset's background class, or None when it has none; a name that
    is not one of its classes is a DataError."""
    name, classes = _kind(data_cfg).background(data_cfg), class_names(data_cfg)
    if name is None:
        return None
    if name not in classes:
        raise DataError(
            f"data.background {name!r} is not one of the classes ({', '.join(classes)}); "
            "name one of them or null (none)"
        )
    return classes.index(name)


def check_labels(data_cfg: dict) -> None:
    """The spec's label keys (data.label_map, ignore_ids, reduce_zero_label) against the kind's
    convention and class list: a one-line DataError naming the key when they cannot hold."""
    kind = _kind(data_cfg)
    given = [k for k in LABEL_KEYS if data_cfg.get(k) not in (None, [], {})]
    if kind.labels is None:
        if given:
            readers = sorted(name for name, k in KINDS.items() if k.labels is not None)
            raise DataError(
                f"data.{given[0]} is for kinds that read mask files ({', '.join(readers)}); "
                f"data.kind={data_cfg.get('kind')!r} has none"
            )
        return
    kind.labels.check(data_cfg, len(class_names(data_cfg)))


def held_out_split(data_cfg: dict) -> str | None:
    """The held-out split a finished run is evaluated on once, or None. `auto` is the kind's own
    (none when that is already the train or val split); null is none; a name is that split."""
    name = data_cfg.get("test_split", "auto")
    if name != "auto":
        return name
    name = _kind(data_cfg).test_split(data_cfg)
    return None if name in (data_cfg.get("train_split"), data_cfg.get("val_split")) else name


def fingerprint(data_cfg: dict, splits: tuple[str, ...]) -> str | None:
    """sha256 over the files of each split (path below the folder they all share, and size), in
    the source's order: the same data on another mount, or under another root string, gives the same
    digest; a file added, removed, renamed or resized gives another. None for a generated dataset
    (synthetic), which its spec keys name already."""
    listing: list[tuple[str, list[Path]]] = []
    for split in splits:
        source = _kind(data_cfg).source(data_cfg, split)
        listing.append((split, [Path(f) for i in range(len(source)) for f in source.files(i)]))
    paths = [str(f) for _, files in listing for f in files]
    if not paths:
        return None
    base = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    h = hashlib.sha256()
    for split, files in listing:
        h.update(f"split {split} {len(files)}\n".encode())
        for f in files:
            h.update(f"{os.path.relpath(f, base)}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def build_dataset(data_cfg: dict, split: str, train: bool) -> Dataset:
    """The `split` of the configured dataset with train (random) or eval (deterministic) transforms."""
    source = _kind(data_cfg).source(data_cfg, split)
    return SegDataset(source, train_transform(data_cfg) if train else eval_transform(data_cfg))


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes: pad to the batch max rounded up to a multiple of 32.

    Images are padded with 0 (the mean colour after normalisation), masks with 255 (ignored).
    """
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    h, w = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], h, w))
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.long)
    for k, (img, mask) in enumerate(batch):
        images[k, :, : img.shape[-2], : img.shape[-1]] = img
        masks[k, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


__all__ = [
    "DataError",
    "KINDS",
    "Kind",
    "background_index",
    "build_dataset",
    "check_labels",
    "class_names",
    "pad_collate",
    "held_out_split",
]
