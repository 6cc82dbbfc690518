"""Input-pipeline benchmark: conversion rows/s per raw format, Parquet -> Batch rows/s,
the trainer's own rows/s at the default model size (is it input-bound?), and peak memory
of converting and reading a raw file larger than a memory budget.

    python benchmarks/data.py            # full sizes (a few minutes on 2 cores)
    python benchmarks/data.py --quick    # small sizes, for a smoke run

Raw inputs are made by resampling the lines of ``../shared/data/samples`` (formats whose
sample is missing are skipped) and, for the memory run, a random Criteo-like file
(40 fields per line, per-column vocabularies of 10..500k hashes). Every measurement runs
in a fresh subprocess, so peak RSS (``VmHWM`` of /proc/self/status) is that step's alone;
"held" is peak RSS minus the RSS after the imports (what the data path itself keeps). Writes
``results/data.json`` and ``results/data.md``.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
MB = 1024 * 1024

FORMATS = {
    # name: (sample, converter call, config, rows full, rows quick)
    "criteo": (SAMPLES / "criteo" / "train_head999.txt", "convert_criteo", "criteo", 600_000, 60_000),
    "taobao": (SAMPLES / "taobao_ad" / "dmr_alimama_sample500.txt", "convert_taobao_dmr", "taobao", 100_000, 10_000),
    "taobao_fuxictr": (SAMPLES / "taobao_ad" / "fuxictr_tiny_train.csv", "convert_taobao_fuxictr",
                       "taobao_fuxictr", 400_000, 40_000),
    "amazon": (SAMPLES / "amazon_electronics" / "din_sample100.txt", "convert_amazon_din", "amazon",
               400_000, 40_000),
}
MODULE = {"criteo": "criteo", "taobao": "taobao", "taobao_fuxictr": "taobao", "amazon": "amazon"}


def run_py(code: str, *args: str, timeout: int = 1800) -> Dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- raw inputs


def resample_lines(sample: Path, rows: int, out: Path, seed: int = 0) -> int:
    """Write ``rows`` lines drawn (with replacement) from ``sample`` (its header kept).
    Criteo lines are padded back to 40 fields (the sample had its trailing empty fields
    stripped; the Kaggle file has all 40)."""
    lines = sample.read_bytes().split(b"\n")
    lines = [l for l in lines if l]
    header = []
    if sample.suffix == ".csv":
        header, lines = lines[:1], lines[1:]
    if "criteo" in str(sample):
        lines = [l + b"\t" * (39 - l.count(b"\t")) for l in lines]
    idx = np.random.default_rng(seed).integers(0, len(lines), rows)
    with open(out, "wb") as f:
        for h in header:
            f.write(h + b"\n")
        for lo in range(0, rows, 100_000):
            f.write(b"\n".join(lines[i] for i in idx[lo : lo + 100_000]) + b"\n")
    return out.stat().st_size


def random_criteo(out: Path, target_bytes: int, seed: int = 0) -> Dict[str, int]:
    """A random Criteo-like TSV of about ``target_bytes`` (distinct values per column from
    10 to 500k, ~10% missing), from a pool of 50k random lines."""
    rng = np.random.default_rng(seed)
    pool_n = 50_000
    vocab = np.geomspace(10, 500_000, 26).astype(np.int64)
    cols = [np.where(rng.random(pool_n) < 0.25, "1", "0")]
    for _ in range(13):
        v = np.floor(rng.lognormal(1.5, 2.0, pool_n)).astype(np.int64).astype(str)
        cols.append(np.where(rng.random(pool_n) < 0.1, "", v))
    for k in vocab:
        ids = (rng.zipf(1.2, pool_n) % k) * 2654435761 % 2**32
        v = np.char.mod("%08x", ids)
        cols.append(np.where(rng.random(pool_n) < 0.1, "", v))
    pool = ["\t".join(r).encode() for r in zip(*cols)]
    mean = sum(map(len, pool[:2000])) / 2000 + 1
    rows = int(target_bytes / mean)
    idx = rng.integers(0, pool_n, rows)
    with open(out, "wb") as f:
        for lo in range(0, rows, 200_000):
            f.write(b"\n".join(pool[i] for i in idx[lo : lo + 200_000]) + b"\n")
    return {"rows": rows, "bytes": out.stat().st_size}


# --------------------------------------------------------------------------- steps

# Peak RSS from /proc/self/status VmHWM (this process's address space since exec):
# ru_maxrss would carry the parent's high-water mark across fork + exec.
VM = """
def _vm(key):
    import re
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
"""

CONVERT = VM + """
import json, sys, time
from pathlib import Path
import interformer_rec.data.converters.{module} as m
base = _vm("VmRSS")
t = time.perf_counter()
s = m.{fn}(Path(sys.argv[1]), Path(sys.argv[2]){extra})
dt = time.perf_counter() - t
peak = _vm("VmHWM")
print(json.dumps(dict(rows=s["lines"], bad_rows=s["bad_rows"], seconds=dt, rows_per_s=s["lines"] / dt,
                      peak_rss_mb=peak, held_mb=peak - base,
                      torch_imported="torch" in sys.modules, outputs=s["outputs"])))
