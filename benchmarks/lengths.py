"""Training speed over real history-length distributions: the model's training step
(forward, backward, Adam) on batches whose histories follow a distribution, with and
without length buckets, at several ``max_len`` caps, measured side by side in one run.

    python benchmarks/lengths.py                                  # defaults below
    python benchmarks/lengths.py --dists lognormal --max-lens 100 500 2000 --models interformer din

Distributions (``--dists``):

* ``grocery``: the history lengths of ``data/amazon_grocery/train.parquet`` (written by
  ``interformer-rec convert amazon_grocery``; mean 11.7, median 5 at ``max_len`` 100);
* ``beauty``: every event's history in ``../shared/data/amazon_beauty/Beauty.txt`` (the
  user's earlier events; mean about 9, median 4);
* ``lognormal``: the synthetic generator's long-tailed lengths
  (``data.synthetic.history_lengths``, mean 100, shape 1), the same draws cut at each cap.

For each distribution and cap, a pool of ``--pool-rows`` lengths is drawn once (65,536:
the reader's default shuffle window). ``padded to max_len`` builds every batch at
``T = max_len`` (what every batch paid before batches were padded to their own longest
history); ``random batches`` cuts the pool in stream order (each batch padded to its own
longest row); ``length buckets`` sorts the pool first (what ``data.length_buckets`` does
within a shuffle window). ``--batches`` of the pool's batches, evenly spaced through it,
are timed (each step's median of ``--repeats`` after one warm-up) and the figure is their
rows over their summed step times: an estimate of a whole pass over the pool. Writes
``results/lengths.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import model_config, run_train_step  # noqa: E402

from interformer_rec.config import Schema, SyntheticConfig  # noqa: E402
from interformer_rec.data.batch import Batch  # noqa: E402
from interformer_rec.data.synthetic import history_lengths, synthetic_schema  # noqa: E402
from interformer_rec.models import build_model  # noqa: E402
from interformer_rec.train.ranking import RankingTrain  # noqa: E402

MODES = ("padded to max_len", "random batches", "length buckets")


def grocery_lengths(path: Path) -> np.ndarray:
    """History lengths of a converted Amazon Grocery split."""
    column = pq.read_table(path, columns=["hist_item_ids"]).column("hist_item_ids")
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def beauty_lengths(path: Path) -> np.ndarray:
    """The history length of every event of a ``<name>.txt`` release (a user per line,
    events oldest first): the user's earlier events."""
    out: List[np.ndarray] = []
    with open(path) as f:
        for line in f:
            n = len(line.split()) - 1
            out.append(np.arange(n, dtype=np.int64))
    return np.concatenate(out)


