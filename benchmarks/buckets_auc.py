"""Test AUC with length buckets off and on: does grouping rows by history length change
what the model learns? Full ``interformer-rec train`` runs (each config's protocol:
early stopping, best validation epoch scored on test), seeds × {off, on}, one at a time.

    python benchmarks/buckets_auc.py --configs configs/amazon_grocery.yaml configs/movielens.yaml --seeds 0 1 2

Writes ``results/buckets_auc.json`` and ``.md``: per config, the mean ± std over seeds of
the test AUC, and the median training samples/s, of each setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_speed import run_train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", type=Path,
                   default=[Path("configs/amazon_grocery.yaml"), Path("configs/movielens.yaml")])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("results/buckets_auc"))
    args = p.parse_args()
    runs: List[Dict[str, Any]] = []
    for config in args.configs:
        for seed in args.seeds:
            for buckets in (False, True):
                out_dir = args.out / "runs" / config.stem / f"seed{seed}_{'on' if buckets else 'off'}"
                m = run_train(ROOT, config, out_dir, [f"train.seed={seed}", f"data.length_buckets={str(buckets).lower()}"])
                rates = [h["train_samples_per_s"] for h in m["history"]]
                runs.append({"config": config.stem, "seed": seed, "buckets": buckets, "test_auc": m["test"]["auc"],
                             "best_epoch": m["best_epoch"], "train_samples_per_s": statistics.median(rates),
                             "train_seconds": m["train_seconds"]})
                print(json.dumps(runs[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(runs, indent=2))
    Path(f"{args.out}.md").write_text(markdown(runs))
    print(markdown(runs))


def markdown(runs: List[Dict[str, Any]]) -> str:
    lines = ["| config | length buckets | seeds | test AUC (mean ± std) | median train samples/s | train seconds (median) |",
             "|---|---|---:|---:|---:|---:|"]
    for config in dict.fromkeys(r["config"] for r in runs):
        for buckets in (False, True):
            rs = [r for r in runs if r["config"] == config and r["buckets"] == buckets]
            aucs = [r["test_auc"] for r in rs]
            std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
            lines.append(f"| {config} | {'on' if buckets else 'off'} | {len(rs)} | {statistics.mean(aucs):.4f} ± {std:.4f} | "
                         f"{statistics.median(r['train_samples_per_s'] for r in rs):,.0f} | "
                         f"{statistics.median(r['train_seconds'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
