"""The README's Python API block, run as written in a fresh interpreter (a scratch
directory holding the repository's configs), and the API's names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_python_block_trains_exports_and_scores(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*From Python\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=540,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    test_auc, valid_auc = map(float, next(line for line in lines if re.fullmatch(r"[\d.]+ [\d.]+", line)).split())
    assert 0.6 < test_auc < 1 and 0.6 < valid_auc < 1  # the planted click model is learned
    probs = [float(x) for x in re.findall(r"\d\.\d+", " ".join(lines[-3:]))]
    assert len(probs) == 3 and all(0 < p < 1 for p in probs)
    assert (tmp_path / "models" / "quick" / "manifest.json").exists()


def test_the_api_loads_lazily() -> None:
    code = ("import sys, interformer_rec as ir; assert 'torchrec' not in sys.modules; "
            "assert ir.Predictor.__module__ == 'interformer_rec.serving.predictor'; "
            "assert 'torchrec' not in sys.modules and 'interformer_rec.train.trainer' not in sys.modules; "
            "print(sorted(ir.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Trainer" in out.stdout and "export" in out.stdout