"""

READ = VM + """
import json, sys, time
from pathlib import Path
from interformer_rec.config import load_config
from interformer_rec.data.reader import ParquetBatchReader
import torch
torch.set_num_threads(int(sys.argv[5]))
cfg = load_config(sys.argv[2])
base = _vm("VmRSS")
reader = ParquetBatchReader(sys.argv[1], cfg.data.schema, int(sys.argv[3]), shuffle=True,
                            shuffle_window={window})
workers = int(sys.argv[4])
it = reader.loader(workers)  # workers send numpy batches; 0: in this process
t = time.perf_counter()
rows = 0
for b in it:
    rows += b.batch_size
dt = time.perf_counter() - t
peak = _vm("VmHWM")
print(json.dumps(dict(rows=rows, seconds=dt, rows_per_s=rows / dt, peak_rss_mb=peak, held_mb=peak - base)))
"""

TRAIN = """
import json, sys, time, tempfile, logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from pathlib import Path
from interformer_rec.config import load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.data.reader import ParquetBatchReader
out = Path(sys.argv[1])
steps = int(sys.argv[2])
cfg = load_config(Path(sys.argv[3]), [f"data.train={{out}}/train.parquet", f"data.valid={{out}}/valid.parquet",
                  f"data.test={{out}}/valid.parquet", f"train.out_dir={{out}}/run", "train.progress=false",
                  f"train.max_steps_per_epoch={{steps}}", "train.checkpoint_every_steps=0"])
cfg.data.synthetic.rows = {{"train": steps * cfg.train.batch_size + 1000, "valid": 1000}}
generate(cfg.data.synthetic, out)
from interformer_rec.train.trainer import Trainer
tr = Trainer(cfg, write_outputs=False)
tr.train_epoch(0)  # warm-up epoch (first steps are slow)
tr.step_in_epoch = 0
stats = tr.train_epoch(1)
reader = ParquetBatchReader(out / "train.parquet", cfg.data.schema, cfg.train.batch_size, shuffle=True)
t = time.perf_counter()
rows = 0
for k, b in enumerate(reader):
    if k == steps:
        break
    rows += b.batch_size
dt = time.perf_counter() - t
print(json.dumps(dict(train_rows_per_s=stats["train_samples_per_s"], steps=stats["steps"],
                      batch_size=cfg.train.batch_size, reader_rows_per_s=rows / dt,
                      model=cfg.model.name, embedding_dim=cfg.model.embedding_dim)))
