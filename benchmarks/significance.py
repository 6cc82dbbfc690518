"""Is model A's lead over model B real? Paired bootstrap of the test AUC and gAUC gaps.

    python benchmarks/significance.py --config configs/movielens.yaml \\
        --a results/quality_corating/runs/movielens/interformer_dhen/seed{0,1,2} \\
        --b results/quality_corating/runs/movielens/dlrm_dcn/seed{0,1,2}

Seed spreads say how much a model moves with its initialisation, not how much the test
split itself could move the comparison. This tool scores the test split (the config's)
with every run, averages each model's logits over its runs, and resamples:

* AUC of A and B and A − B, with 95 % intervals from resampling **rows** and from
  resampling **groups** (``schema.group_key``, the users: a user's rows move together,
  which is the honest interval when rows of one user are correlated);
* gAUC (TorchRec's: the mean of per-group AUCs over groups with both labels) of A and B
  and A − B, with a 95 % interval from resampling groups, paired (both models on the same
  resampled groups), on how many groups A is ahead, and both by the groups' number of
  test rows (every group weighs alike in gAUC, and a group of 3 rows has a coarse AUC).

Writes ``results/significance.json`` and ``.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pyarrow.parquet as pq
import torch
from planted import auc_of, model_logits, write_report

from interformer_rec.config import Config, load_config
from interformer_rec.export.export import load_model
from interformer_rec.ops.metrics import group_rank_stats

ROOT = Path(__file__).resolve().parents[1]
# gAUC weighs every group alike: per-group AUCs of groups with few rows are the noisiest
SIZE_BUCKETS = [("<= 5 rows", 1, 5), ("6-20 rows", 6, 20), ("> 20 rows", 21, 1 << 62)]


def rows_by_group(groups: np.ndarray) -> Dict[int, np.ndarray]:
    """``{group id: its row indices, ascending}``, groups in ascending order (one sort)."""
    order = np.argsort(groups, kind="stable")
    ids, starts = np.unique(groups[order], return_index=True)
    return {int(g): rows for g, rows in zip(ids, np.split(order, starts[1:]))}


def group_aucs(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> Dict[int, float]:
    """AUC of each group that has both labels (``{group id: AUC}``, of the
    probabilities, ties averaged), from one sort by (group, score)."""
    ids = torch.from_numpy(np.asarray(groups, dtype=np.int64))
    probs = torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float64)))
    aucs, pos, neg, _ = group_rank_stats(torch.from_numpy(np.asarray(labels, dtype=np.float64)), probs, ids)
    both = (pos > 0) & (neg > 0)
    return dict(zip(torch.unique(ids)[both].tolist(), aucs[both].tolist()))


def interval(samples: Sequence[float]) -> List[float]:
    return [float(v) for v in np.percentile(samples, [2.5, 97.5])]


def compare(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, groups: np.ndarray, draws: int = 1000, seed: int = 0
) -> Dict[str, Any]:
    """Bootstrap comparison of logits ``a`` and ``b`` (``[N]`` each) on the same rows.

    Returns:
        ``auc``: A, B, A − B and its row- and group-resampled 95 % intervals; ``gauc``: A,
        B, A − B, its group-resampled interval, the number of groups and the number on
        which A is ahead.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    row_gaps = []
    for _ in range(draws):
        i = rng.integers(0, n, n)
        row_gaps.append(auc_of(a[i], labels[i]) - auc_of(b[i], labels[i]))
    rows_of = rows_by_group(groups)
    ids = np.array(list(rows_of))
    group_gaps = []
    for _ in range(draws):
        i = np.concatenate([rows_of[g] for g in rng.choice(ids, len(ids))])
        group_gaps.append(auc_of(a[i], labels[i]) - auc_of(b[i], labels[i]))
    ga, gb = group_aucs(a, labels, groups), group_aucs(b, labels, groups)
    both = sorted(set(ga) & set(gb))
    d = np.array([ga[g] - gb[g] for g in both])
    gauc_gaps = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(draws)]
    auc_a, auc_b = auc_of(a, labels), auc_of(b, labels)
    size = {g: len(rows_of[g]) for g in both}
    by_size = {}
    for name, lo, hi in SIZE_BUCKETS:
        sel = [g for g in both if lo <= size[g] <= hi]
        if sel:
            by_size[name] = {
                "groups": len(sel),
                "a": float(np.mean([ga[g] for g in sel])),
                "b": float(np.mean([gb[g] for g in sel])),
            }
    return {
        "auc": {
            "a": auc_a,
            "b": auc_b,
            "gap": auc_a - auc_b,
            "rows_95": interval(row_gaps),
            "groups_95": interval(group_gaps),
        },
        "gauc": {
            "a": float(np.mean([ga[g] for g in both])),
            "b": float(np.mean([gb[g] for g in both])),
            "gap": float(d.mean()),
            "groups_95": interval(gauc_gaps),
            "groups": len(both),
            "a_ahead": int((d > 0).sum()),
            "by_group_rows": by_size,
        },
    }


