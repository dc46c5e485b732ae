"""Datasets: exact masks per on-disk layout, synthetic determinism, aligned transforms, DataErrors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import (
    box,
    data_cfg,
    folder_mask,
    labelme_json,
    save_palette,
    supervisely_ann,
    voc_mask,
    write_folder,
    write_image,
    write_labelme,
    write_supervisely,
    write_voc,
)
from trainables.constants import IMAGENET_MEAN, IMAGENET_STD
from trainables.data import DataError, build_dataset, class_names, pad_collate
from trainables.data.base import SegDataset, sample_seed
from trainables.data.synthetic import CLASSES as TTPLA_CLASSES
from trainables.data.synthetic import render
from trainables.data.transforms import eval_transform, train_transform
from trainables.setup import make_loaders


def mask_of(cfg: dict, split: str = "train", i: int = 0) -> np.ndarray:
    return build_dataset(cfg, split, train=False)[i][1].numpy()


def raises(match: str, fn, *args):
    """The DataError is one line and contains `match` (a file or directory name)."""
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def load_all(cfg: dict, split: str = "train") -> None:
    ds = build_dataset(cfg, split, train=False)
    for i in range(len(ds)):
        ds[i]


# ---------------------------------------------------------------- TTPLA (LabelMe)


def test_labelme_masks_exact(tmp_path):
    write_labelme(tmp_path)
    cfg = data_cfg("ttpla", tmp_path)
    ds = build_dataset(cfg, "train", train=False)
    assert len(ds) == 2 and class_names(cfg) == TTPLA_CLASSES
    img, m = ds[0]
    assert img.shape == (3, 16, 20) and img.dtype == torch.float32 and m.dtype == torch.int64
    m = m.numpy()
    assert m[6, 5] == 1 and m[7, 9] == 1  # cable drawn last, over the tower
    assert m[3, 5] == 2 and m[13, 10] == 2 and m[8, 4] == 2  # tower incl. its polygon boundary
    assert m[12, 16] == 255 and m[0, 0] == 0 and m[15, 19] == 0 and m[6, 15] == 1
    assert m[5, 11] == 0 and m[8, 0] == 0
    b = ds[1][1].numpy()  # ' Tower_Wooden ' normalised, image found by basename of a Windows path
    assert (b[:, :4] == 4).all() and (b[:, 4:] == 0).all()
    assert (mask_of(cfg, "val") == b).all()


def test_labelme_split_file_in_root_and_image_normalised(tmp_path):
    write_labelme(tmp_path)
    (tmp_path / "splitting_dataset_txt" / "val.txt").rename(tmp_path / "test.txt")
    img, _ = build_dataset(data_cfg("ttpla", tmp_path), "test", train=False)[0]
    raw = np.asarray(Image.open(tmp_path / "data_original_size" / "b.png"), np.float32) / 255
    want = (raw - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.allclose(img.permute(1, 2, 0).numpy(), want, atol=1e-5)


def test_labelme_bad_data(tmp_path):
    write_labelme(tmp_path)
    cfg = data_cfg("ttpla", tmp_path)
    d = tmp_path / "data_original_size"
    raises("nowhere", build_dataset, data_cfg("ttpla", tmp_path / "nowhere"), "train", False)
    raises("test.txt", build_dataset, cfg, "test", False)  # no split file
    (tmp_path / "test.txt").write_text("\n\n")
    raises("test.txt", build_dataset, cfg, "test", False)  # empty split file
    (tmp_path / "test.txt").write_text("zzz.jpg\n")
    raises("zzz", build_dataset, cfg, "test", False)  # listed but absent

    labelme_json(d / "b.json", "b.png", [{"label": "tower_steel", "points": box(0, 0, 3, 3)}])
    msg = raises("b.json", build_dataset, cfg, "val", False)
    assert "tower_steel" in msg and "tower_lattice" in msg and "void" in msg  # names the allowed labels
    labelme_json(d / "b.json", "b.png", [{"label": "cable", "points": [[1, 1]]}])
    raises("b.json", build_dataset, cfg, "val", False)
    labelme_json(d / "b.json", "b.png", [{"label": "cable", "points": box(0, 0, 2, 2), "shape_type": "circle"}])
    assert "circle" in raises("b.json", build_dataset, cfg, "val", False)
    (d / "b.json").write_text("{not json")
    raises("b.json", build_dataset, cfg, "val", False)
    labelme_json(d / "b.json", "gone.png", [])
    (d / "b.png").rename(d / "b.bak")
    raises("b.json", build_dataset, cfg, "val", False)  # image not next to its json

    labelme_json(d / "b.json", "b.png", [], w=30)
    (d / "b.bak").rename(d / "b.png")
    ds = build_dataset(cfg, "val", False)  # size mismatch is found when the image is read
    assert "30x16" in raises("b.png", ds.__getitem__, 0)
    (d / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = build_dataset(cfg, "train", False)
    raises("a.png", ds.__getitem__, 0)

    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.json").write_text((d / "a.json").read_text())
    assert "a.json" in raises("copy", build_dataset, cfg, "train", False)  # duplicate annotation names


# ---------------------------------------------------------------- TTPLA (Supervisely)


def test_supervisely_masks_exact(tmp_path):
    write_supervisely(tmp_path)
    m = mask_of(data_cfg("ttpla", tmp_path))
    assert m.shape == (16, 24)
    assert m[3, 3] == 3 and m[12, 12] == 3 and m[11, 4] == 3  # tucohy ring
    assert m[7, 7] == 4 and m[9, 6] == 4  # the hole shows the wooden pole drawn before it
    assert m[5, 5] == 0 and m[10, 10] == 0  # ... and background where nothing lies below
    assert m[4, 18] == 1 and m[4, 19] == 1 and m[5, 19] == 1 and m[5, 20] == 1  # bitmap at its origin
    assert m[4, 20] == 0 and m[5, 18] == 0 and m[0, 0] == 0
    assert (m == 1).sum() == 4 and set(np.unique(m)) == {0, 1, 3, 4}


def test_supervisely_bad_data(tmp_path):
    write_supervisely(tmp_path)
    cfg = data_cfg("ttpla", tmp_path)
    ann = tmp_path / "train" / "ann" / "x.png.json"
    raises(str(tmp_path / "val"), build_dataset, cfg, "val", False)  # split folder missing
    rect = {"classTitle": "cable", "geometryType": "rectangle", "points": {"exterior": box(0, 0, 1, 1)}}
    supervisely_ann(ann, [rect])
    assert "rectangle" in raises("x.png.json", build_dataset, cfg, "train", False)
    supervisely_ann(ann, [{"classTitle": "kite", "geometryType": "polygon", "points": {"exterior": box(0, 0, 1, 1)}}])
    assert "kite" in raises("x.png.json", build_dataset, cfg, "train", False)
    broken = {"classTitle": "cable", "geometryType": "bitmap", "bitmap": {"data": "@@", "origin": [0, 0]}}
    supervisely_ann(ann, [broken])
    raises("x.png.json", build_dataset, cfg, "train", False)
    ann.unlink()
    raises("x.png", build_dataset, cfg, "train", False)  # image without annotation
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["classes"].append({"title": "bird"})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert "bird" in raises("meta.json", build_dataset, cfg, "train", False)
    (tmp_path / "empty" / "img").mkdir(parents=True)
    (tmp_path / "empty" / "ann").mkdir()
    meta["classes"].pop()
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    raises("empty", build_dataset, cfg, "empty", False)


# ---------------------------------------------------------------- VOC


def test_voc_masks_exact(tmp_path):
    write_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        cfg = data_cfg("voc", root)
        ds = build_dataset(cfg, "train", train=False)
        assert len(ds) == 2 and len(class_names(cfg)) == 21 and class_names(cfg)[15] == "person"
        assert (ds[1][1].numpy() == voc_mask()).all()
    m = mask_of(data_cfg("voc", tmp_path), "val")
    assert m[5, 8] == 15 and m[3, 4] == 255 and m[8, 12] == 255 and m[0, 0] == 0 and m[5, 13] == 0


def test_voc_bad_data(tmp_path):
    msg = raises("VOCdevkit/VOC2012", build_dataset, data_cfg("voc", tmp_path), "train", False)
    assert str(tmp_path) in msg
    voc = write_voc(tmp_path)
    cfg = data_cfg("voc", tmp_path)
    raises("test", build_dataset, cfg, "test", False)  # not a VOC split
    bad = voc_mask()
    bad[0, 0] = 30
    save_palette(bad, voc / "SegmentationClass" / "2007_000033.png")
    ds = build_dataset(cfg, "train", False)
    msg = raises("2007_000033.png", ds.__getitem__, 1)
    assert "30" in msg and "0..20" in msg
    (voc / "JPEGImages" / "2007_000032.jpg").unlink()
    raises("2007_000032.jpg", build_dataset, cfg, "train", False)


# ---------------------------------------------------------------- folder


def test_folder_masks_exact(tmp_path):
    write_folder(tmp_path)
    cfg = data_cfg("folder", tmp_path, classes=["bg", "road", "car"])
    assert class_names(cfg) == ["bg", "road", "car"]
    m = mask_of(cfg)
    assert (m == folder_mask()).all() and m[0, 0] == 1 and m[11, 9] == 2 and m[3, 15] == 255 and m[3, 9] == 0


def test_folder_bad_data(tmp_path):
    write_folder(tmp_path)
    cfg = data_cfg("folder", tmp_path, classes=["bg", "road"])  # mask holds id 2
    msg = raises("a.png", build_dataset(cfg, "train", False).__getitem__, 0)
    assert "class id 2" in msg and "0..1" in msg
    cfg = data_cfg("folder", tmp_path, classes=["bg", "road", "car"])
    raises(str(tmp_path / "val"), build_dataset, cfg, "val", False)
    write_image(tmp_path / "train" / "images" / "b.jpg", 16, 16)
    raises("b.jpg", build_dataset, cfg, "train", False)  # image without mask
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tmp_path / "train" / "masks" / "b.png")
    raises("b.png", build_dataset(cfg, "train", False).__getitem__, 1)  # size mismatch
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "train" / "masks" / "b.png")
    assert "RGB" in raises("b.png", build_dataset(cfg, "train", False).__getitem__, 1)
    (tmp_path / "train" / "images" / "b.jpg").write_bytes(b"garbage")
    raises("b.jpg", build_dataset(cfg, "train", False).__getitem__, 1)
    (tmp_path / "test" / "images").mkdir(parents=True)
    raises("images", build_dataset, cfg, "test", False)
    raises("kind", class_names, {"kind": "coco"})


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_counts_and_classes():
    cfg = data_cfg("synthetic", num_train=12, num_val=3, num_test=2, image_size=64, data_seed=7)
    assert [len(build_dataset(cfg, s, False)) for s in ("train", "val", "test")] == [12, 3, 2]
    a, b = build_dataset(cfg, "train", False), build_dataset(cfg, "train", False)
    for i in (0, 5):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
        assert a[i][0].shape == (3, 64, 64) and a[i][1].shape == (64, 64)
    other = build_dataset({**cfg, "data_seed": 8}, "train", False)
    assert not torch.equal(a[0][0], other[0][0])
    assert not torch.equal(a[0][0], build_dataset(cfg, "val", False)[0][0])  # splits differ too
    seen = set()
    for i in range(len(a)):
        seen |= set(a[i][1].unique().tolist())
    assert seen == set(range(5))
    assert build_dataset(cfg, "train", False).classes == class_names(cfg) == TTPLA_CLASSES
    raises("synthetic", build_dataset, cfg, "holdout", False)


def test_synthetic_scene_statistics_and_speed():
    start = time.perf_counter()
    scenes = [render([0, 0, i], 96) for i in range(100)]
    assert time.perf_counter() - start < 5.0  # ~0.2-0.5 s on one core; generous for shared CI
    share = np.bincount(np.concatenate([m.ravel() for _, m in scenes]), minlength=5) / (100 * 96 * 96)
    assert share.shape == (5,) and 0.6 < share[0] < 0.97 and (share[1:] > 0.003).all()
    with_object = sum(bool((m > 0).any()) for _, m in scenes)
    assert with_object >= 85  # at least one tower or cable most of the time
    runs = []  # vertical run lengths of cable pixels, a proxy for line width on near-level cables
    for _, m in scenes[:30]:
        for col in (m[:, 10] == 1, m[:, 50] == 1):
            edges = np.flatnonzero(np.diff(np.r_[0, col.astype(np.int8), 0]))
            runs += (edges[1::2] - edges[::2]).tolist()
    assert len(runs) > 10 and 2 <= np.median(runs) <= 4  # 2-3 px lines at 96 px


# ---------------------------------------------------------------- transforms and collate


class _Blocks:
    """A source whose mask is readable from its image: class 1 where red is high (8-px blocks)."""

    classes = ["bg", "red"]

    def __init__(self, h: int = 48, w: int = 40):
        rng = np.random.default_rng(0)
        self.mask = np.kron(rng.integers(0, 2, (h // 8, w // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
        self.img = np.zeros((h, w, 3), np.uint8)
        self.img[..., 0] = self.mask * 200 + 20
        self.img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * 5  # left/right asymmetric

    def __len__(self) -> int:
        return 1

    def name(self, i: int) -> str:
        return "blocks"

    def load(self, i: int):
        return self.img, self.mask


def _red(img: torch.Tensor) -> torch.Tensor:
    return img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def test_train_transform_keeps_alignment_and_crop():
    cfg = data_cfg("synthetic", crop=32, scale=(0.5, 1.5), flip=True, jitter=0.0)
    ds = SegDataset(_Blocks(), train_transform(cfg))
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        img, m = ds[0]
        assert img.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.int64
        valid = m != 255
        agree = ((_red(img) > 0.47) == (m == 1))[valid].float().mean()
        assert agree > 0.93, (seed, float(agree))
        assert torch.equal(_red(img).abs() < 1e-4, ~valid)  # padding: image 0 exactly where mask is 255
        green = (img[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1])[valid.any(1)][:, valid.any(0)]
        flipped += int(green[:, 0].mean() > green[:, -1].mean())  # source green grows left to right
    assert 0 < flipped < 12  # both orientations were drawn


def test_flip_moves_image_and_mask_together():
    cfg = data_cfg("synthetic", crop=40, scale=(1.0, 1.0), flip=True, jitter=0.0)
    src = _Blocks(40, 40)
    ds = SegDataset(src, train_transform(cfg))
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        _, m = ds[0]
        if torch.equal(m, torch.from_numpy(src.mask).long()):
            outcomes.add("same")
        elif torch.equal(m, torch.from_numpy(src.mask[:, ::-1].copy()).long()):
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


def test_train_transform_reproducible_with_torch_seed():
    cfg = data_cfg("synthetic", num_train=2, image_size=64, crop=48, jitter=0.3)
    ds = build_dataset(cfg, "train", train=True)
    torch.manual_seed(3)
    a = ds[1]
    torch.manual_seed(3)
    b = ds[1]
    torch.manual_seed(4)
    c = ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def _train_batches(workers: int, epochs: tuple[int, ...], seed: int = 5) -> list[list]:
    cfg = {
        "data": data_cfg(
            "synthetic", num_train=6, num_val=2, image_size=48, crop=32, jitter=0.3, batch_size=2, workers=workers
        )
    }
    train, _, _ = make_loaders(cfg, torch.device("cpu"), seed)
    out = []
    for epoch in epochs:
        train.sampler.set_epoch(epoch)
        out.append(list(train))
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_training_items_are_a_function_of_seed_epoch_and_index_whatever_the_workers():
    """Shuffle and augmentations come from (seed, epoch, index): the same batches in the main
    process and in 2 persistent workers, also when the workers start at a later epoch (a resumed
    run); other epochs and seeds differ, and loading leaves the global RNG alone."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    inline = _train_batches(0, (0, 2))
    assert torch.equal(torch.get_rng_state(), before)
    assert _same(inline[0], _train_batches(2, (0, 2))[0]) and _same(inline[1], _train_batches(2, (2,))[0])
    assert not _same(inline[0], inline[1]) and not _same(inline[1], _train_batches(0, (2,), seed=6)[0])