def draw(dist: str, n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` history lengths of ``dist``, cut at ``max_len``."""
    if dist == "lognormal":
        cfg = SyntheticConfig(max_len=1 << 30, length_dist="lognormal", mean_len=100.0, length_sigma=1.0)
        return np.minimum(history_lengths(cfg, n, rng), max_len)
    source = {
        "grocery": lambda: grocery_lengths(ROOT / "data/amazon_grocery/train.parquet"),
        "beauty": lambda: beauty_lengths(ROOT.parent / "shared/data/amazon_beauty/Beauty.txt"),
    }[dist]()
    return np.minimum(rng.choice(source, n), max_len)


def make_batch(schema: Schema, lengths: np.ndarray, g: torch.Generator) -> Batch:
    """A batch whose rows' histories have ``lengths`` (random ids, one target)."""
    B, total = len(lengths), int(lengths.sum())
    lens = torch.from_numpy(lengths).to(torch.int32)

    def ids(table: str, n: int) -> torch.Tensor:
        return torch.randint(0, schema.table(table).num_embeddings, (n,), generator=g)

    pooled = schema.pooled_features
    sparse = KeyedJaggedTensor.from_lengths_sync(
        [f.name for f in pooled], torch.cat([ids(f.table, B) for f in pooled]), torch.ones(B * len(pooled), dtype=torch.int32)
    )
    targets, seqs = schema.target_features, schema.sequence
    sequence = KeyedJaggedTensor.from_lengths_sync(
        [f.name for f in targets] + [s.name for s in seqs],
        torch.cat([ids(f.table, B) for f in targets] + [ids(s.table, total) for s in seqs]),
        torch.cat([torch.ones(B * len(targets), dtype=torch.int32)] + [lens] * len(seqs)),
    )
    return Batch(torch.randn(B, len(schema.dense), generator=g), sparse, sequence,
                 torch.randint(0, 2, (B, 1), generator=g).float(), torch.zeros(B, dtype=torch.long))


def batches_of(pool: np.ndarray, B: int, mode: str, n: int) -> List[np.ndarray]:
    """``n`` batches, evenly spaced, of the pool cut into batches of ``B`` rows, in
    order or sorted by length first."""
    if mode == "length buckets":
        pool = np.sort(pool)
    cuts = [pool[i : i + B] for i in range(0, len(pool) - B + 1, B)]
    return [cuts[i] for i in np.linspace(0, len(cuts) - 1, n).round().astype(int)]


def samples_per_s(name: str, schema: Schema, dim: int, cuts: List[np.ndarray], pad_to: int, repeats: int) -> float:
    """Rows over summed median step times of the model ``name`` on batches ``cuts``."""
    torch.manual_seed(0)
    model = RankingTrain(build_model(schema, model_config(name, dim))).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for lengths in cuts:
        batch = make_batch(schema, lengths, g)
        if pad_to:  # one extra full-length row pads the batch to max_len; it is not counted
            batch = make_batch(schema, np.append(lengths, pad_to), g)
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            run_train_step(model, opt, batch)
            if i:
                times.append(time.perf_counter() - start)
        total += statistics.median(times)
    return sum(len(c) for c in cuts) / total


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dists", nargs="+", default=["grocery", "beauty", "lognormal"])
    p.add_argument("--max-lens", nargs="+", type=int, default=[100, 500, 2000])
    p.add_argument("--models", nargs="+", default=["interformer", "din"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pool-rows", type=int, default=65536, help="lengths drawn per distribution and cap")
    p.add_argument("--batches", type=int, default=16, help="batches of the pool timed")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "lengths")
    args = p.parse_args(argv)
    rows: List[Dict[str, Any]] = []
    for dist in args.dists:
        # real logs are capped by their converters at 100; only the synthetic one grows
        caps = args.max_lens if dist == "lognormal" else [100]
        for max_len in caps:
            pool = draw(dist, args.pool_rows, max_len, np.random.default_rng(0))
            schema = synthetic_schema(dataclasses.replace(SyntheticConfig(), max_len=max_len))
            for name in args.models:
                for mode in args.modes:
                    if mode == "padded to max_len" and max_len > 100:
                        continue  # a full-length batch at every step: minutes a step on CPU
                    cuts = batches_of(pool, args.batch_size, mode, args.batches)
                    rate = samples_per_s(name, schema, args.dim, cuts, max_len if mode == MODES[0] else 0, args.repeats)
                    rows.append({"dist": dist, "max_len": max_len, "model": name, "mode": mode, "samples_per_s": rate,
                                 "mean_len": float(pool.mean()), "median_len": float(np.median(pool))})
                    print(f"{dist} max_len {max_len} {name} {mode}: {rate:,.0f} samples/s", flush=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": "cpu",
            "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "batches": args.batches,
            "pool_rows": args.pool_rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    Path(f"{args.out}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


def markdown(rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> str:
    lines = [
        f"Training step samples/s over history-length distributions (batch {meta['batch_size']}, "
        f"{meta['batches']} batches timed of a pool of {meta['pool_rows']:,} rows; {meta['machine']}, {meta['device']}, "
        f"{meta['torch_threads']} threads)",
        "",
        "| lengths | max_len | mean / median | model | " + " | ".join(MODES) + " | buckets / padded |",
        "|---|---:|---|---|" + "---:|" * (len(MODES) + 1),
    ]
    keys = sorted({(r["dist"], r["max_len"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for dist, max_len, model in keys:
        got = {r["mode"]: r for r in rows if (r["dist"], r["max_len"], r["model"]) == (dist, max_len, model)}
        first = next(iter(got.values()))
        cells = [f"{got[m]['samples_per_s']:,.0f}" if m in got else "–" for m in MODES]
        ratio = (f"{got[MODES[2]]['samples_per_s'] / got[MODES[0]]['samples_per_s']:.1f}x"
                 if MODES[0] in got and MODES[2] in got else "–")
        lines.append(f"| {dist} | {max_len} | {first['mean_len']:.1f} / {first['median_len']:.0f} | {model} | "
                     + " | ".join(cells) + f" | {ratio} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        rate = {r["max_len"]: r["samples_per_s"] for r in rows
                if (r["dist"], r["model"], r["mode"]) == ("lognormal", model, "length buckets")}
        if 100 in rate and 2000 in rate:
            lines.append(f"\n{model}, long-tailed lengths, buckets: max_len 2000 / max_len 100 = "
                         f"{rate[2000] / rate[100]:.2f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
