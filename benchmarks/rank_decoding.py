"""Per-rank decoding: what one rank of a ``W``-rank job reads and decodes in an epoch.

    python benchmarks/rank_decoding.py --config configs/amazon_beauty.yaml --before 2a53959

For ``W`` = 1, 2, 4 (``--worlds``) and each variant (``before``: the reader of commit
``REF`` in a temporary git worktree; ``after``: this checkout; with ``--s3``, this
checkout reading the split from moto's S3 server on loopback), a fresh single-threaded
process iterates rank 0's reader over one training epoch, as the trainer builds it
(shuffled windows, length buckets, the per-rank batch ``train.batch_size``), and reports:

* ``rows decoded``: rows the rank passed through ``decode_table`` (checks, id policy,
  jagged arrays), counted by wrapping it;
* ``epoch s``: the rank's wall time for the epoch (reading Parquet, decoding, building
  the tensors), the median of ``--repeats`` epochs; ``decoded rows/s``: rows decoded /
  epoch s;
* ``rows / s of the job``: the job's rows (``W`` x the rank's) per second of the rank's
  epoch: the input pipeline's speed at ``W`` ranks when every rank has its own cores.

Ranks are symmetric (each rank's reader does the same work on its own slices), so rank 0
stands for every rank; no process group is made (the ranks' agreement on bad rows is
one all-reduce per step, timed in ``benchmarks/train_speed.py``'s 2-rank runs). Writes
``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]

EPOCH = textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from interformer_rec.config import load_config
    from interformer_rec.data import reader as R

    config, world = sys.argv[1], int(sys.argv[2])
    cfg = load_config(config, [f"data.train={sys.argv[4]}"] if len(sys.argv) > 4 else [])
    counted = [0]
    decode = R.decode_table

    def counting(table, *args, **kwargs):
        counted[0] += table.num_rows
        return decode(table, *args, **kwargs)

    R.decode_table = counting
    d = cfg.data
    reader = R.ParquetBatchReader(d.train, d.schema, cfg.train.batch_size, shuffle=d.shuffle_row_groups,
                                  seed=cfg.train.seed, drop_last=True, rank=0, world_size=world,
                                  length_buckets=d.length_buckets)
    times = []
    for _ in range(int(sys.argv[3])):  # whole epochs; the median is reported
        counted[0] = 0
        start = time.perf_counter()
        rows = sum(b.batch_size for b in reader)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    print(json.dumps(dict(rows=rows, decoded=counted[0], seconds=seconds, total=reader.num_rows)))
    """
)


def rank_epoch(code_root: Path, config: Path, world: int, repeats: int, train: Optional[str] = None) -> Dict[str, Any]:
    """Rank 0's epoch of ``world`` ranks in a fresh process, with the code of ``code_root``
    (the median of ``repeats`` epochs); ``train`` replaces ``data.train``."""
    # -P: the working directory does not shadow PYTHONPATH (the 'before' worktree's code)
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = [str(config), str(world), str(repeats), *([train] if train else [])]
    proc = subprocess.run([sys.executable, "-P", "-c", EPOCH, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rank epoch (W={world}, {code_root}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def s3_copy(path: str) -> tuple:
    """Start moto's S3 server on loopback (the endpoint and test credentials go into this
    process's environment, which the epoch processes inherit) and copy ``path`` there.
    Returns ``(server, uri)``."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir("bench")
    pafs.copy_files(str(Path(path).resolve()), f"bench/{Path(path).name}", destination_filesystem=fs)
    return server, f"s3://bench/{Path(path).name}"


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        f"# Per-rank decoding ({result['config']}, per-rank batch {result['batch_size']})",
        "",
        f"{result['machine']['cpus']}-CPU {result['machine']['platform']}; one single-threaded process per row.",
        "",
        "| variant | W | rows decoded by the rank | of the epoch's rows | epoch s (rank) | decoded rows/s "
        "| rows/s of the job | vs W=1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, runs in result["variants"].items():
        base = runs[0]["job_rows_per_s"]
        for r in runs:
            lines.append(
                f"| {variant} | {r['world']} | {r['decoded']:,} | {r['decoded'] / r['total']:.2f} | {r['seconds']:.2f} "
                f"| {r['decoded'] / r['seconds']:,.0f} | {r['job_rows_per_s']:,.0f} | {r['job_rows_per_s'] / base:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/amazon_beauty.yaml"))
    p.add_argument("--before", help="a git ref whose reader runs as the 'before' variant")
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=5, help="epochs per measurement (the median is reported)")
    p.add_argument("--s3", action="store_true",
                   help="also read the training split from moto's S3 server on loopback (the 'after' reader)")
    p.add_argument("--out", type=Path, default=Path("results/rank_decoding"))
    args = p.parse_args(argv)
    from interformer_rec.config import load_config

    cfg = load_config(args.config, [])
    variants: List[tuple] = [("after", ROOT, None)]
    worktree: Optional[Path] = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="rank_decoding_")) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        variants.insert(0, (f"before ({args.before})", worktree, None))
    result: Dict[str, Any] = {
        "config": str(args.config),
        "batch_size": cfg.train.batch_size,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "variants": {},
    }
    server = None
    if args.s3:
        server, uri = s3_copy(cfg.data.train)
        variants.append(("after, from S3 on loopback", ROOT, uri))
    try:
        for name, root, train in variants:
            runs = []
            for world in args.worlds:
                r = rank_epoch(root, args.config.resolve(), world, args.repeats, train)
                r.update(world=world, job_rows_per_s=world * r["rows"] / r["seconds"])
                runs.append(r)
                print(f"{name} W={world}: decoded {r['decoded']:,} of {r['total']:,} rows in {r['seconds']:.1f} s "
                      f"({r['job_rows_per_s']:,.0f} rows/s of the job)", flush=True)
            result["variants"][name] = runs
    finally:
        if server is not None:
            server.stop()
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
