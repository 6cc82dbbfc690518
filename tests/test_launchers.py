"""The cluster launch as the README writes it: the Kubernetes command, dry-run by
torchx's own CLI (no cluster, no docker daemon here), and the image definition it names."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _readme_command(scheduler: str) -> list:
    """The README's ``torchx run ... --scheduler <scheduler>`` command, continuation
    lines joined, comments dropped."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "torchx run" in line and f"--scheduler {scheduler}" in line)
    command = ""
    for line in lines[start:]:
        command += line.split("  #")[0].rstrip().rstrip("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(command)


def test_the_readmes_kubernetes_launch_dry_runs_as_written() -> None:
    argv = _readme_command("kubernetes")
    assert argv[0] == ".venv/bin/torchx" and argv[1] == "run"
    torchx = Path(sys.executable).parent / "torchx"
    out = subprocess.run(
        [str(torchx), "run", "--dryrun", *argv[2:]], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{torchx.parent}:{os.environ.get('PATH', '')}"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job = yaml.safe_load(out.stdout[out.stdout.index("apiVersion"):])
    tasks = job["spec"]["tasks"]  # Volcano: one task per host
    assert job["spec"]["queue"] == "default" and len(tasks) == 8
    assert all(t["maxRetry"] == 3 and t["replicas"] == 1 for t in tasks)
    pod = tasks[0]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == argv[argv.index("--image") + 1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    command = " ".join(container["command"])
    assert "--nnodes 8 --nproc_per_node 8" in command
    assert "-m interformer_rec.cli train --config configs/synthetic.yaml --set train.out_dir=/mnt/ckpt/run1" in command
    assert "--set train.resume=true" in command  # a retried job continues from its checkpoint
    # the checkpoint directory is on the shared volume the command mounts
    assert {"mountPath": "/mnt/ckpt", "name": "mount-0", "readOnly": False} in container["volumeMounts"]
    assert {"name": "mount-0", "persistentVolumeClaim": {"claimName": "ckpt-pvc"}} in pod["volumes"]


def test_the_image_definition_installs_the_pinned_stack_and_copies_what_exists() -> None:
    dockerfile = (ROOT / "launchers" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"launchers/Dockerfile copies {path}, which is not in the repository"
    assert "-e '.[cuda,cluster]'" in dockerfile  # pyproject.toml's pins: torch, torchrec, fbgemm-gpu (CUDA)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject and '"torchrec==1.8.0"' in pyproject
    assert 'cuda = ["fbgemm-gpu==1.8.0"]' in pyproject
    # the components' default image is the tag their docstring builds from this file
    components = (ROOT / "launchers" / "components.py").read_text()
    default = re.search(r'^DEFAULT_IMAGE = "(.+)"', components, re.M).group(1)
    assert f"docker build -f launchers/Dockerfile -t {default} ." in components