"""


def convert_step(name: str, raw: Path, out: Path) -> Dict[str, Any]:
    fn = FORMATS[name][1]
    return run_py(CONVERT.format(module=MODULE[name], fn=fn, extra=""), str(raw), str(out))


def read_step(data: Path, config: Path, batch: int, workers: int, threads: int = 1,
              window: int = 65536) -> Dict[str, Any]:
    return run_py(READ.format(window=window), str(data), str(config), str(batch), str(workers), str(threads))


# --------------------------------------------------------------------------- main


def memory_runs(work: Path, budget: int, file_factor: float) -> Dict[str, Any]:
    """Convert and read a random Criteo file ``file_factor`` times the memory ``budget``
    (MB), and one of the budget's size, measuring peak RSS: the peak does not grow with
    the input."""
    runs = []
    for factor in sorted({1.0, file_factor}):
        big = work / f"big_criteo_{factor:g}.txt"
        info = random_criteo(big, int(budget * MB * factor))
        conv = convert_step("criteo", big, work / f"big_{factor:g}")
        conv.pop("outputs")
        parquet = work / f"big_{factor:g}" / f"{big.stem}.parquet"
        read = read_step(parquet, ROOT / "configs" / "criteo.yaml", 256, 0)
        runs.append({"raw_mb": info["bytes"] / MB, "rows": info["rows"],
                     "parquet_mb": parquet.stat().st_size / MB, "convert": conv, "read": read})
        big.unlink()
        print(f"memory: {info['bytes'] / MB:.0f} MB raw ({info['rows']:,} rows) vs budget {budget} MB: "
              f"convert peak RSS {conv['peak_rss_mb']:.0f} MB (no torch), read peak RSS "
              f"{read['peak_rss_mb']:.0f} MB (held beyond imports {read['held_mb']:.0f} MB)", file=sys.stderr)
    m = runs[-1]
    return {
        "budget_mb": budget, **m, "smaller": runs[0] if len(runs) > 1 else None,
        "convert_within_budget": m["convert"]["peak_rss_mb"] < budget,
        "read_held_within_budget": m["read"]["held_mb"] < budget,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--budget-mb", type=int, default=None,
                   help="memory budget of the larger-than-budget run (default 256, quick 64)")
    p.add_argument("--file-factor", type=float, default=4.0, help="raw file size / budget")
    p.add_argument("--train-steps", type=int, default=None, help="trainer steps timed (default 150, quick 30)")
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = p.parse_args(argv)
    quick = args.quick
    budget = args.budget_mb or (64 if quick else 256)
    steps = args.train_steps or (30 if quick else 150)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": quick,
        "conversion": {},
        "reading": {},
    }

    for name, (sample, _, config, rows_full, rows_quick) in FORMATS.items():
        if not sample.is_file():
            print(f"skip {name}: no sample at {sample}", file=sys.stderr)
            continue
        rows = rows_quick if quick else rows_full
        raw = work / f"{name}_raw{sample.suffix}"
        size = resample_lines(sample, rows, raw)
        conv = convert_step(name, raw, work / name)
        conv.update(raw_mb=size / MB, mb_per_s=size / MB / conv["seconds"])
        result["conversion"][name] = conv
        parquet = next(iter(conv.pop("outputs").values()))["path"]
        r = read_step(Path(parquet), ROOT / "configs" / f"{config}.yaml", 256, 0)
        result["reading"][name] = r
        print(f"{name:>15}: convert {conv['rows_per_s']:>9,.0f} rows/s ({conv['mb_per_s']:.0f} MB/s, "
              f"peak RSS {conv['peak_rss_mb']:.0f} MB) | Parquet->Batch {r['rows_per_s']:>9,.0f} rows/s",
              file=sys.stderr)

    # reader with DataLoader workers (criteo), and the trainer at the default model size
    if "criteo" in result["conversion"]:
        data = work / "criteo"
        result["reading_workers"] = {
            str(w): read_step(data, ROOT / "configs" / "criteo.yaml", 256, w) for w in (0, 1, 2)
        }
        print("criteo reader by DataLoader workers: " + ", ".join(
            f"{w}: {v['rows_per_s']:,.0f}" for w, v in result["reading_workers"].items()) + " rows/s",
            file=sys.stderr)
    train = run_py(TRAIN.format(), str(work / "synthetic"), str(steps), str(ROOT / "configs" / "synthetic.yaml"))
    share = train["train_rows_per_s"] / train["reader_rows_per_s"]
    train["input_share_of_step"] = share  # reader time / step time (reader runs in-process)
    result["trainer"] = train
    print(f"trainer ({train['model']}, d={train['embedding_dim']}, B={train['batch_size']}): "
          f"{train['train_rows_per_s']:,.0f} rows/s; reader on the same data {train['reader_rows_per_s']:,.0f} "
          f"rows/s -> input is {100 * share:.1f}% of a step", file=sys.stderr)

    result["memory"] = memory_runs(work, budget, args.file_factor)

    (out_dir / "data.json").write_text(json.dumps(result, indent=2))
    (out_dir / "data.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: Dict[str, Any]) -> str:
    lines = [
        "# Input pipeline (benchmarks/data.py)",
        "",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}; one process per step"
        + (" (quick sizes)" if r["quick"] else "") + ".",
        "",
        "| format | rows | raw MB | convert rows/s | MB/s | peak RSS MB | Parquet->Batch rows/s (B=256, shuffled) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in r["conversion"].items():
        rd = r["reading"][name]
        lines.append(f"| {name} | {c['rows']:,} | {c['raw_mb']:.0f} | {c['rows_per_s']:,.0f} | {c['mb_per_s']:.0f} "
                     f"| {c['peak_rss_mb']:.0f} | {rd['rows_per_s']:,.0f} |")
    if "reading_workers" in r:
        lines += ["", "Criteo Parquet->Batch by DataLoader workers (reader.loader(N); 0 = in the training process): "
                  + ", ".join(f"{w}: {v['rows_per_s']:,.0f} rows/s" for w, v in r["reading_workers"].items())]
    t = r["trainer"]
    lines += [
        "",
        f"Trainer at the default model size ({t['model']}, embedding_dim {t['embedding_dim']}, batch "
        f"{t['batch_size']}, configs/synthetic.yaml, {t['steps']} steps after a warm-up epoch): "
        f"{t['train_rows_per_s']:,.0f} rows/s. The reader alone on the same file: "
        f"{t['reader_rows_per_s']:,.0f} rows/s, so reading is {100 * t['input_share_of_step']:.1f}% of a "
        "training step (the trainer reads in-process).",
    ]
    m = r["memory"]
    lines += [
        "",
        f"Larger than the budget: a {m['raw_mb']:.0f} MB random Criteo file ({m['rows']:,} rows; "
        f"{m['parquet_mb']:.0f} MB as Parquet) against a {m['budget_mb']} MB budget. Conversion peak RSS "
        f"{m['convert']['peak_rss_mb']:.0f} MB (torch not imported; {m['convert']['rows_per_s']:,.0f} rows/s); "
        f"reading it all into batches: peak RSS {m['read']['peak_rss_mb']:.0f} MB, of which "
        f"{m['read']['held_mb']:.0f} MB beyond the imports (torch, torchrec)"
        + (f". At a quarter of the size ({m['smaller']['raw_mb']:.0f} MB): conversion peak "
           f"{m['smaller']['convert']['peak_rss_mb']:.0f} MB, reading held {m['smaller']['read']['held_mb']:.0f} MB"
           if m.get("smaller") else "") + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
