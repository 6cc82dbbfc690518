"""benchmarks/gpu_check.py runs on CPU at small sizes, so that it cannot rot before a
session with a GPU runs it: every part (matmul peaks, the dense arches in fp32 and bf16,
eager and compiled, the Trainer + export + AOTInductor parity on the device) and its
report. The slow CPU compiles are kept to the small DLRM_DCN (InterFormer's, minutes
cold on 2 cores, are what the GPU run does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_gpu_check_runs_on_cpu(tmp_path):
    # the dense arches eager in both precisions; one compiled (the slowest part on CPU)
    assert gpu_check.main(["--device", "cpu", "--small", "--steps", "2", "--modes", "eager", "--no-stack",
                           "--out", str(tmp_path / "eager")]) == 0
    eager = json.loads((tmp_path / "eager" / "gpu_check.json").read_text())
    assert [(r["arch"], r["precision"]) for r in eager["dense"]] == [
        ("interformer", "fp32"), ("interformer", "bf16"), ("dlrm_dcn", "fp32"), ("dlrm_dcn", "bf16")]
    assert set(eager["peak_flop_per_s"]) == {"fp32", "bf16"} and min(eager["peak_flop_per_s"].values()) > 0
    for r in eager["dense"]:
        assert r["ms"] > 0 and r["gflop"] > 0 and r["mfu"] == pytest.approx(
            r["gflop"] * 1e9 / (r["ms"] / 1e3) / eager["peak_flop_per_s"][r["precision"]])
    gflop = {r["arch"]: r["gflop"] for r in eager["dense"]}
    assert gflop["interformer"] > 5 * gflop["dlrm_dcn"]  # attention and DHEN against one small DCN

    assert gpu_check.main(["--device", "cpu", "--small", "--steps", "2", "--archs", "dlrm_dcn", "--modes", "compiled",
                           "--precisions", "fp32", "--stack-model", "dlrm_dcn", "--out", str(tmp_path / "compiled")]) == 0
    report = json.loads((tmp_path / "compiled" / "gpu_check.json").read_text())
    (row,) = report["dense"]
    assert row["mode"] == "compiled" and row["gflop"] == pytest.approx(gflop["dlrm_dcn"])
    stack = report["stack"]
    assert stack["model"] == "dlrm_dcn" and stack["train_steps"] == 3 and stack["parity_max_abs_diff_logit"] < 1e-5, stack
    assert "gloo" in stack["plan"]
    md = (tmp_path / "compiled" / "gpu_check.md").read_text()
    assert "| dlrm_dcn | fp32 | compiled |" in md and "parity over" in md
