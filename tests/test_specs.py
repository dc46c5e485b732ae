"""Bad train specs: one line naming the key and what is allowed, exit code 2, no traceback."""

import subprocess
import sys

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.spec.load import apply_overrides
from orchestrator.spec.train import TrainSpec, load_train_spec

BAD = [
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"optim": {"epochs": "ten"}}, "optim.epochs"),
    ({"optm": {}}, "did you mean 'optim'"),
    ({"distill": {"alhpa": 1}}, "did you mean 'alpha'"),
    ({"distill": {"alpha": -0.5}}, "distill.alpha"),
    ({"distill": {"tau": 0}}, "distill.tau"),
    ({"distill": {"cam": "scorecam"}}, "distill.cam"),
    ({"distill": {"method": "magic"}}, "distill.method"),
    ({"model": {"encoder": "resnet181"}}, "did you mean 'resnet18'"),
    ({"model": {"arch": "deeplab"}}, "unknown arch"),
    ({"data": {"kind": "ttpla"}}, "data.root is required"),
    ({"data": {"kind": "folder", "root": "x"}}, "data.classes"),
    ({"data": {"scale": [2.0, 1.0]}}, "data.scale"),
    ({"data": {"crop": 8}}, "data.crop"),
    ({"name": "../escape"}, "name"),
    ({"run": {"device": "tpu"}}, "run.device"),
    ({"distill": {"weights": {"cwd_tua": 4}}}, "did you mean 'cwd_tau'"),
]


@pytest.mark.parametrize("raw,needle", BAD)
def test_bad_spec_gives_one_line_naming_the_key(tmp_path, raw, needle, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_train_spec(path)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_unreadable_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: synthetic\n  crop: [")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_yaml_is_safe_loaded(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(SpecError):
        load_train_spec(evil)
    assert not (tmp_path / "pwned").exists()


def test_overrides_and_defaults(tmp_path):
    raw = apply_overrides({}, ["optim.epochs=3", "distill.cam=hirescam", "data.scale=[0.5, 2.0]"])
    spec = TrainSpec.model_validate(raw)
    assert spec.optim.epochs == 3 and spec.distill.cam == "hirescam" and spec.data.scale == (0.5, 2.0)
    with pytest.raises(SpecError, match="key=value"):
        apply_overrides({}, ["optim.epochs"])


def test_bare_off_is_amp_off(tmp_path):
    """YAML 1.1 reads a bare `off` as false; `optim.amp: off` means the option, not a type error."""
    assert TrainSpec.model_validate(apply_overrides({}, ["optim.amp=off"])).optim.amp == "off"
    path = tmp_path / "s.yaml"
    path.write_text("optim: {amp: off}\n")
    assert load_train_spec(path).optim.amp == "off"
    path.write_text("optim: {amp: on}\n")  # true is not an option
    with pytest.raises(SpecError, match="amp"):
        load_train_spec(path)


def test_cli_exit_code_2_without_traceback(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("optim: {lr: 0}\n")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "train", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "optim.lr" in r.stderr


def test_cam_classes_default_is_the_trainers():
    from orchestrator.spec.train import DistillSpec
    from trainables.saliency import DEFAULT_CAM_CLASSES

    assert DistillSpec().cam_classes == DEFAULT_CAM_CLASSES == "foreground"
