"""scripts/cam_grad_params.py: which parameters L_sa trains, per module group and cam_bn_grad.
The figures docs/method.md quotes for DeepLabV3+ at decoder.block1 are checked here on a smaller
batch: with 'constant' the ASPP and encoder stages 2-4 get none, with 'exact' they do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cam_grad_params.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("cam_grad_params", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_group_table_counts_none_and_all_zero_as_no_gradient(script):
    grads = {
        "encoder.layer2.0.conv1.weight": torch.zeros(3),
        "encoder.layer2.0.bn1.weight": None,
        "encoder.layer2.0.bn1.bias": torch.tensor([0.0, -2.5]),
        "decoder.aspp.0.weight": torch.tensor([1e-30]),
    }
    table = script.group_table(grads)
    assert table["encoder.layer2"] == {"tensors": 3, "nonzero": 1, "max_abs": 2.5}
    assert table["decoder.aspp"]["nonzero"] == 1


def test_exact_reaches_the_aspp_and_deep_encoder_stages_constant_does_not(script):
    tables = {}
    for mode in ("constant", "exact"):
        layer, grads = script.saliency_grads("dlv3p_r18", mode, crop=64, batch=2, seed=1)
        assert layer == "decoder.block1"
        tables[mode] = script.group_table(grads)
    for group in ("decoder.aspp", "encoder.layer2", "encoder.layer3", "encoder.layer4"):
        assert tables["constant"][group]["nonzero"] == 0, group
        assert tables["exact"][group]["nonzero"] == tables["exact"][group]["tensors"], group
    for group in ("encoder.conv1", "encoder.layer1", "decoder.block1"):
        assert tables["constant"][group]["nonzero"] == tables["constant"][group]["tensors"], group
