"""Serving benchmark: latency (p50 / p99) and throughput of the eager model, the
``torch.export``-ed program and the AOTInductor package over batch sizes, and a load
test of ``interformer-rec serve`` on loopback.

    python benchmarks/serving.py                                    # InterFormer + DLRM_DCN, config sizes
    python benchmarks/serving.py --checkpoint runs/synthetic        # a trained run instead
    python benchmarks/serving.py --batch-sizes 1 64 1024 --seconds 1 --load-seconds 3

Without ``--checkpoint`` each model is built from ``--config`` (model sizes and schema)
with its initial weights and exported through a checkpoint (latency does not depend on
the weights). Inputs are random valid rows, histories of uniform length 0..max_len.

* eager: the model (``ServingModule``: KJTs built from plain tensors) under
  ``torch.inference_mode``;
* exported: ``ExportedProgram.module()`` of ``torch.export`` (the traced graph run by
  Python);
* compiled: the AOTInductor package (``model.pt2``) as the predictor runs it.

For each (variant, batch size): ``torch.utils.benchmark.Timer.blocked_autorange`` for
``--seconds`` (its warm-up picks a block of calls long enough to make the timer's
overhead negligible); latency is per call (p50 / p99 over the blocks), throughput is
rows/s.
The load test starts ``interformer-rec serve`` in a subprocess and, for each
``--concurrency``, keeps that many requests in flight (aiohttp client, one user +
``--candidates`` candidates each) for ``--load-seconds``. Client and server share the
machine's cores. Writes ``results/serving.json`` and ``results/serving.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from interformer_rec.config import Config, load_config  # noqa: E402
from interformer_rec.export.export import export, export_program, load_model, serving_module  # noqa: E402
from interformer_rec.export.inputs import random_encoded  # noqa: E402
from interformer_rec.serving.features import FeatureSpec  # noqa: E402
from interformer_rec.serving.predictor import Predictor  # noqa: E402


def prepare(cfg: Config, name: str, work: Path, checkpoint: Optional[str]) -> Path:
    """A checkpoint directory for model ``name``: ``checkpoint`` if given, else the
    initial weights of the config's model saved with ``save_checkpoint``."""
    if checkpoint:
        return Path(checkpoint)
    from interformer_rec.models import build_model
    from interformer_rec.train.checkpoint import save_checkpoint
    from interformer_rec.train.ranking import RankingTrain

    cfg.model.name = name  # type: ignore[assignment]
    torch.manual_seed(0)
    model = RankingTrain(build_model(cfg.data.schema, cfg.model))
    run = work / f"run_{name}"
    save_checkpoint(run / "checkpoints", "epoch_0000", model, None, {"epoch": 0, "config": cfg.to_dict()}, ("latest", "best"))
    return run


