"""What the Amazon Grocery time split leaves a model to learn: how many valid / test users
and target items the training split has seen, and the AUC of item-level scores counted
on the training split alone (no model):

* ``popularity``: the item's training positives, ``log(1 + pos)``;
* ``item_ctr``: its training positive-to-negative odds, ``log((1 + pos) / (1 + neg))``,
  what an item embedding alone can learn.

With ``--runs``, each trained run directory also scores the test split, its rows split by
whether their user has rows in the training split (AUC, NE, mean |logit|).

    python benchmarks/grocery_signals.py --data data/amazon_grocery --out results/grocery_signals \
        --runs results/quality/runs/amazon_grocery/interformer_dhen/seed0/0.001_0

Writes ``grocery_signals.json`` and ``grocery_signals.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planted import auc_of, write_report  # noqa: E402

SPLITS = ("train", "valid", "test")


def signals(data: Path) -> Dict[str, Dict[str, Any]]:
    """Per split: rows, seen-user share, share of positive / negative targets with a
    training positive, and the AUC of each item score (see the module docstring)."""
    cols = ["label", "user_id", "item_id"]
    train = pq.read_table(data / "train.parquet", columns=cols).to_pydict()
    y, item = np.asarray(train["label"]), np.asarray(train["item_id"])
    n = int(item.max()) + 1
    pos = np.bincount(item[y == 1], minlength=n)
    neg = np.bincount(item[y == 0], minlength=n)
    users = np.unique(train["user_id"])
    out: Dict[str, Dict[str, Any]] = {}
    for split in SPLITS:
        t = pq.read_table(data / f"{split}.parquet", columns=cols).to_pydict()
        yy, ii = np.asarray(t["label"]), np.minimum(np.asarray(t["item_id"]), n - 1)
        seen = pos[ii] > 0
        out[split] = {
            "rows": int(len(yy)),
            "users_seen_in_train": float(np.isin(t["user_id"], users).mean()),
            "positives_with_train_positive": float(seen[yy == 1].mean()),
            "negatives_with_train_positive": float(seen[yy == 0].mean()),
            "auc_popularity": auc_of(np.log1p(pos[ii]), yy),
            "auc_item_ctr": auc_of(np.log((1 + pos[ii]) / (1 + neg[ii])), yy),
        }
    return out


def by_seen_users(runs: Sequence[Path], data: Path, config: Path) -> List[Dict[str, Any]]:
    """Each run's test metrics on the rows of users seen / not seen in training."""
    from significance import seed_mean_logits

    from interformer_rec.config import load_config
    from planted import metrics_of

    cfg = load_config(config)
    test = data / "test.parquet"
    known = np.unique(pq.read_table(data / "train.parquet", columns=["user_id"]).column(0).to_numpy())
    seen = np.isin(pq.read_table(test, columns=["user_id"]).column(0).to_numpy(), known)
    out = []
    for run in runs:
        logits, labels = seed_mean_logits([run], cfg, test)
        for name, mask in (("seen", seen), ("unseen", ~seen)):
            m = metrics_of(logits[mask], labels[mask])
            out.append({"run": str(run), "users": name, "rows": int(mask.sum()), "auc": m["auc"], "ne": m["ne"],
                        "mean_abs_logit": float(np.abs(logits[mask]).mean())})
    return out


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        "| split | rows | users seen in train | positives' items with a train positive | negatives' | AUC popularity | AUC item CTR |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, r in result["splits"].items():
        lines.append(
            f"| {split} | {r['rows']:,} | {r['users_seen_in_train']:.3f} | {r['positives_with_train_positive']:.3f} "
            f"| {r['negatives_with_train_positive']:.3f} | {r['auc_popularity']:.4f} | {r['auc_item_ctr']:.4f} |"
        )
    if result.get("runs"):
        lines += ["", "| run | users | rows | test AUC | NE | mean \\|logit\\| |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['run']} | {r['users']} | {r['rows']:,} | {r['auc']:.4f} | {r['ne']:.4f} | {r['mean_abs_logit']:.2f} |"
            for r in result["runs"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/amazon_grocery"))
    p.add_argument("--out", type=Path, default=Path("results/grocery_signals"))
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="trained run directories to score by seen users")
    p.add_argument("--config", type=Path, default=Path("configs/amazon_grocery.yaml"))
    args = p.parse_args(argv)
    result = {"splits": signals(args.data), "runs": by_seen_users(args.runs, args.data, args.config)}
    write_report(args.out, "grocery_signals", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
