"""Deployment examples (deploy/): each parses, and the command it runs is the orchestrator's, on a spec
of this repo, with overrides the spec accepts (checked by the CLI's own --dry-run, which starts nothing)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(argv: list[str], capsys) -> str:
    """The CLI's dry run of `argv` (after `python -m orchestrator`); its printout."""
    assert main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_kuberay_rayjob_runs_a_sweep_of_this_repo(capsys):
    job = yaml.safe_load((ROOT / "deploy/kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert all(g["template"]["spec"]["containers"] for g in cluster["workerGroupSpecs"])
    shell = job["spec"]["entrypoint"]
    cd, command = shell.split("&&")
    assert cd.split()[0] == "cd"
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "orchestrator", "sweep"]
    spec = argv[4]
    assert (ROOT / spec).is_file(), spec
    assert argv[argv.index("--resume") + 1] == "auto"  # a retried job continues the sweep
    out = _dry_run(argv[3:], capsys)
    assert "/shared/xgd/sweeps" in out and "mlflow.default.svc.cluster.local" in out
    assert job["spec"]["backoffLimit"] >= 1
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    pods.append(job["spec"]["submitterPodTemplate"]["spec"])
    for pod in pods:
        for c in pod["containers"]:  # token auth everywhere, the token from a Secret
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    for pod in pods[:-1]:
        shm = {v["name"]: v for v in pod["volumes"]}["dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_slurm_script_starts_ray_and_runs_the_orchestrator(capsys):
    path = ROOT / "deploy/slurm.sbatch"
    subprocess.run(["bash", "-n", str(path)], check=True)  # shell syntax
    text = path.read_text()
    assert re.search(r"^#SBATCH --nodes=\d+", text, re.M)
    assert "ray start --head" in text and 'ray start --address="$head_ip:$PORT"' in text
    defaults = dict(re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", text, re.M))
    assert defaults["COMMAND"] in ("sweep", "ablate") and (ROOT / defaults["SPEC"]).is_file()
    command = re.search(r"^python -m orchestrator .*?(?<!\\)$", text.replace("\\\n", " "), re.M | re.S).group(0)
    argv = shlex.split(command)
    if argv[-1] == "&":  # run in the background so that the trap can signal it
        argv = argv[:-1]
    assert argv[:3] == ["python", "-m", "orchestrator"] and "--address" in argv
    assert argv[argv.index("--resume") + 1] == "auto"  # a requeued job continues the sweep
    assert re.search(r"^#SBATCH --requeue", text, re.M) and "trap " in text and "kill -INT" in text
    assert "ray status" in text and not re.search(r"^sleep \d+", text, re.M)  # a readiness check, no fixed sleep
    assert "RAY_AUTH_MODE=token" in text
    values = {
        "$COMMAND": defaults["COMMAND"],
        "$SPEC": defaults["SPEC"],
        "$DATA": defaults["DATA"],
        "$SHARED": "/shared/xgd",
    }
    argv = [re.sub(r"\$\w+", lambda m: values.get(m.group(0), m.group(0)), a) for a in argv[3:]]
    i = argv.index("--address")
    del argv[i : i + 2]  # the dry run starts nothing, so it needs no cluster
    out = _dry_run(argv, capsys)
    assert "/shared/xgd/sweeps" in out


def test_dry_run_names_the_executor_real_specs_use_ray_train(capsys, tmp_path):
    for spec, executor in [
        ("search_spaces/quickstart.yaml", "one process"),
        ("search_spaces/ttpla.yaml", "Ray Train"),
        ("search_spaces/voc.yaml", "Ray Train"),
        ("search_spaces/substation.yaml", "Ray Train"),
    ]:
        out = _dry_run(["sweep", str(ROOT / spec), "--set", f"results={tmp_path}"], capsys)
        line = next(ln for ln in out.splitlines() if ln.startswith("executor"))
        assert executor in line, (spec, line)
    for name in ("table1_method_student", "table2_loss_terms", "table3_cam", "fig3_hparams"):
        out = _dry_run(
            ["ablate", str(ROOT / f"search_spaces/ablations/{name}.yaml"), "--set", f"results={tmp_path}"], capsys
        )
        assert "Ray Train: each trial" in out, name