def seed_mean_logits(runs: Sequence[Path], cfg: Config, test: Path) -> Tuple[np.ndarray, np.ndarray]:
    """The mean over ``runs`` of their logits on ``test``, and its labels (file order)."""
    scored = [model_logits(load_model(r)[0], cfg, test) for r in runs]
    return np.mean([logits for logits, _ in scored], axis=0), scored[0][1].astype(np.float64)


def markdown(r: Dict[str, Any]) -> str:
    a, g = r["auc"], r["gauc"]

    def pts(v: float) -> str:
        return f"{100 * v:+.2f}"

    return "\n".join([
        f"A: {r['a']} ({len(r['a_runs'])} runs); B: {r['b']} ({len(r['b_runs'])} runs); "
        f"logits averaged over each model's runs; {r['rows']} test rows, {r['draws']} draws",
        "",
        "| metric | A | B | A − B (points) | 95 % interval, rows resampled | 95 % interval, groups resampled |",
        "|---|---|---|---|---|---|",
        f"| AUC | {a['a']:.4f} | {a['b']:.4f} | {pts(a['gap'])} | [{pts(a['rows_95'][0])}, {pts(a['rows_95'][1])}] "
        f"| [{pts(a['groups_95'][0])}, {pts(a['groups_95'][1])}] |",
        f"| gAUC ({g['groups']} groups, A ahead on {g['a_ahead']}) | {g['a']:.4f} | {g['b']:.4f} | {pts(g['gap'])} | - "
        f"| [{pts(g['groups_95'][0])}, {pts(g['groups_95'][1])}] |",
        "",
        "| gAUC by the group's test rows | groups | A | B | A − B (points) |",
        "|---|---|---|---|---|",
        *(f"| {k} | {v['groups']} | {v['a']:.4f} | {v['b']:.4f} | {pts(v['a'] - v['b'])} |" for k, v in g["by_group_rows"].items()),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="the config the runs were trained with (data, schema)")
    p.add_argument("--a", nargs="+", type=Path, required=True, help="run directories of model A (seeds)")
    p.add_argument("--b", nargs="+", type=Path, required=True, help="run directories of model B (seeds)")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)

    cfg = load_config(args.config)
    test = Path(cfg.data.test or "")
    if not test.is_file():
        raise SystemExit(f"{test}: the config's test split is missing")
    key = cfg.data.schema.group_key
    if key is None:
        raise SystemExit(f"{args.config}: schema.group_key is not set; gAUC needs groups")
    groups = pq.read_table(test, columns=[key]).column(0).to_numpy()
    a, labels = seed_mean_logits(args.a, cfg, test)
    b, _ = seed_mean_logits(args.b, cfg, test)
    result = {
        "a": str(args.a[0].parent), "b": str(args.b[0].parent),
        "a_runs": [str(r) for r in args.a], "b_runs": [str(r) for r in args.b],
        "rows": len(labels), "draws": args.draws,
        **compare(a, b, labels, groups, args.draws),
    }
    write_report(args.out, "significance", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