def time_calls(fn: Callable[[], Any], seconds: float) -> Dict[str, float]:
    """Latency of ``fn()`` with ``torch.utils.benchmark.Timer.blocked_autorange`` (its
    warm-up, then blocks of calls for at least ``seconds``), on this process's torch
    threads; p50 / p99 / mean are over the blocks' per-call times."""
    m = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=seconds
    )
    a = np.array(m.times) * 1000
    iters = m.number_per_run * len(m.raw_times)
    return {"iters": iters, "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "calls_per_s": iters / sum(m.raw_times)}


def bench_variants(export_dir: Path, ckpt: Path, batch_sizes: List[int], seconds: float) -> List[Dict[str, Any]]:
    model, cfg, _, _ = load_model(ckpt)
    spec = FeatureSpec(cfg.data.schema)
    eager = serving_module(model, spec)
    program = export_program(eager, spec).module()
    compiled = Predictor(export_dir)._runner
    variants = {"eager": eager, "exported": program, "compiled": compiled}
    rows = []
    rng = np.random.default_rng(0)
    for B in batch_sizes:
        x = random_encoded(spec, B, rng).to_tensors()
        with torch.inference_mode():
            ref = eager(*x)
            for vname, fn in variants.items():
                r = time_calls(lambda: fn(*x), seconds)
                diff = float((fn(*x) - ref).abs().max())
                rows.append({"model": cfg.model.name, "variant": vname, "batch_size": B, **r,
                             "rows_per_s": r["calls_per_s"] * B, "max_abs_diff_vs_eager": diff})
                print(f"  {cfg.model.name:<12} {vname:<9} B={B:<5} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  "
                      f"{r['calls_per_s'] * B:10.0f} rows/s", flush=True)
    return rows


def request_bodies(spec: FeatureSpec, candidates: int, n: int, seed: int = 0) -> List[bytes]:
    """``n`` serialized ranking requests: one user (dense, pooled, history) + candidates."""
    rng = np.random.default_rng(seed)
    cand_names = [f.name for f in spec.targets]
    bodies = []
    for i in range(n):
        enc = random_encoded(spec, 1, rng)
        user: Dict[str, Any] = {name: float(enc.dense[0, k]) for k, name in enumerate(spec.dense)}
        for f, j in zip(spec.pooled, enc.pooled):
            user[f.name] = j.values.tolist()
        for f, j in zip(spec.sequences, enc.unpooled[len(spec.targets):]):
            user[f.name] = j.values.tolist()
        cands = [{name: int(rng.integers(spec.id_features[name].num_embeddings)) for name in cand_names}
                 for _ in range(candidates)]
        bodies.append(json.dumps({"request_id": str(i), "user": user, "candidates": cands}).encode())
    return bodies


async def _load(url: str, bodies: List[bytes], concurrency: int, seconds: float) -> Dict[str, Any]:
    import aiohttp

    lat: List[float] = []
    status: Dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def worker(k: int, session: "aiohttp.ClientSession") -> None:
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            async with session.post(url + "/v1/score", data=bodies[i % len(bodies)],
                                    headers={"Content-Type": "application/json"}) as r:
                await r.read()
                status[r.status] = status.get(r.status, 0) + 1
            lat.append(time.perf_counter() - t)
            i += concurrency

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(k, session) for k in range(concurrency)))
        total = time.perf_counter() - start
    a = np.array(lat) * 1000
    return {"requests": len(lat), "seconds": total, "requests_per_s": len(lat) / total,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "status": {str(k): v for k, v in sorted(status.items())}}


