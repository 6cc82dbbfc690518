"""`generate` and `convert movielens` write each file whole or not at all (issue 33,
item 5): a process killed mid-write leaves the previous output intact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
ML = ROOT.parent / "shared" / "data" / "ml-100k"

# SIGKILL the process at its second row group write: a file half written
KILLER = r"""
import os, signal, sys
import pyarrow.parquet as pq
real, calls = pq.ParquetWriter.write_table, []
def write_table(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
pq.ParquetWriter.write_table = write_table
from interformer_rec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed(args: list) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], cwd=ROOT, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]


def _snapshot(out: Path) -> dict:
    return {p.name: pq.read_table(p) for p in sorted(out.glob("*.parquet"))}


def test_a_killed_generate_leaves_the_previous_files(tmp_path: Path) -> None:
    from interformer_rec.cli import main

    cfg = tmp_path / "c.yaml"
    text = (ROOT / "configs" / "synthetic.yaml").read_text()
    cfg.write_text(text.replace("data/synthetic/", f"{tmp_path}/data/").replace(
        "rows: {train: 200000, valid: 10000, test: 10000}", "rows: {train: 3000, valid: 500, test: 500}").replace(
        "row_group_size: 4096", "row_group_size: 512"))
    assert main(["generate", "--config", str(cfg)]) == 0
    before = _snapshot(tmp_path / "data")
    assert set(before) == {"train.parquet", "valid.parquet", "test.parquet"}
    _killed(["generate", "--config", str(cfg), "--set", "data.synthetic.seed=5"])
    after = _snapshot(tmp_path / "data")
    assert set(after) == set(before) and all(after[k].equals(before[k]) for k in before)


@pytest.mark.skipif(not ML.exists(), reason="needs ../shared/data/ml-100k")
def test_a_killed_movielens_conversion_leaves_the_previous_files(tmp_path: Path) -> None:
    from interformer_rec.cli import main

    out = tmp_path / "ml"
    assert main(["convert", "movielens", "--raw", str(ML), "--out", str(out)]) == 0
    before = _snapshot(out)
    _killed(["convert", "movielens", "--raw", str(ML), "--out", str(out), "--max-len", "20"])
    after = _snapshot(out)
    assert set(after) == set(before) and all(after[k].equals(before[k]) for k in before)
