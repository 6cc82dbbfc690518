"""The two install flavours of pyproject.toml resolve to the pinned torch / fbgemm /
torchrec triple: ``uv pip compile`` of each extra for Linux x86-64 (package metadata only,
no wheel is downloaded). Skipped, with the reason, when the package index is unreachable."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"
INDEX = ("pypi.org", 443)


def _index_reachable() -> bool:
    try:
        socket.create_connection(INDEX, timeout=5).close()
        return True
    except OSError:
        return False


def _resolve(extra: str, flags: List[str]) -> Dict[str, str]:
    """``{package: version}`` that uv resolves for ``.[extra]`` on Linux x86-64, Python 3.11."""
    if not UV.exists():
        pytest.skip(f"{UV} not installed (make env installs it)")
    if not _index_reachable():
        pytest.skip(f"package index {INDEX[0]} unreachable: the flavour cannot be resolved offline")
    out = subprocess.run(
        [str(UV), "pip", "compile", *flags, "pyproject.toml", "--extra", extra, "--python-version", "3.11",
         "--python-platform", "x86_64-manylinux_2_28", "--no-header", "--no-annotate", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", out.stdout, re.M))


def test_cuda_flavour_resolves_the_cuda_fbgemm_with_torch_and_torchrec():
    pins = _resolve("cuda", ["--no-config"])  # as `make env FLAVOR=cuda`
    assert (pins.get("torch"), pins.get("fbgemm-gpu"), pins.get("torchrec")) == ("2.13.0", "1.8.0", "1.8.0"), pins
    assert "fbgemm-gpu-cpu" not in pins
    assert any(name.startswith("nvidia-") for name in pins), "the CUDA torch wheel brings its nvidia-* libraries"


def test_cpu_flavour_keeps_the_cuda_fbgemm_out():
    pins = _resolve("cpu", [])  # pyproject's [tool.uv] override applies, as `make env`
    assert (pins.get("torch"), pins.get("fbgemm-gpu-cpu"), pins.get("torchrec")) == ("2.13.0", "1.8.0", "1.8.0"), pins
    assert "fbgemm-gpu" not in pins
