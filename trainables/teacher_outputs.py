"""A cache of the frozen teacher's per-item outputs, shared by every trial that trains on the same
augmented items (one sweep, one seed; ablation and confirmation cells; DDP shards).

Why it is exact: a training item is a pure function of (seed, epoch, index) (`SeededSampler`,
`SegDataset`), the teacher is frozen in eval mode (no batch statistics, no dropout), so its output
for an item depends on the item alone. The key is everything else that output depends on: the
teacher checkpoint's bytes, the dataset's files, every item-shaping data setting, the seed, the
precision and memory format the teacher ran in (`setup_key`); epoch and index name the file.

Layout: <path>/<setup key>/e<epoch>/<index>.<what>, with `what` = `logits` (the teacher's logits
before the head's upsampling, redone on load: `trainables.teacher_step`) or `cam-<cam key>` (one
CAM setting: method, target, classes, reduction, layer). One small file per entry: visible only
when complete (written to a temporary file in the same folder, then `os.replace`), so a writer
killed mid-write leaves a `.tmp-*` file no reader opens, and two writers of one entry each
replace it with the same bytes. Any OSError on write (full disk, read-only, no permission) turns
the cache off for this process with one printed line; a read error is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_RAW = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}  # bf16 as its bits
_NAMES = {v: k for k, v in DTYPES.items()}
MAGIC = b"XGDT1\n"
STALE_TMP_S = 3600  # a temporary file this old belongs to a dead writer: eviction removes it
ITEM_KEYS = (  # data settings an augmented training item depends on (root: the fingerprint covers the files)
    "kind",
    "classes",
    "train_split",
    "num_train",
    "image_size",
    "data_seed",
    "crop",
    "eval_size",
    "scale",
    "flip",
    "jitter",
)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the teacher checkpoint: same weights, same key, wherever it lies)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def setup_key(config: dict, teacher_digest: str, amp: str, device: str, channels_last: bool) -> str:
    """The key of everything but (epoch, index) that a teacher output depends on."""
    from trainables.data import fingerprint

    data = config["data"]
    return _hash(
        {
            "teacher": teacher_digest,
            "files": fingerprint(data, (data["train_split"],)),
            "item": {k: data.get(k) for k in ITEM_KEYS},
            "seed": config["seed"],
            "amp": amp,
            "device": device,
            "channels_last": channels_last,
        }
    )


def cam_key(distill: dict, layer: str) -> str:
    """The key of one teacher-CAM setting (the maps differ per method, target, classes, reduction, layer)."""
    from trainables.saliency import cam_classes_of

    classes = cam_classes_of(distill)
    return _hash(
        {
            "cam": distill.get("cam") or "gradcam",
            "target": distill.get("cam_target") or "gt",
            "classes": classes,
            "background": None if classes == "all" else distill.get("background"),
            "reduce": distill.get("cam_reduce") or "sum",
            "layer": layer,
        }
    )[:12]


def encode(t: torch.Tensor, dtype: torch.dtype) -> bytes:
    """One entry's bytes: a header (stored dtype, the dtype to give back, shape, byte count), the data."""
    stored = t.detach().to("cpu", dtype).contiguous()
    raw = stored.view(torch.int16) if dtype == torch.bfloat16 else stored
    body = raw.numpy().tobytes()
    head = {"dtype": _NAMES[dtype], "as": _NAMES[t.dtype], "shape": list(t.shape), "bytes": len(body)}
    return MAGIC + json.dumps(head).encode() + b"\n" + body


def decode(blob: bytes) -> torch.Tensor | None:
    """The tensor `encode` wrote, in the dtype it had; None for anything incomplete or foreign."""
    if not blob.startswith(MAGIC):
        return None
    end = blob.find(b"\n", len(MAGIC))
    if end < 0:
        return None
    try:
        head = json.loads(blob[len(MAGIC) : end])
    except ValueError:
        return None
    body = blob[end + 1 :]
    if len(body) != head["bytes"]:
        return None
    dtype = DTYPES[head["dtype"]]
    arr = np.frombuffer(body, dtype=_RAW[dtype]).reshape(head["shape"])
    t = torch.from_numpy(arr.copy())
    if dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.to(DTYPES[head["as"]])


class OutputStore:
    """Per-item teacher outputs under one setup key; counts the bytes it writes."""

    def __init__(self, root: str | os.PathLike, key: str, dtype: str = "float32", max_gb: float = 20.0, say=print):
        if dtype not in DTYPES:
            raise ValueError(f"teacher.cache.dtype {dtype!r} is not allowed; allowed: {', '.join(DTYPES)}")
        self.root, self.dir = Path(root), Path(root) / key
        self.dtype, self.max_bytes, self.say = DTYPES[dtype], int(max_gb * 1e9), say
        self.enabled = True
        self.bytes_written = 0
        self.known = None  # (bytes in the cache at the last walk, bytes_written then)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.off(e)

    def off(self, err: OSError) -> None:
        if self.enabled:
            self.say(f"teacher cache off for this trial ({self.root}: {err.strerror or err}); the teacher runs live")
        self.enabled = False

    def path(self, epoch: int, index: int, what: str) -> Path:
        return self.dir / f"e{epoch:04d}" / f"{index}.{what}"

    def get(self, epoch: int, index: int, what: str) -> torch.Tensor | None:
        if not self.enabled:
            return None
        try:
            blob = self.path(epoch, index, what).read_bytes()
        except OSError:
            return None
        return decode(blob)

    def put(self, epoch: int, index: int, what: str, t: torch.Tensor) -> None:
        """Write one entry atomically; an OSError turns the cache off (never fails the trial)."""
        if not self.enabled:
            return
        blob = encode(t, self.dtype)
        dest = self.path(epoch, index, what)
        tmp = None
        try:
            dest.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, dest)
            self.bytes_written += len(blob)
        except OSError as e:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            self.off(e)

    def evict(self, force: bool = False) -> int:
        """Delete the oldest entries (by write time, any setup key) until the cache holds at most
        `max_gb`, and temporary files of dead writers; returns the bytes removed. Walking a large
        cache takes seconds, so after the first walk it walks again only once the last count plus
        this process's writes since pass `max_gb`, or those writes pass a tenth of it (other
        trials' writes are not seen until then: N trials sharing a cache can overshoot by N tenths)."""
        if not self.enabled:
            return 0
        if not force and self.known is not None:
            total, at = self.known
            since = self.bytes_written - at
            if total + since <= self.max_bytes and since <= self.max_bytes // 10:
                return 0
        files, now = [], time.time()
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                if n.startswith(".tmp-"):
                    if now - st.st_mtime > STALE_TMP_S:
                        _unlink(p)
                    continue
                files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        removed = 0
        for _, size, p in sorted(files):
            if total - removed <= self.max_bytes:
                break
            if _unlink(p):
                removed += size
        self.known = (total - removed, self.bytes_written)
        return removed


def _unlink(p: str) -> bool:
    try:
        os.unlink(p)
        return True
    except OSError:
        return False


def open_store(config: dict, teacher_digest: str, amp: str, device: str, channels_last: bool, say=print):
    """The store of the trial's `teacher.cache` settings, or None when they leave it off."""
    cache = (config.get("teacher") or {}).get("cache") or {}
    if not cache.get("enabled"):
        return None
    root = cache.get("path") or os.path.join("results", "teacher_outputs")
    key = setup_key(config, teacher_digest, amp, device, channels_last)
    store = OutputStore(root, key, cache.get("dtype", "float32"), float(cache.get("max_gb", 20.0)), say)
    store.evict()
    return store
