"""Provenance: what the sweep's driver ran with, logged to the parent run as `environment/`.

  environment.json  Python, platform, host; torch with its CUDA and cuDNN builds; Ray, MLflow,
                    Optuna, smp and the other libraries the numbers depend on; the GPUs (model,
                    memory) and the driver version, or "none"; the git commit of the code that ran
  requirements.txt  every installed distribution as `name==version` (what `pip freeze` lists,
                    read with importlib.metadata: no pip subprocess)
  git_diff.patch    `git diff HEAD` of the code's work tree, only when tracked files have uncommitted
                    changes (untracked files are not in it; binary files are named, not inlined)

The GPUs are read without touching CUDA in the driver (no context, no device memory): pynvml when
it is installed, else `nvidia-smi`, else torch's device count. Each trial records where it ran
itself (tags `xgd.host`, `xgd.ray_node`, `xgd.device`, from trainables.setup.placement).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ARTIFACT_DIR = "environment"
NONE = "none"
LIBRARIES = (
    "torch",
    "torchvision",
    "ray",
    "mlflow",
    "optuna",
    "segmentation-models-pytorch",
    "timm",
    "grad-cam",
    "numpy",
    "onnx",
    "onnxruntime",
    "xgd-orchestrator",
)
CODE_DIR = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding the orchestrator


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return NONE


def requirements() -> str:
    """`name==version` per installed distribution, sorted by name (pip freeze's content)."""
    pins = {}
    for d in md.distributions():
        name = d.metadata["Name"]
        if name:
            pins.setdefault(name.lower(), f"{name}=={d.version}")
    return "\n".join(pins[k] for k in sorted(pins)) + "\n"


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    """stdout of a command, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _gpus_nvml() -> tuple[list[dict], str] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: treated as no GPU
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20
            gpus.append({"index": i, "name": pynvml.nvmlDeviceGetName(h), "memory_mib": int(mem)})
        return gpus, str(driver)
    finally:
        pynvml.nvmlShutdown()


def _gpus_smi() -> tuple[list[dict], str] | None:
    out = _run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"])
    if out is None:
        return None
    gpus, driver = [], NONE
    for line in out.strip().splitlines():
        index, name, mem, driver = (p.strip() for p in line.split(","))
        gpus.append({"index": int(index), "name": name, "memory_mib": int(float(mem))})
    return gpus, driver


def gpus() -> dict[str, Any]:
    """The GPUs this machine has and the NVIDIA driver's version ("none" without either)."""
    for probe in (_gpus_nvml, _gpus_smi):
        found = probe()
        if found is not None:
            return {"gpus": found[0], "driver": found[1], "gpu_source": probe.__name__.removeprefix("_gpus_")}
    import torch

    count = torch.cuda.device_count()  # no nvidia-smi: torch can still see devices (names unread)
    return {"gpus": [{"index": i} for i in range(count)], "driver": NONE, "gpu_source": "torch" if count else NONE}


def torch_builds() -> dict[str, str]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda or NONE, "cudnn": str(cudnn) if cudnn else NONE}


def git(where: Path = CODE_DIR) -> tuple[dict[str, Any], str | None]:
    """(commit, dirty) of the work tree holding the code, and `git diff HEAD` when dirty."""
    commit = (_run(["git", "rev-parse", "HEAD"], where) or "").strip()
    if not commit:
        return {"commit": NONE, "dirty": None}, None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], where) or ""
    diff = _run(["git", "diff", "HEAD"], where) if status.strip() else None  # binary files: named, not inlined
    return {"commit": commit, "dirty": bool(status.strip()), "tree": str(where)}, diff or None


def collect(where: Path = CODE_DIR) -> dict[str, str]:
    """The environment/ files by name."""
    facts: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "versions": {name: _version(name) for name in LIBRARIES},
        **torch_builds(),
        **gpus(),
    }
    facts["git"], diff = git(where)
    files = {"environment.json": json.dumps(facts, indent=2, default=str) + "\n", "requirements.txt": requirements()}
    if diff:
        files["git_diff.patch"] = diff
    return files


def log_environment(client, run_id: str, artifact_dir: str = ARTIFACT_DIR) -> list[str]:
    """Log the environment files to a run; their artifact paths."""
    paths = []
    for name, text in collect().items():
        client.log_text(run_id, text, f"{artifact_dir}/{name}")
        paths.append(f"{artifact_dir}/{name}")
    return paths