def load_test(export_dir: Path, candidates: int, concurrency: List[int], seconds: float,
              threads: Optional[int], max_wait_ms: float) -> Dict[str, Any]:
    spec = FeatureSpec.load(export_dir / "schema.json")
    bodies = request_bodies(spec, candidates, 64)
    cmd = [sys.executable, "-m", "interformer_rec.cli", "serve", "--model", str(export_dir), "--port", "0",
           "--max-wait-ms", str(max_wait_ms), "--max-pending", "1024", "--max-candidates", str(max(candidates, 1024))]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("serve exited before it listened")
            if line.startswith("{") and json.loads(line).get("event") == "serving":
                url = json.loads(line)["url"]
        if url is None:
            raise RuntimeError("serve did not start in 120 s")
        import requests

        requests.post(url + "/v1/score", data=bodies[0], timeout=60)  # warm-up
        runs = []
        for c in concurrency:
            before = requests.get(url + "/healthz", timeout=10).json()
            r = asyncio.run(_load(url, bodies, c, seconds))
            after = requests.get(url + "/healthz", timeout=10).json()
            batches = after["batches"] - before["batches"]
            r.update(concurrency=c, candidates=candidates, candidates_per_s=r["requests_per_s"] * candidates,
                     requests_per_model_call=(after["requests"] - before["requests"]) / max(batches, 1))
            runs.append(r)
            print(f"  load c={c:<3} {r['requests_per_s']:8.1f} req/s  {r['candidates_per_s']:9.0f} cand/s  "
                  f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  status {r['status']}  "
                  f"req/call {r['requests_per_model_call']:.2f}", flush=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        return {"model": json.loads((export_dir / "manifest.json").read_text())["model"]["name"],
                "runs": runs, "server_exit_code": proc.returncode, "max_wait_ms": max_wait_ms}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def markdown(result: Dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# Serving benchmark",
        "",
        f"{env['cpu_count']} CPU cores, torch threads {env['torch_threads']}, torch {env['torch']}, "
        f"python {env['python']}; load average at start {env['load_average']}. Config `{result['config']}`"
        + (f", checkpoint `{result['checkpoint']}`" if result["checkpoint"] else " (initial weights)") + ".",
        "",
        "## Model call latency and throughput",
        "",
        "| model | variant | batch | p50 ms | p99 ms | rows/s | max abs diff vs eager |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["latency"]:
        lines.append(f"| {r['model']} | {r['variant']} | {r['batch_size']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['rows_per_s']:.0f} | {r['max_abs_diff_vs_eager']:.1e} |")
    lines += ["", "## Export", "", "| model | export s | compile s | package MB | parity max abs logit diff |", "|---|---:|---:|---:|---:|"]
    for e in result["exports"]:
        lines.append(f"| {e['model']} | {e['export_seconds']} | {e['compile_seconds']} | {e['bytes'] / 1e6:.1f} | "
                     f"{e['parity_max_abs_diff_logit']:.1e} |")
    for lt in result["load"]:
        lines += ["", f"## HTTP load test ({lt['model']}, loopback, {lt['runs'][0]['candidates']} candidates per request, "
                  f"micro-batch wait {lt['max_wait_ms']} ms)", "",
                  "| concurrency | requests | req/s | candidates/s | p50 ms | p99 ms | requests per model call | status |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in lt["runs"]:
            lines.append(f"| {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f} | {r['candidates_per_s']:.0f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['requests_per_model_call']:.2f} | {r['status']} |")
        lines.append(f"\nserver exit code after SIGTERM: {lt['server_exit_code']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "synthetic.yaml"))
    p.add_argument("--checkpoint", help="a trained run / checkpoint (its model only)")
    p.add_argument("--models", nargs="+", default=["interformer", "dlrm_dcn"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 64, 256, 1024])
    p.add_argument("--seconds", type=float, default=1.5, help="timing per (variant, batch size)")
    p.add_argument("--load-model", default="interformer", help="model of the HTTP load test")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--load-seconds", type=float, default=5.0)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (benchmark and server)")
    p.add_argument("--work", help="directory for checkpoints and packages (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "results" / "serving"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    work = Path(args.work or tempfile.mkdtemp(prefix="serving-bench-"))
    models = [m for m in args.models] if not args.checkpoint else [None]
    result: Dict[str, Any] = {
        "config": args.config, "checkpoint": args.checkpoint,
        "environment": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()],
                        "machine": platform.machine()},
        "latency": [], "exports": [], "load": [],
    }
    dirs: Dict[str, Path] = {}
    for name in models:
        cfg = load_config(args.config)
        ckpt = prepare(cfg, name, work, args.checkpoint)
        out = work / f"export_{name or 'checkpoint'}"
        print(f"export {name or args.checkpoint} -> {out}", flush=True)
        m = export(ckpt, out, parity_rows=512)
        dirs[m["model"]["name"]] = out
        result["exports"].append({"model": m["model"]["name"], **{k: m["package"][k] for k in ("export_seconds", "compile_seconds", "bytes")},
                                  "parity_max_abs_diff_logit": m["parity"]["max_abs_diff_logit"]})
        result["latency"] += bench_variants(out, ckpt, args.batch_sizes, args.seconds)
    load_dir = dirs.get(args.load_model) or next(iter(dirs.values()))
    result["load"].append(load_test(load_dir, args.candidates, args.concurrency, args.load_seconds, args.threads, args.max_wait_ms))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
