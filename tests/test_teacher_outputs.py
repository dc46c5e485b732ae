"""The teacher-output cache (trainables.teacher_outputs, trainables.teacher_step): a run served by
the cache trains as the same run with the live teacher; entries appear whole or not at all, with
two writers and a writer killed mid-write; a full disk or an unwritable folder turns the cache off
with one line and the run goes on."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tests.test_loop import spec
from trainables import teacher_outputs as T
from trainables.loop import train_loop
from trainables.models import model_from_config
from trainables.teacher_step import head_split

DATA = {"kind": "synthetic", "num_train": 8, "num_val": 4, "num_test": 4, "image_size": 64, "crop": 32, "batch_size": 4}
FIGURES = ("train_", "val_", "lr", "steps")
TOL = 1e-5  # float32 round-off: the teacher runs on the missing items only, a different batch


@pytest.fixture(scope="module")
def teacher(module_tmp):
    tmp = module_tmp
    train_loop(spec(tmp, "teacher", data=DATA, optim__epochs=1, run__explain=False))
    return str(tmp / "teacher" / "best.pt")


def epochs(tmp, name) -> list[dict]:
    return [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def run(tmp, name, teacher, cache=None, **kw) -> list[dict]:
    t = {"checkpoint": teacher, "cache": cache or {"enabled": False}}
    kw = {"optim__epochs": 2, "run__explain": False, "data": DATA, **kw}
    train_loop(spec(tmp, name, teacher=t, **kw))
    return epochs(tmp, name)


def same_figures(a: list[dict], b: list[dict], tol: float = TOL) -> None:
    assert len(a) == len(b) > 0
    for ea, eb in zip(a, b):
        keys = [k for k in ea if k.startswith(FIGURES) and not k.startswith("train_time")]
        assert keys and set(keys) <= set(eb)
        for k in keys:
            assert ea[k] == pytest.approx(eb[k], rel=tol, abs=tol), (ea["epoch"], k, ea[k], eb[k])


def test_replaying_the_head_on_the_stored_logits_gives_the_live_logits_exactly():
    torch.manual_seed(0)
    model = model_from_config({"arch": "deeplabv3plus", "encoder": "resnet18"}, 3).eval()
    capture, replay = head_split(model)
    got = []
    capture.register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        live = model(torch.randn(2, 3, 64, 64))
        assert got[0].shape[-1] == 16  # stored before the x4 upsampling: 16x fewer bytes
        assert torch.equal(replay(got[0]), live)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_an_entry_decodes_to_what_was_stored_and_a_cut_one_to_nothing(dtype):
    t = torch.randn(3, 5, 7)
    back = T.decode(T.encode(t, T.DTYPES[dtype]))
    assert back.dtype == torch.float32
    assert torch.equal(back, t.to(T.DTYPES[dtype]).float())
    bf = torch.randn(2, 4).bfloat16()  # what bf16 autocast computed comes back as bf16, bit for bit
    assert torch.equal(T.decode(T.encode(bf, torch.float32)), bf)
    blob = T.encode(t, T.DTYPES[dtype])
    assert T.decode(blob[:-1]) is None and T.decode(blob[:10]) is None and T.decode(b"junk") is None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["xgd", "pi"])
def test_a_run_served_by_the_cache_trains_as_the_live_run(tmp_path, teacher, method):
    """Live, then cold cache (writes), then warm (reads every item; the teacher never runs): every
    epoch's losses, val metrics and learning rate agree to float32 round-off."""
    cache = {"enabled": True, "path": str(tmp_path / "cache")}
    live = run(tmp_path, "live", teacher, distill__method=method)
    cold = run(tmp_path, "cold", teacher, cache, distill__method=method)
    warm = run(tmp_path, "warm", teacher, cache, distill__method=method)
    same_figures(live, cold)
    same_figures(live, warm)
    items = 8  # num_train, two full batches of 4
    assert [e["teacher_forwards"] for e in live] == [items, items]
    assert [(e["teacher_forwards"], e["teacher_cache_misses"]) for e in cold] == [(items, items)] * 2
    assert [(e["teacher_forwards"], e["teacher_cache_hits"]) for e in warm] == [(0, items)] * 2
    assert all(e["teacher_cache_bytes"] > 0 for e in cold) and all(e["teacher_cache_bytes"] == 0 for e in warm)
    kinds = sorted(
        {p.split(".", 1)[1].split("-")[0] for p in os.listdir(next((tmp_path / "cache").iterdir()) / "e0000")}
    )
    assert kinds == (["cam", "logits"] if method == "xgd" else ["logits"])


@pytest.mark.slow
def test_another_seed_or_cam_method_misses(tmp_path, teacher):
    cache = {"enabled": True, "path": str(tmp_path / "cache")}
    kw = {"optim__epochs": 1}
    run(tmp_path, "a", teacher, cache, **kw)
    assert run(tmp_path, "b", teacher, cache, seed=1, **kw)[0]["teacher_cache_hits"] == 0
    c = run(tmp_path, "c", teacher, cache, distill__cam="gradcam++", **kw)[0]
    assert (c["teacher_cache_hits"], c["teacher_forwards"]) == (0, 8)  # logits hit, its CAMs do not: live


WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from trainables import teacher_outputs as T
    root, mode, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    store = T.OutputStore(root, "key")
    t = torch.arange(1 << 20, dtype=torch.float32)
    if mode == "stall":  # write half the bytes, say so, then wait to be killed
        real = os.fdopen
        class Half:
            def __init__(self, f): self.f = f
            def __enter__(self): return self
            def __exit__(self, *a): self.f.close()
            def write(self, b):
                self.f.write(b[: len(b) // 2]); self.f.flush()
                open(ready, "w").close(); time.sleep(600)
        os.fdopen = lambda fd, m: Half(real(fd, m))
        store.put(0, 7, "logits", t)
    else:
        open(ready, "w").close()
        for _ in range(40):
            store.put(0, 7, "logits", t)
    """
)


def writer(tmp_path, mode: str, name: str) -> tuple[subprocess.Popen, str]:
    ready = str(tmp_path / f"{name}.ready")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "cache"), mode, ready], env=env)
    deadline = time.time() + 120
    while not os.path.exists(ready):
        assert proc.poll() is None and time.time() < deadline, "the writer never started"
        time.sleep(0.05)
    return proc, ready


def test_entries_appear_whole_with_two_writers_and_one_killed_mid_write(tmp_path):
    store = T.OutputStore(tmp_path / "cache", "key")
    want = torch.arange(1 << 20, dtype=torch.float32)
    killed, _ = writer(tmp_path, "stall", "killed")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    entry = store.path(0, 7, "logits")
    tmps = [p for p in os.listdir(entry.parent) if p.startswith(".tmp-")]
    assert not entry.exists() and len(tmps) == 1  # half an entry, under a name no reader opens
    assert os.path.getsize(entry.parent / tmps[0]) == len(T.encode(want, torch.float32)) // 2
    assert store.get(0, 7, "logits") is None
    a, _ = writer(tmp_path, "write", "a")
    b, _ = writer(tmp_path, "write", "b")
    seen = 0
    while a.poll() is None or b.poll() is None:  # read while both replace the entry
        got = store.get(0, 7, "logits")
        if got is not None:
            assert torch.equal(got, want)
            seen += 1
    assert a.returncode == 0 and b.returncode == 0 and seen > 0
    assert torch.equal(store.get(0, 7, "logits"), want)
    old = time.time() - T.STALE_TMP_S - 1
    os.utime(entry.parent / tmps[0], (old, old))
    store.evict()
    assert not (entry.parent / tmps[0]).exists() and entry.exists()  # a dead writer's file goes


def test_eviction_removes_the_oldest_entries_past_max_gb(tmp_path):
    store = T.OutputStore(tmp_path, "key", max_gb=2.5e-6)  # 2500 bytes
    t = torch.zeros(100)  # ~470 bytes an entry
    for i in range(10):
        store.put(0, i, "logits", t)
        os.utime(store.path(0, i, "logits"), (1000 + i, 1000 + i))
    store.evict()
    left = sorted(int(p.split(".")[0]) for p in os.listdir(store.path(0, 0, "logits").parent))
    assert left == list(range(10 - len(left), 10)) and 0 < len(left) < 10
    assert sum(os.path.getsize(store.path(0, i, "logits")) for i in left) <= 2500
    store.put(0, 10, "logits", t)  # a tenth of max_gb written since the last walk: the next one walks
    os.utime(store.path(0, 10, "logits"), (2000, 2000))
    assert store.evict() > 0 and store.path(0, 10, "logits").exists() and not store.path(0, left[0], "logits").exists()


def full_disk(monkeypatch):
    """Every cache write goes to /dev/full: the kernel's own ENOSPC."""
    real = T.tempfile.mkstemp

    def mkstemp(prefix, dir):
        fd, path = real(prefix=prefix, dir=dir)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path

    monkeypatch.setattr(T.tempfile, "mkstemp", mkstemp)


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["full", "unwritable"])
def test_a_full_disk_or_unwritable_folder_turns_the_cache_off_with_one_line(
    tmp_path, teacher, monkeypatch, capsys, broken
):
    path = tmp_path / "cache"
    if broken == "full":
        full_disk(monkeypatch)
    else:
        path.write_text("a file where the folder should be")
    got = run(tmp_path, "run", teacher, {"enabled": True, "path": str(path)})
    live = run(tmp_path, "live", teacher)
    same_figures(live, got)
    lines = [line for line in capsys.readouterr().out.splitlines() if "teacher cache off" in line]
    assert len(lines) == 1, lines
    assert [e["teacher_forwards"] for e in got] == [8, 8]
    if broken == "full":
        assert "No space left on device" in lines[0]
        leftovers = [n for _, _, names in os.walk(path) for n in names]
        assert leftovers == []  # the failed write's temporary file is gone too


def test_dry_run_says_which_methods_the_cache_serves_and_its_size():
    from orchestrator.errors import SpecError
    from orchestrator.run.teacher_plan import describe, teacher_cache
    from orchestrator.spec.sweep import load_sweep_spec

    spec = load_sweep_spec("search_spaces/quickstart.yaml", ["space.distill.method.values=[xgd, pi, at]"])
    cache = teacher_cache(spec)
    assert cache["enabled"] is True and os.path.isabs(cache["path"])  # on by default in a sweep
    line = describe(spec, cache)
    assert "xgd: cached logits and CAMs; pi: cached logits; at: live teacher (at read its features)" in line
    # DeepLabV3+ R34 teacher, 5 classes, crop 64: logits stored at 16x16, CAM at decoder.block1 (16x16)
    logits, cam = 100 + 4 * 5 * 16 * 16, 100 + 4 * 16 * 16
    per_item = logits + 3 * cam  # three CAM methods in the space
    assert f"48 items x 12 epochs x {per_item / 1e3:.1f} kB" in line
    assert f"= {48 * 12 * per_item / 1e9:.3f} GB" in line
    off = load_sweep_spec("search_spaces/quickstart.yaml", ["teacher.cache.enabled=false"])
    assert describe(off, teacher_cache(off)).startswith("off")
    with pytest.raises(SpecError, match="teacher.cache.path"):
        load_sweep_spec("search_spaces/quickstart.yaml", ["teacher.cache.path=s3://bucket/cache"])
