"""Speed benchmark: training and inference samples/s of InterFormer and the baselines at
equal embedding configuration, over batch sizes and sequence lengths, measured in one
run side by side; plus the achieved FLOP/s of the InterFormer training step against the
measured matrix-multiply FLOP/s of the same machine.

    python benchmarks/throughput.py                      # defaults below
    python benchmarks/throughput.py --batch-sizes 256 --seq-lens 16 50 128 256 512

Each step is the model's own compute (unsharded model, every sequence full length, the
worst case): forward + backward + Adam for training, forward under ``no_grad`` in eval
mode for inference. Timings are medians over ``--steps`` steps after ``--warmup``. At
the first batch size and T = 50 it also splits each model's forward FLOPs by module and
times each module of InterFormer's dense arch alone (forward + backward, with its FLOPs),
with what the step would take if every module ran as fast as the most efficient one.
Writes ``results/throughput.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch.utils import benchmark
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import ModelConfig, Schema, SyntheticConfig, with_overrides
from interformer_rec.data.batch import Batch
from interformer_rec.data.synthetic import synthetic_schema
from interformer_rec.models import build_model, num_parameters
from interformer_rec.train.ranking import RankingTrain

ROOT = Path(__file__).resolve().parents[1]
MODELS = [
    "interformer:dhen", "interformer:dot", "interformer:infnet", "dlrm", "dlrm_dcn", "dlrm_projection", "bst", "infnet", "onetrans"
]
PROFILE_T = 50
DLRMS = ("dlrm", "dlrm_dcn", "dlrm_projection")


def make_batch(schema: Schema, batch_size: int, seq_len: int, device: torch.device, seed: int = 0) -> Batch:
    """A batch of ``batch_size`` rows whose sequences are all ``seq_len`` steps long."""
    g = torch.Generator().manual_seed(seed)
    B = batch_size

    def kjt(keys: List[str], tables: List[str], lengths: List[int]) -> KeyedJaggedTensor:
        vals, lens = [], []
        for t, n in zip(tables, lengths):
            size = schema.table(t).num_embeddings
            vals.append(torch.randint(0, size, (B * n,), generator=g))
            lens.append(torch.full((B,), n, dtype=torch.int32))
        return KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(vals), torch.cat(lens))

    pooled = schema.pooled_features
    sparse = kjt([f.name for f in pooled], [f.table for f in pooled], [1] * len(pooled))
    targets, seqs = schema.target_features, schema.sequence
    sequence = kjt(
        [f.name for f in targets] + [s.name for s in seqs],
        [f.table for f in targets] + [s.table for s in seqs],
        [1] * len(targets) + [seq_len] * len(seqs),
    )
    return Batch(
        dense=torch.randn(B, len(schema.dense), generator=g),
        sparse=sparse,
        sequence=sequence,
        labels=torch.randint(0, 2, (B, 1), generator=g).float(),
        groups=torch.zeros(B, dtype=torch.long),
    ).to(device)


def model_config(name: str, dim: int, sets: Sequence[str] = ()) -> ModelConfig:
    """The default config of ``name`` (``interformer:<interaction>`` or a baseline) with
    ``sets``: ``dotted.key=value`` below ``model`` (value parsed as YAML), e.g.
    ``interformer.attention_dropout=0``."""
    base, _, interaction = name.partition(":")
    cfg = ModelConfig(name=base, embedding_dim=dim)  # type: ignore[arg-type]
    if interaction:
        cfg.interformer.interaction = interaction  # type: ignore[assignment]
    return with_overrides(cfg, sets, "model")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], None], warmup: int, steps: int) -> float:
    """Median seconds of one call of ``step`` over ``steps`` calls, after ``warmup``.

    ``torch.utils.benchmark.Timer`` times each call; on an accelerator its default timer
    synchronizes the device before reading the clock.
    """
    for _ in range(warmup):
        step()
    timer = benchmark.Timer(stmt="step()", globals={"step": step})
    return statistics.median(timer.timeit(1).median for _ in range(steps))


def _cpu_sdpa_flop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(q.shape, k.shape, v.shape)


def _cpu_sdpa_backward_flop(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad.shape, q.shape, k.shape, v.shape)


_cpu_sdpa_flop._get_raw = _cpu_sdpa_backward_flop._get_raw = True  # type: ignore[attr-defined]
# FlopCounterMode counts the CUDA attention kernels only; these are SDPA's CPU kernels
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


def matmul_flops(device: torch.device, n: int = 2048, steps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Measured ``dtype`` matrix-multiply FLOP/s of this machine (n x n x n)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), 2, steps)


def training_step(
    name: str, schema: Schema, dim: int, B: int, T: int, device: torch.device, sets: Sequence[str] = ()
) -> Tuple[RankingTrain, Batch, torch.optim.Optimizer, Callable[[], None]]:
    """The model, a batch, its optimizer and one training step (forward, backward, Adam)."""
    torch.manual_seed(0)
    model = RankingTrain(build_model(schema, model_config(name, dim, sets))).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the trainer's dense optimizer
    batch = make_batch(schema, B, T, device)
    return model, batch, opt, lambda: run_train_step(model, opt, batch)


def run_train_step(model: RankingTrain, opt: torch.optim.Optimizer, batch: Batch) -> None:
    """One training step: forward, backward, optimizer step."""
    loss, _ = model(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_model(
    name: str, schema: Schema, dim: int, B: int, T: int, device: torch.device, warmup: int, steps: int, sets: Sequence[str] = ()
) -> Dict[str, Any]:
    model, batch, opt, train_step = training_step(name, schema, dim, B, T, device, sets)
    model.train()
    train_s = median_seconds(train_step, warmup, steps)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as fc:
        loss, _ = model(batch)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        infer_s = median_seconds(lambda: model(batch), warmup, steps)
    return {
        "model": name,
        "batch_size": B,
        "seq_len": T,
        "num_parameters": num_parameters(model),
        "train_ms": train_s * 1e3,
        "train_samples_per_s": B / train_s,
        "infer_ms": infer_s * 1e3,
        "infer_samples_per_s": B / infer_s,
        "train_gflop_per_step": fc.get_total_flops() / 1e9,
        "train_flop_per_s": fc.get_total_flops() / train_s,
    }


def forward_flop_split(model: RankingTrain, batch: Batch, min_share: float = 0.02, max_depth: int = 5) -> Dict[str, float]:
    """Forward GFLOP of one step by submodule of the model (paths relative to it, tree
    order, at most ``max_depth`` levels, at least ``min_share`` of the whole; TorchRec's
    ``_mlp`` / ``_linear`` wrappers are folded into their parent). Forward only:
    FlopCounterMode charges backward FLOPs to whichever module is on its stack when
    autograd runs them, so a per-module backward split would be wrong (backward costs
    about 2x forward)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as fc:
        model(batch)
    counts = {m: sum(c.values()) for m, c in fc.get_flop_counts().items()}
    total = counts["RankingTrain.model"]
    split = {"(whole model)": total / 1e9}
    for m, f in sorted(counts.items()):
        path = m.removeprefix("RankingTrain.model.")
        if path == m or f < min_share * total or path.count(".") >= max_depth or "._" in path:
            continue
        split[path] = f / 1e9
    return split


