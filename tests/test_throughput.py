"""benchmarks/throughput.py: the per-module timing of InterFormer's dense arch."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import module_times, module_times_markdown, training_step  # noqa: E402

from interformer_rec.config import SyntheticConfig  # noqa: E402
from interformer_rec.data.synthetic import synthetic_schema  # noqa: E402


def test_module_times_split_the_arch_and_bound_the_step() -> None:
    schema = synthetic_schema(SyntheticConfig(max_len=8))
    cpu = torch.device("cpu")
    model, batch = training_step("interformer:dot", schema, 8, 16, 8, cpu)[:2]
    mods = module_times(model, batch, cpu, warmup=0, steps=1, min_share=0.0)
    assert mods[0]["module"] == "(whole arch)"
    by_path = {m["module"]: m for m in mods}
    parts = ["masknet", "cls_summary", "layers.0", "final_cross_arch", "over_arch"]
    assert set(parts) <= set(by_path)
    # the arch's top-level modules hold all of its FLOPs (forward + backward)
    total = sum(by_path[p]["gflop"] for p in parts)
    assert abs(total - mods[0]["gflop"]) < 1e-3 * mods[0]["gflop"]
    assert all(m["fwd_bwd_ms"] > 0 and m["gflop_per_s"] > 0 for m in mods)
    dlrm, dlrm_batch = training_step("dlrm", schema, 8, 16, 8, cpu)[:2]
    assert module_times(dlrm, dlrm_batch, cpu, warmup=0, steps=1) == []  # no dense arch of ours

    rows = [
        {"model": "interformer:dot", "batch_size": 16, "seq_len": 8, "train_ms": 10.0, "train_gflop_per_step": 0.5},
        {"model": "dlrm_dcn", "batch_size": 16, "seq_len": 8, "train_ms": 2.0, "train_gflop_per_step": 0.01},
    ]
    md = "\n".join(module_times_markdown({"interformer:dot": mods, "dlrm": []}, rows, 16, 8))
    best = max(mods[1:], key=lambda m: m["gflop_per_s"])
    bound_ms = 0.5 / best["gflop_per_s"] * 1e3
    assert f"would take {bound_ms:.1f} ms against 10.0 ms measured: {2.0 / bound_ms:.2f}× dlrm_dcn's" in md
    assert "**dlrm**" not in md
