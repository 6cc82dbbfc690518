"""Weak scaling of sharded training: 1, 2, ... ranks, the same rows per rank.

    python benchmarks/scaling.py                       # 1 and 2 ranks, writes results/scaling.json
    python benchmarks/scaling.py --ranks 1 2 4 --steps 40 --model dlrm

Each world size runs as its own ``torchrun --standalone`` job of this script in
``--worker`` mode (the torchx ``benchmark`` component in launchers/components.py runs
the same worker on a cluster). The worker builds the real trainer (planner, DMP,
TrainPipelineSparseDist) and reports, per rank:

* samples/s per rank: ``steps * batch_size / seconds`` over ``--steps`` timed steps,
  after ``--warmup`` steps, with no profiler attached;
* communication share, from ``torch.profiler`` over ``--profile-steps`` more steps:
  *exposed* = the union of the training thread's time inside ``c10d::*`` collectives
  and TorchRec's awaitable waits, over the wall time (what overlap did not hide);
  *busy* = the union of gloo's transfer time on its worker threads (``gloo:*``), over
  the wall time (what the network did, hidden or not).

Every rank gets ``--threads`` intra-op threads (default 1), so a rank means the same
compute at every world size; more ranks than cores is reported but oversubscribed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]


def _union_ms(intervals: Sequence[Tuple[float, float]]) -> float:
    """Total length of the union of ``[start, end]`` intervals (us), in ms."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


def _is_wait(name: str) -> bool:
    n = name.lower()
    return "wait" in n and ("##" in n or "awaitable" in n or n.startswith("all2all"))


def _comm_shares(events: List[Any], wall_ms: float) -> Tuple[float, float]:
    """Shares of ``wall_ms`` that the profiled steps spent with communication exposed
    (the training thread in a c10d call or waiting on one) and with the backend busy
    (gloo/nccl events on any thread)."""
    threads: Dict[int, int] = {}
    for e in events:
        if e.name.startswith("ProfilerStep") or "## forward" in e.name or "## backward" in e.name:
            threads[e.thread] = threads.get(e.thread, 0) + 1
    main_thread = max(threads, key=threads.get) if threads else None
    exposed, busy = [], []
    for e in events:
        iv = (e.time_range.start, e.time_range.end)
        if e.name.startswith("gloo:") or e.name.startswith("nccl:"):
            busy.append(iv)
        elif e.thread == main_thread and (e.name.startswith("c10d::") or _is_wait(e.name)):
            exposed.append(iv)
    return _union_ms(exposed) / wall_ms, _union_ms(busy) / wall_ms


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from interformer_rec.config import load_config
    from interformer_rec.train.trainer import Trainer

    overrides = [
        f"model.name={args.model}",
        f"train.batch_size={args.batch_size}",
        "train.progress=false",
        f"train.out_dir={args.out_dir}",
        *args.set,
    ]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, write_outputs=False)
    env = trainer.env
    reader = trainer.reader("train", train=True)

    def batches():  # as many epochs as the steps need
        for epoch in itertools.count():
            reader.set_epoch(epoch)
            yield from reader

    it = batches()
    step = trainer.pipeline.progress
    for _ in range(args.warmup):
        step(it)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(it)
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        p0 = time.perf_counter()
        for _ in range(args.profile_steps):
            step(it)
        p_seconds = time.perf_counter() - p0
    exposed, busy = _comm_shares(list(prof.events()), p_seconds * 1e3)
    mine = {
        "rank": env.rank,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "step_ms": seconds * 1e3 / args.steps,
        "comm_exposed_share": exposed,
        "comm_busy_share": busy,
    }
    ranks: List[Any] = [None] * env.world_size
    dist.all_gather_object(ranks, mine)
    if env.is_main:
        from interformer_rec.train.dist import plan_summary

        out = {
            "world_size": env.world_size,
            "model": args.model,
            "batch_size_per_rank": args.batch_size,
            "threads_per_rank": args.threads,
            "cores": os.cpu_count(),
            "samples_per_s_per_rank": sum(r["samples_per_s"] for r in ranks) / len(ranks),
            "samples_per_s_total": sum(r["samples_per_s"] for r in ranks),
            "comm_exposed_share": sum(r["comm_exposed_share"] for r in ranks) / len(ranks),
            "comm_busy_share": sum(r["comm_busy_share"] for r in ranks) / len(ranks),
            "ranks": ranks,
            "plan": {k: v["sharding_type"] for k, v in plan_summary(trainer.plan).items()},
        }
        Path(args.result).write_text(json.dumps(out, indent=2))
    dist.destroy_process_group()


def _ensure_data(config: str, tmp: Path, rows: int) -> List[str]:
    """Overrides pointing at ``config``'s data, generated into ``tmp`` if it is missing."""
    from interformer_rec.config import load_config
    from interformer_rec.data.synthetic import generate

    cfg = load_config(config)
    if Path(cfg.data.train).exists() and Path(cfg.data.valid).exists():
        return []
    if cfg.data.synthetic is None:
        raise SystemExit(f"{cfg.data.train} is missing and {config} has no data.synthetic to generate it")
    syn = cfg.data.synthetic
    syn.rows = {"train": rows, "valid": 1024}
    generate(syn, tmp)
    return [f"data.train={tmp}/train.parquet", f"data.valid={tmp}/valid.parquet", "data.test=null"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/synthetic.yaml")
    p.add_argument("--model", default="interformer")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=256, help="rows per rank per step")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="results/scaling.json")
    p.add_argument("--timeout", type=int, default=600, help="seconds per world size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.out_dir = args.out_dir or tempfile.mkdtemp(prefix="scaling-")
        args.result = args.result or "scaling_worker.json"
        worker(args)
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        rows = (args.warmup + args.steps + args.profile_steps + 4) * args.batch_size * max(args.ranks)
        extra = _ensure_data(args.config, Path(tmp) / "data", rows)
        for w in args.ranks:
            result = Path(tmp) / f"w{w}.json"
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc_per_node", str(w), str(Path(__file__).resolve()), "--worker",
                "--config", args.config, "--model", args.model, "--batch-size", str(args.batch_size),
                "--warmup", str(args.warmup), "--steps", str(args.steps),
                "--profile-steps", str(args.profile_steps), "--threads", str(args.threads),
                "--result", str(result), "--out-dir", str(Path(tmp) / f"run{w}"),
            ]
            for s in [*extra, *args.set]:
                cmd += ["--set", s]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                raise SystemExit(f"{w} rank(s): exit code {proc.returncode}")
            r = json.loads(result.read_text())
            r["job_seconds"] = time.perf_counter() - t0
            results.append(r)
            print(
                f"{w} rank(s): {r['samples_per_s_per_rank']:8.0f} samples/s per rank, "
                f"{r['samples_per_s_total']:8.0f} total; communication exposed "
                f"{100 * r['comm_exposed_share']:4.1f}% / busy {100 * r['comm_busy_share']:4.1f}% of step time",
                flush=True,
            )
    base = results[0]["samples_per_s_per_rank"]
    for r in results:
        r["per_rank_efficiency_vs_first"] = r["samples_per_s_per_rank"] / base
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