def module_times(
    model: RankingTrain, batch: Batch, device: torch.device, warmup: int, steps: int, min_share: float = 0.03
) -> List[Dict[str, Any]]:
    """Forward + backward of each submodule of the model's dense ``arch`` run alone on
    the inputs it gets in a training step (train mode, gradients to its float inputs):
    median ms, GFLOP and achieved GFLOP/s. Paths relative to ``arch``, at most three
    levels deep, at least ``min_share`` of the whole arch's time; the first row is the
    whole arch. Empty for a model without an ``arch`` (the baselines). Where the step's
    time goes module by module, and how efficiently each module runs on this device."""
    arch = getattr(model.model, "arch", None)
    if arch is None:
        return []
    inputs: Dict[str, Tuple[Tuple[Any, ...], Dict[str, Any]]] = {}
    modules = {
        path: m
        for path, m in arch.named_modules()
        if path.count(".") <= 2 and not isinstance(m, torch.nn.ModuleList) and "._" not in path and not path.startswith("_")
    }

    def keep(path: str) -> Callable[..., None]:
        def hook(m: torch.nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
            # detached copies, nested lists and dicts too: the step's graph is freed
            inputs[path] = tree_map_only(torch.Tensor, lambda a: a.detach().clone(), (args, kwargs))

        return hook

    handles = [m.register_forward_hook(keep(path), with_kwargs=True) for path, m in modules.items()]
    model.train()
    model(batch)[0].backward()
    for h in handles:
        h.remove()
    rows = []
    for path, m in modules.items():
        args, kwargs = inputs[path]
        args = tree_map_only(torch.Tensor, lambda a: a.requires_grad_() if a.is_floating_point() else a, args)

        def step(m: torch.nn.Module = m, args: Tuple[Any, ...] = args, kwargs: Dict[str, Any] = kwargs) -> None:
            out = m(*args, **kwargs)
            outs = out if isinstance(out, tuple) else (out,)
            grads = [o.sum() for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
            if grads:  # a module of index arithmetic only (a mask) has nothing to backward
                sum(grads).backward()
            m.zero_grad(set_to_none=True)

        seconds = median_seconds(step, warmup, steps)
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as fc:
            step()
        rows.append({"module": path or "(whole arch)", "fwd_bwd_ms": seconds * 1e3, "gflop": fc.get_total_flops() / 1e9})
    whole = rows[0]["fwd_bwd_ms"]
    rows = [r for r in rows if r["fwd_bwd_ms"] >= min_share * whole]
    for r in rows:
        r["gflop_per_s"] = r["gflop"] / r["fwd_bwd_ms"] * 1e3
    return rows


def module_times_markdown(times: Dict[str, List[Dict[str, Any]]], rows: List[Dict[str, Any]], B: int, T: int) -> List[str]:
    """One table per model, and what its training step would take if all of it ran at
    the FLOP/s of its most efficient module, against DLRM_DCN (the speed target's
    reference) at the same B, T when it was measured, else the fastest DLRM."""
    lines = []
    at = [r for r in rows if r["batch_size"] == B and r["seq_len"] == T]
    ref = [r for r in at if r["model"] == "dlrm_dcn"] or sorted((r for r in at if r["model"] in DLRMS), key=lambda r: r["train_ms"])
    for name, mods in times.items():
        if not mods:
            continue
        lines += [
            "",
            f"Forward + backward of each module of **{name}** alone (B={B}, T={T}; modules with at least 3 % of the arch's time)",
            "",
            "| module | ms | share of the arch | GFLOP | GFLOP/s |",
            "|---|---|---|---|---|",
        ]
        whole = mods[0]["fwd_bwd_ms"]
        lines += [
            f"| {m['module']} | {m['fwd_bwd_ms']:.2f} | {m['fwd_bwd_ms'] / whole:.0%} | {m['gflop']:.4f} | {m['gflop_per_s']:.1f} |"
            for m in mods
        ]
        step = [r for r in at if r["model"] == name]
        best = max(mods[1:] or mods, key=lambda m: m["gflop_per_s"])
        if step and ref:
            bound_ms = step[0]["train_gflop_per_step"] / best["gflop_per_s"] * 1e3
            ref_ms = ref[0]["train_ms"]
            lines += [
                "",
                f"At the FLOP/s of its most efficient module ({best['module']}, {best['gflop_per_s']:.1f} GFLOP/s), the whole "
                f"training step ({step[0]['train_gflop_per_step']:.3f} GFLOP) would take {bound_ms:.1f} ms against "
                f"{step[0]['train_ms']:.1f} ms measured: {ref_ms / bound_ms:.2f}× {ref[0]['model']}'s {ref_ms:.1f} ms step "
                f"(measured: {ref_ms / step[0]['train_ms']:.2f}×).",
            ]
    return lines


def flop_split_markdown(splits: Dict[str, Dict[str, float]], B: int, T: int) -> List[str]:
    lines = ["", f"Forward GFLOP per step by module (B={B}, T={T}; modules with at least 2 % of their model's)", ""]
    for name, split in splits.items():
        total = split["(whole model)"]
        lines += [f"**{name}**", "", "| module | GFLOP | share |", "|---|---|---|"]
        lines += [f"| {m} | {f:.4f} | {f / total:.0%} |" for m, f in split.items()]
        lines.append("")
    return lines


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [
        f"Device: {meta['device']}; torch {meta['torch']}; {meta['threads']} threads; "
        f"matmul peak (fp32 {meta['matmul_n']}³): {meta['matmul_gflops']:.1f} GFLOP/s"
        + (f"; model overrides: {', '.join(meta['model_overrides'])}" if meta.get("model_overrides") else ""),
        "",
        "| model | B | T | train samples/s | × fastest DLRM | infer samples/s | × fastest DLRM | GFLOP/step | GFLOP/s (% of matmul) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    def vs(r: Dict[str, Any], key: str) -> str:  # "–" when no DLRM ran beside the model
        return f"{r[key]:.2f}" if key in r else "–"

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['seq_len']} | {r['train_samples_per_s']:,.0f} "
            f"| {vs(r, 'train_vs_fastest_dlrm')} | {r['infer_samples_per_s']:,.0f} | {vs(r, 'infer_vs_fastest_dlrm')} "
            f"| {r['train_gflop_per_step']:.3f} | {r['train_flop_per_s'] / 1e9:.1f} ({r['train_flop_per_s'] / meta['matmul_flop_per_s']:.0%}) |"
        )
    lines += growth(rows)
    return "\n".join(lines) + "\n"


def growth(rows: List[Dict[str, Any]]) -> List[str]:
    """How the training step grows with ``T``: its time at each length over its time at
    the smallest one (linear growth would follow the ``T`` ratio of the first row)."""
    seq_lens = sorted({r["seq_len"] for r in rows})
    if len(seq_lens) < 2:
        return []
    t0 = seq_lens[0]
    lines = [
        "",
        f"Training step time relative to T={t0} (linear growth: " + ", ".join(f"{t / t0:.1f}" for t in seq_lens[1:]) + ")",
        "",
        "| model | B | " + " | ".join(f"T={t}" for t in seq_lens[1:]) + " |",
        "|---|---|" + "---|" * (len(seq_lens) - 1),
    ]
    for B in sorted({r["batch_size"] for r in rows}):
        for name in dict.fromkeys(r["model"] for r in rows):
            ms = {r["seq_len"]: r["train_ms"] for r in rows if r["model"] == name and r["batch_size"] == B}
            if t0 in ms:
                lines.append(f"| {name} | {B} | " + " | ".join(f"{ms[t] / ms[t0]:.1f}×" if t in ms else "" for t in seq_lens[1:]) + " |")
    return lines


def profile_step(
    name: str, schema: Schema, dim: int, B: int, T: int, device: torch.device, path: Path, sets: Sequence[str] = ()
) -> None:
    """torch.profiler table of one model's training step (5 steps after 3 of warm-up),
    operators sorted by their own time, written to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    train_step = training_step(name, schema, dim, B, T, device, sets)[3]
    for _ in range(3):
        train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            train_step()
            sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(f"{name}, B={B}, T={T}, 5 training steps\n" + prof.key_averages().table(sort_by=sort, row_limit=30))


def plot(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
    for ax, B in zip(axes[0], sizes):
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = sorted((r["seq_len"], r["train_ms"]) for r in rows if r["model"] == name and r["batch_size"] == B)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                    linewidth=2.5 if name.startswith("interformer") else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("training step (ms, median)")
        ax.set_title(f"cost vs sequence length, batch {B}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[16, 50, 128, 256, 512])
    p.add_argument("--dim", type=int, default=16, help="embedding dimension of every table")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--profile", action="store_true", help=f"also write results/profile_<model>.txt (torch.profiler, T={PROFILE_T})")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a model default below `model`, e.g. interformer.attention_dropout=0 (repeatable)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)

    rows = []
    for B in args.batch_sizes:
        for T in args.seq_lens:
            schema = synthetic_schema(SyntheticConfig(max_len=T))
            for name in args.models:
                r = bench_model(name, schema, args.dim, B, T, device, args.warmup, args.steps, args.set)
                print(f"B={B:<5} T={T:<4} {name:<18} train {r['train_samples_per_s']:>9,.0f}/s  infer {r['infer_samples_per_s']:>10,.0f}/s", flush=True)
                rows.append(r)
    for r in rows:
        same = [q for q in rows if q["batch_size"] == r["batch_size"] and q["seq_len"] == r["seq_len"] and q["model"] in DLRMS]
        if same:
            r["train_vs_fastest_dlrm"] = r["train_samples_per_s"] / max(q["train_samples_per_s"] for q in same)
            r["infer_vs_fastest_dlrm"] = r["infer_samples_per_s"] / max(q["infer_samples_per_s"] for q in same)
    peak_n = 2048
    peak = matmul_flops(device, peak_n)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_n": peak_n,
        "matmul_flop_per_s": peak,
        "matmul_gflops": peak / 1e9,
        "model_overrides": args.set,
    }
    split_schema = synthetic_schema(SyntheticConfig(max_len=PROFILE_T))
    splits, times = {}, {}
    for name in args.models:  # one model per name for both splits (FLOPs by module, time by module)
        model, batch = training_step(name, split_schema, args.dim, args.batch_sizes[0], PROFILE_T, device, args.set)[:2]
        splits[name] = forward_flop_split(model, batch)
        times[name] = module_times(model, batch, device, args.warmup, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "forward_flop_split": splits, "module_times": times}, indent=2)
    )
    md = markdown(rows, meta) + "\n".join(
        flop_split_markdown(splits, args.batch_sizes[0], PROFILE_T)
        + module_times_markdown(times, rows, args.batch_sizes[0], PROFILE_T)
    )
    (args.out / "throughput.md").write_text(md)
    plot(rows, args.out / "throughput.png")
    if args.profile:
        schema = synthetic_schema(SyntheticConfig(max_len=PROFILE_T))
        for name in args.models:
            path = args.out / f"profile_{name.replace(':', '_')}.txt"
            profile_step(name, schema, args.dim, args.batch_sizes[0], PROFILE_T, device, path, args.set)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
