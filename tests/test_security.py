"""Checkpoints from elsewhere never run code: every load is weights-only."""

import os

import pytest
import torch

from trainables import checkpoint
from trainables.models import create_model, load_encoder_weights


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _malicious(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Payload(target)}, path)
    return path, target


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    path, target = _malicious(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    assert "weights-only" in str(e.value) and "\n" not in str(e.value)
    assert not target.exists()


def test_malicious_encoder_weights_are_refused(tmp_path):
    path, target = _malicious(tmp_path)
    model = create_model("deeplabv3plus", "resnet18", 5)
    with pytest.raises(ValueError, match="weights-only"):
        load_encoder_weights(model, str(path))
    assert not target.exists()


def test_local_encoder_state_dict_loads(tmp_path):
    src = create_model("deeplabv3plus", "resnet18", 5)
    path = tmp_path / "enc.pt"
    torch.save(src.encoder.state_dict(), path)
    dst = create_model("deeplabv3plus", "resnet18", 3, encoder_weights=str(path))
    assert torch.equal(dst.encoder.conv1.weight, src.encoder.conv1.weight)


def test_teacher_checkpoint_with_payload_fails_the_train_command(tmp_path, capsys):
    from orchestrator.cli import main

    path, target = _malicious(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"teacher: {{checkpoint: {path}}}\nrun: {{out_dir: {tmp_path / 'out'}}}\n"
        "data: {num_train: 4, num_val: 2, image_size: 64, crop: 32, batch_size: 2}\n"
    )
    assert main(["train", str(spec)]) == 2
    assert "teacher.checkpoint" in capsys.readouterr().err and not target.exists()
