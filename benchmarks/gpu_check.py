"""One prepared check of a machine with a GPU: what a session lent one runs first, in one
command, in under 8 minutes on one GPU; the test suite runs it on CPU at small sizes.

    python benchmarks/gpu_check.py                          # CUDA, the paper's sizes
    python benchmarks/gpu_check.py --device cpu --small     # tests/test_gpu_check.py

It measures, on one device:

1. the matmul peak in fp32 and bf16 (n x n x n, median FLOP/s; TF32 off, so fp32 is fp32);
2. the dense arch of InterFormer (everything after the lookups: ``InterFormer.arch``) and
   of DLRM_DCN (dense arch, DCN interaction, over arch) forward + backward at the
   paper's sizes (d 64, 3 layers, 4 heads, T 100, B 2048; the layout of
   ``configs/paper/amazon_grocery.yaml``), in fp32 and bf16 autocast (as
   ``train.precision: bf16``), eager and ``torch.compile``-d, with FLOPs counted by
   ``FlopCounterMode`` and MFU against the measured peak of the same dtype;
3. the whole stack: a few training steps of the real Trainer (DMP, the planner,
   TrainPipelineSparseDist, fused embedding optimizer) on 1 device, then export of the
   checkpoint to an AOTInductor package for that device and its parity with eager.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``, the device beside every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import CPU_ATTENTION_FLOPS, matmul_flops, median_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper" / "amazon_grocery.yaml"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Sizes:
    dim: int
    num_layers: int
    num_heads: int
    seq_len: int
    batch_size: int
    matmul_n: int
    hidden: int  # interaction / MaskNet widths (the paper preset's 256)


PAPER = Sizes(dim=64, num_layers=3, num_heads=4, seq_len=100, batch_size=2048, matmul_n=8192, hidden=256)
SMALL = Sizes(dim=16, num_layers=1, num_heads=2, seq_len=12, batch_size=64, matmul_n=512, hidden=32)


def device_info(device: torch.device) -> Dict[str, Any]:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, cuda=torch.version.cuda, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


# --------------------------------------------------------------------------- dense arches


def _model_config(name: str, s: Sizes):
    from interformer_rec.config import load_config, with_overrides

    cfg = load_config(PAPER_CONFIG)
    sets = [f"name={name}", f"embedding_dim={s.dim}"]
    if name == "interformer":
        sets += [f"interformer.num_layers={s.num_layers}", f"interformer.num_heads={s.num_heads}",
                 f"interformer.interaction_mlp=[{s.hidden}]", f"interformer.masknet_hidden={s.hidden}",
                 f"interformer.over_arch=[{2 * s.hidden}, {s.hidden}]"]
    return cfg.data.schema, with_overrides(cfg.model, sets, "model")


def interformer_dense(s: Sizes, device: torch.device) -> Tuple[nn.Module, Tuple[Tensor, ...]]:
    """``InterFormer.arch`` and its inputs: ``X¹ [B, n, d]``, ``steps [B, T, k·d]``,
    ``lengths [B]`` (uniform in 1..T)."""
    from interformer_rec.models import build_model

    schema, cfg = _model_config("interformer", s)
    model = build_model(schema, cfg, embedding_device=torch.device("meta"))
    g = torch.Generator().manual_seed(0)
    B, T, d = s.batch_size, s.seq_len, s.dim
    inputs = (
        torch.randn(B, model.num_tokens, d, generator=g),
        torch.randn(B, T, len(model.sequence_names) * d, generator=g),
        torch.randint(1, T + 1, (B,), generator=g),
    )
    return model.arch.to(device), tuple(t.to(device) for t in inputs)


class DLRMDense(nn.Module):
    """The dense part of TorchRec's DLRM: dense arch, interaction, over arch, fed the
    pooled embeddings ``[B, F, d]`` the lookups would give."""

    def __init__(self, dlrm: nn.Module) -> None:
        super().__init__()
        self.dense_arch, self.inter_arch, self.over_arch = dlrm.dense_arch, dlrm.inter_arch, dlrm.over_arch

    def forward(self, dense: Tensor, pooled: Tensor) -> Tensor:
        return self.over_arch(self.inter_arch(self.dense_arch(dense), pooled))


def dlrm_dcn_dense(s: Sizes, device: torch.device) -> Tuple[nn.Module, Tuple[Tensor, ...]]:
    from interformer_rec.models import build_model

    schema, cfg = _model_config("dlrm_dcn", s)
    model = build_model(schema, cfg, embedding_device=torch.device("meta"))
    num_features = sum(len(c.feature_names) for c in model.ebc.embedding_bag_configs())
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(s.batch_size, max(len(schema.dense), 1), generator=g),
        torch.randn(s.batch_size, num_features, s.dim, generator=g),
    )
    return DLRMDense(model.dlrm).to(device), tuple(t.to(device) for t in inputs)


def bench_dense(
    name: str, build: Callable[[], Tuple[nn.Module, Tuple[Tensor, ...]]], device: torch.device, precision: str,
    compiled: bool, peak: float, steps: int,
) -> Dict[str, Any]:
    """Forward + backward of one dense arch: median ms, FLOPs, achieved FLOP/s, MFU."""
    torch.manual_seed(0)
    module, inputs = build()
    module.train()
    run = torch.compile(module) if compiled else module

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = run(*inputs)
        out.float().sum().backward()

    start = time.perf_counter()
    step()  # the compile, if any
    first_s = time.perf_counter() - start
    seconds = median_seconds(step, 2, steps)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as fc:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = module(*inputs)
        out.float().sum().backward()
    flops = fc.get_total_flops()
    return {
        "arch": name, "precision": precision, "mode": "compiled" if compiled else "eager",
        "ms": seconds * 1e3, "first_call_s": first_s, "gflop": flops / 1e9,
        "tflop_per_s": flops / seconds / 1e12, "mfu": flops / seconds / peak,
    }


ARCHS = {"interformer": interformer_dense, "dlrm_dcn": dlrm_dcn_dense}


# --------------------------------------------------------------------------- the whole stack


def stack_check(device: torch.device, work: Path, steps: int, model: str = "interformer") -> Dict[str, Any]:
    """Train ``steps`` steps of ``model`` through the Trainer on ``device`` (tiny
    synthetic data and sizes), export the checkpoint to a package for ``device`` and
    compare it with eager."""
    from interformer_rec.config import SyntheticConfig, load_config
    from interformer_rec.data.synthetic import generate
    from interformer_rec.export.export import compile_package, export_program, load_model, serving_module
    from interformer_rec.export.parity import compare, parity_cases
    from interformer_rec.serving.features import FeatureSpec
    from interformer_rec.train.trainer import Trainer

    synth = SyntheticConfig(num_users=100, num_items=80, num_categories=8, rows={"train": 2048, "valid": 256, "test": 256}, seed=0)
    generate(synth, work / "data")
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", [
        *(f"data.{s}={work / 'data' / (s + '.parquet')}" for s in ("train", "valid", "test")),
        f"train.out_dir={work / 'run'}", "train.progress=false", "train.epochs=1", f"train.max_steps_per_epoch={steps}",
        f"train.device={device.type}", f"model.name={model}", "model.embedding_dim=8", "model.interformer.num_layers=1",
        "model.interformer.interaction_mlp=[16]", "model.interformer.over_arch=[16]",
    ])
    start = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.fit()
    train_s = time.perf_counter() - start
    model, cfg, _, _ = load_model(work / "run")
    spec = FeatureSpec(cfg.data.schema)
    serving = serving_module(model.to(device), spec)
    start = time.perf_counter()
    package = compile_package(export_program(serving, spec, max_batch=256, device=device), work / "model.pt2")
    export_s = time.perf_counter() - start
    runner = torch._inductor.aoti_load_package(str(package))
    cases = compare(serving, runner, parity_cases(spec, None, large=256, singles=4), device)
    return {
        "plan": trainer.plan_text.splitlines()[0],
        "train_steps": len(trainer.step_losses[0]), "train_seconds": train_s,
        "final_step_loss": trainer.step_losses[0][-1], "test_auc": result["test"]["auc"],
        "export_seconds": export_s, "parity_max_abs_diff_logit": max(c["max_abs_diff_logit"] for c in cases.values()),
        "parity_cases": len(cases),
    }


# --------------------------------------------------------------------------- report


def markdown(report: Dict[str, Any]) -> str:
    info, s = report["device"], report["sizes"]
    lines = [
        f"# GPU check: {info['name']} ({info['device']}, torch {info['torch']})", "",
        f"Sizes: d {s['dim']}, {s['num_layers']} layers, {s['num_heads']} heads, T {s['seq_len']}, B {s['batch_size']}.", "",
        "| matmul peak | TFLOP/s |", "|---|---:|",
        *(f"| {p} ({s['matmul_n']}³) | {v / 1e12:.3g} |" for p, v in report["peak_flop_per_s"].items()), "",
        "| dense arch (fwd + bwd) | precision | mode | ms | GFLOP | TFLOP/s | MFU | first call s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["dense"]:
        lines.append(f"| {r['arch']} | {r['precision']} | {r['mode']} | {r['ms']:.2f} | {r['gflop']:.3g} "
                     f"| {r['tflop_per_s']:.3g} | {r['mfu']:.1%} | {r['first_call_s']:.1f} |")
    if info["device"] == "cpu":
        lines += ["", "On CPU, MFU is against `torch.mm`'s speed in each dtype; without native bf16 matmul "
                  "units that is far below what autocast's oneDNN kernels reach, so bf16 MFU can pass 100 %."]
    st = report["stack"]
    lines += ["", "Whole stack (Trainer + DMP + pipeline, export + AOTInductor on the device):", ""]
    if "skipped" in st:
        lines.append(f"skipped: {st['skipped']}")
    else:
        lines.append(f"{st['model']}: {st['train_steps']} steps in {st['train_seconds']:.1f} s ({st['plan']}), last step loss "
                     f"{st['final_step_loss']:.4f}; package built in {st['export_seconds']:.1f} s, parity over "
                     f"{st['parity_cases']} cases: max |Δlogit| {st['parity_max_abs_diff_logit']:.2e}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--small", action="store_true", help="small sizes (CPU, the test suite)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--steps", type=int, default=10, help="timed calls per figure (median)")
    ap.add_argument("--matmul-n", type=int, help="size of the peak matmuls (default: 8192, --small 512)")
    ap.add_argument("--no-stack", action="store_true", help="skip the Trainer + export check")
    ap.add_argument("--stack-model", default="interformer", choices=["interformer", "dlrm_dcn"], help="its model")
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu_check"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device; use --device cpu --small", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    sizes = SMALL if args.small else PAPER
    if args.matmul_n:
        sizes = replace(sizes, matmul_n=args.matmul_n)
    peak = {p: matmul_flops(device, sizes.matmul_n, args.steps, DTYPES[p]) for p in args.precisions}
    dense = [
        bench_dense(name, lambda b=ARCHS[name]: b(sizes, device), device, p, mode == "compiled", peak[p], args.steps)
        for name in args.archs for p in args.precisions for mode in args.modes
    ]
    if args.no_stack:
        stack: Dict[str, Any] = {"skipped": "--no-stack"}
    else:
        with tempfile.TemporaryDirectory() as work:
            stack = {"model": args.stack_model, **stack_check(device, Path(work), steps=3, model=args.stack_model)}
    report = {"device": device_info(device), "sizes": asdict(sizes), "peak_flop_per_s": peak, "dense": dense, "stack": stack}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