def test_a_seeded_item_ignores_the_global_rng():
    ds = build_dataset(data_cfg("synthetic", num_train=2, image_size=64, crop=48, jitter=0.3), "train", train=True)
    torch.manual_seed(1)
    a = ds[(1, sample_seed(5, 2, 1))]
    torch.manual_seed(2)
    b = ds[(1, sample_seed(5, 2, 1))]
    c = ds[(1, sample_seed(5, 3, 1))]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_ddp_shards_partition_the_training_set_in_a_seeded_order():
    cfg = {"data": data_cfg("synthetic", num_train=16, num_val=2, image_size=48, crop=32, batch_size=4)}
    order = {}
    for seed in (3, 4):
        shards = [make_loaders(cfg, torch.device("cpu"), seed, rank, 2)[0] for rank in (0, 1)]
        assert [len(dl) for dl in shards] == [2, 2]  # 16 images / 2 ranks / batch 4
        order[seed] = [[i for i, _ in dl.sampler] for dl in shards]
        assert sorted(order[seed][0] + order[seed][1]) == list(range(16))
    assert order[3] != order[4]


def test_eval_size_resizes_shorter_side_with_nearest_masks(tmp_path):
    write_folder(tmp_path)
    cfg = data_cfg("folder", tmp_path, classes=["bg", "road", "car"], eval_size=32)
    img, m = build_dataset(cfg, "train", train=False)[0]
    assert img.shape == (3, 32, 32) and m.shape == (32, 32)
    assert set(m.unique().tolist()) == {0, 1, 2, 255}
    assert torch.equal(m[::2, ::2], torch.from_numpy(folder_mask()).long())  # 2x nearest-exact
    assert eval_transform(data_cfg("synthetic"))  # no eval_size: just normalisation


