"""Exports as MLflow models: each exported student is logged to its source trial's run as
artifacts (the export folder) and as MLflow models, registered, and the best gets an alias.

  `xgd-<sweep>`       the student in MLflow's PyTorch flavour (mlflow.pytorch.load_model), with a
                      signature (image NCHW float32 -> logits) and an input example
  `xgd-<sweep>-onnx`  the exported model.onnx in MLflow's ONNX flavour (when ONNX was exported)

Rank 1 of an export (the best by the metric) gets the alias `champion` in both, so
`mlflow.pytorch.load_model("models:/xgd-<sweep>@champion")` loads the one to deploy. The
PyTorch flavour stores the module with pickle (MLflow's format: load it only from a store you
trust); model.safetensors in the same version's run is the pickle-free copy. The models are
LoggedModels whose source run is the trial, so the trial's metrics are not copied into its run.
Works on a SQLite store: the registry lives in the same database.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from torch import nn

from orchestrator.results.export import Exported, _example
from orchestrator.tracking import reader
from orchestrator.tracking import tags as T
from orchestrator.tracking.store import ENV_URI

CHAMPION = "champion"
ONNX_SUFFIX = "-onnx"
EXAMPLE_MAX = 64  # side of the input example stored with a model whose size is dynamic
FLAVOUR_DISTS = {"pytorch": ("torch", "segmentation-models-pytorch", "timm"), "onnx": ("onnx", "onnxruntime")}


def pip_requirements(flavour: str) -> list[str]:
    """Pinned to what exported the model (MLflow would otherwise infer them in a subprocess)."""
    out = []
    for dist in FLAVOUR_DISTS[flavour]:
        try:
            out.append(f"{dist}=={md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    return out


def signature(classes: int, hw: tuple[int, int] | None):
    """image (N, 3, H, W) float32 -> logits (N, classes, H, W); H and W free unless fixed (hw)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    h, w = hw or (-1, -1)
    f32 = np.dtype("float32")
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 3, h, w))]),  # unnamed: one array in, not a dict
        outputs=Schema([TensorSpec(f32, (-1, classes, h, w))]),
    )


def _sizes(exp: Exported) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(input example size, the ONNX file's fixed size or None when dynamic)."""
    h, w = exp.card["input"]["shape"][2:]
    example = (h, w) if max(h, w) <= EXAMPLE_MAX else (EXAMPLE_MAX, EXAMPLE_MAX)
    fixed = None if exp.card["checks"].get("onnx_dynamic_size", True) else (h, w)
    return example, fixed


def _log_flavour(client, flavour: str, exp: Exported, model: nn.Module, experiment_id: str) -> str:
    """Log one flavour as a LoggedModel of the trial's run; its model id."""
    import mlflow

    run_id = exp.card["source"]["run_id"]
    classes = exp.card["model"]["num_classes"]
    example_hw, fixed = _sizes(exp)
    name = f"{reader.safe_name(exp.card['name'])}-{flavour}"
    lm = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags={T.SWEEP: exp.card["sweep"], T.RANK: str(exp.rank)}
    )
    common = dict(name=name, model_id=lm.model_id, pip_requirements=pip_requirements(flavour), metadata=_metadata(exp))
    if flavour == "pytorch":
        x = _example(example_hw).numpy()
        # pickle: load_model gives back the nn.Module (any batch and size); MLflow's default here,
        # pt2 (torch.export), would fix the batch and size to the example's
        mlflow.pytorch.log_model(
            model, signature=signature(classes, None), input_example=x, serialization_format="pickle", **common
        )
    else:
        import onnx

        x = _example(fixed or example_hw).numpy()
        onnx_model = onnx.load(str(exp.files["model.onnx"]))  # with its external weights, if any
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        mlflow.onnx.log_model(
            onnx_model,
            signature=signature(classes, fixed),
            input_example=x,
            onnx_execution_providers=providers,
            **common,
        )
    from mlflow.entities import LoggedModelStatus

    client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    return lm.model_id


def _metadata(exp: Exported) -> dict:
    card = exp.card
    return {
        "sweep": card["sweep"],
        "rank": card["rank"],
        "selection": card["selection"]["text"],
        "classes": card["model"]["classes"],
        "input": {k: card["input"][k] for k in ("layout", "color", "preprocess", "mean", "std")},
        "files_sha256": {n: f["sha256"] for n, f in card["files"].items()},
    }


@contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API on `uri` for a while. mlflow.set_tracking_uri also exports
    MLFLOW_TRACKING_URI to this process's environment (for child processes); both are put back
    after, or every later command of this process, and every process it starts, would use this
    store (the test suite caught `sweep` writing to an earlier `export`'s store)."""
    import mlflow

    env = os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # unset: MLflow resolves the store from the environment again
        if env is not None:
            os.environ[ENV_URI] = env


def ensure_registered_model(client, name: str) -> None:
    try:
        client.create_registered_model(name, description="XGD-distilled segmentation students")
    except Exception as e:  # already there
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise


def register(client, uri: str, exp: Exported, model: nn.Module, model_name: str) -> dict[str, str]:
    """Log the export folder to its source run, log and register the MLflow models; the versions
    by registered name."""

    run_id = exp.card["source"]["run_id"]
    client.log_artifacts(run_id, str(exp.dir), f"export/{reader.safe_name(exp.card['name'])}")
    experiment_id = exp.card["source"].get("experiment_id") or client.get_run(run_id).info.experiment_id
    flavours = {"pytorch": model_name}
    if "model.onnx" in exp.files:
        flavours["onnx"] = model_name + ONNX_SUFFIX
    tags = {
        T.SWEEP: exp.card["sweep"],
        T.RANK: str(exp.rank),
        T.SELECTION: exp.card["selection"]["text"],
        "sha256.safetensors": exp.card["files"].get("model.safetensors", {}).get("sha256", ""),
    }
    arch = f"{exp.card['model']['arch']}/{exp.card['model']['encoder']}"
    with fluent_store(uri):  # the flavours' log_model speaks to the fluent API's store
        versions = {}
        for flavour, registered in flavours.items():
            model_id = _log_flavour(client, flavour, exp, model, experiment_id)
            ensure_registered_model(client, registered)
            mv = client.create_model_version(
                registered,
                source=f"models:/{model_id}",
                run_id=run_id,
                tags={**tags, "flavour": flavour},
                description=f"{exp.card['name']}: {arch} ({flavour})",
                model_id=model_id,
            )
            versions[registered] = str(mv.version)
    return versions


def crown(client, versions: dict[str, str]) -> None:
    """The alias `champion` on the given version of each registered model (the export's rank 1)."""
    for name, version in versions.items():
        client.set_registered_model_alias(name, CHAMPION, version)


def model_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"