def test_pad_collate_rounds_up_to_32():
    a = (torch.ones(3, 40, 50), torch.ones(40, 50, dtype=torch.long))
    b = (torch.full((3, 64, 33), 2.0), torch.zeros(64, 33, dtype=torch.long))
    images, masks = pad_collate([a, b])
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64) and masks.dtype == torch.long
    assert (images[0, :, :40, :50] == 1).all()
    assert (images[0, :, 40:] == 0).all() and (images[0, :, :, 50:] == 0).all()
    assert (masks[0, :40, :50] == 1).all() and (masks[0, 40:] == 255).all() and (masks[1, :, 33:] == 255).all()
    assert (masks[1, :, :33] == 0).all() and (images[1, :, :, :33] == 2).all()
    images, _ = pad_collate([(torch.zeros(3, 64, 96), torch.zeros(64, 96, dtype=torch.long))])
    assert images.shape == (1, 3, 64, 96)


def test_held_out_split_per_kind_and_setting(tmp_path):
    from trainables.data import held_out_split

    assert held_out_split(data_cfg("synthetic")) == "test"
    assert held_out_split(data_cfg("ttpla", tmp_path)) == "test"
    assert held_out_split(data_cfg("voc", tmp_path)) is None  # train/val only
    folder = data_cfg("folder", tmp_path, classes=["bg", "fg"])
    assert held_out_split(folder) is None  # <root>/test/images absent
    write_folder(tmp_path, "test")
    assert held_out_split(folder) == "test"
    assert held_out_split(data_cfg("synthetic", val_split="test")) is None  # the kind's own is val here
    assert held_out_split(data_cfg("synthetic", test_split=None)) is None
    assert held_out_split(data_cfg("voc", tmp_path, test_split="trainval")) == "trainval"
    with pytest.raises(ValueError, match="data.test_split 'val' is also the train or val split"):
        data_cfg("synthetic", test_split="val")
