"""Which planted effects do trained models recover? (synthetic data only)

The synthetic click logit is a sum of known terms (``interformer_rec/data/synthetic.py``):
segment x category, context x dense, dense_0 x dense_1, the item's bias, the target item
occurring in the history, and the context-dependent, recency-weighted category match
with the history. This tool rebuilds every term of every test row from the Parquet
columns and the generator's world (and checks that they add up to the written
``true_prob``), scores the rows with each trained model, and regresses the model's
logit on the terms. A coefficient of 1 means the model has the term at its planted
strength, 0 that it ignores it; R² says how much of the model's logit the planted terms
explain.

    python benchmarks/planted.py runs/synthetic runs/synthetic_dlrm_dcn [...]

Each argument is a run directory (its ``checkpoints/best``). Writes
``results/planted.json`` and ``results/planted.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from interformer_rec.config import Config, SyntheticConfig
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.synthetic import ORACLE, TERMS, table_logit_terms
from interformer_rec.export.export import load_model
from interformer_rec.ops.metrics import auc
from interformer_rec.train.metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[1]


def write_report(out: Path, name: str, result: Any, md: str) -> None:
    """Write ``out/<name>.json`` and ``out/<name>.md`` (creating ``out``) and print the
    Markdown: every benchmark's way of leaving its figures behind."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(md)
    print(md)


def planted_terms(path: Path, cfg: SyntheticConfig) -> Dict[str, np.ndarray]:
    """Every planted term of each row of ``path`` (``[N]`` each, :data:`TERMS`), and
    ``"logit"``, the written ``true_prob`` as a logit."""
    table = pq.read_table(path)
    terms = table_logit_terms(table, cfg)
    p = table.column(ORACLE).to_numpy().astype(np.float64)
    terms["logit"] = np.log(p) - np.log1p(-p)
    return terms


def model_logits(model: torch.nn.Module, cfg: Config, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the rows of ``path``, in file order."""
    logits, labels = [], []
    with torch.no_grad():
        for b in ParquetBatchReader(path, cfg.data.schema, batch_size=1024):
            logits.append(model(b.dense, b.sparse, b.sequence)[:, 0].double().numpy())
            labels.append(b.labels[:, 0].numpy())
    return np.concatenate(logits), np.concatenate(labels)


def metrics_of(logits: np.ndarray, labels: np.ndarray, groups: Optional[np.ndarray] = None) -> Dict[str, float]:
    """:func:`compute_metrics` of ``[N]`` logits and labels (``groups [N]`` for gAUC)."""
    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).unsqueeze(1)  # noqa: E731
    g = np.zeros(len(labels), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    return compute_metrics(t(logits), t(labels), torch.from_numpy(g))


def auc_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """The AUC of :func:`compute_metrics` alone (of the probabilities, ties averaged),
    without its gAUC, logloss and NE: the bootstrap's inner loop."""
    return auc(labels, torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float64))))


def regress(y: np.ndarray, terms: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Least squares ``y ≈ a + Σ coef_k term_k``: the coefficients and R²."""
    X = np.stack([np.ones_like(y)] + [terms[k] for k in TERMS], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    return {"coef": dict(zip(TERMS, coef[1:].tolist())), "r2": 1.0 - resid.var() / y.var()}


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "Model logit regressed on the planted terms of the test rows (coefficient 1 = the term at its planted strength).",
        "",
        "| model | test AUC | R² | " + " | ".join(TERMS) + " |",
        "|---|---|---|" + "---|" * len(TERMS),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['auc']:.4f} | {r['r2']:.3f} | " + " | ".join(f"{r['coef'][k]:.2f}" for k in TERMS) + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories trained on the synthetic data")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)

    rows: List[Dict[str, Any]] = []
    oracle: Dict[str, Any] = {}
    for run in args.runs:
        model, cfg, _, _ = load_model(run / "checkpoints")
        if cfg.data.synthetic is None or cfg.data.test is None:
            raise SystemExit(f"{run}: not a run on the synthetic data (data.synthetic and data.test must be set)")
        path = Path(cfg.data.test)
        terms = planted_terms(path, cfg.data.synthetic)
        planted = sum(terms[k] for k in TERMS)
        gap = np.abs(planted - planted.mean() - (terms["logit"] - terms["logit"].mean())).max()
        if gap > 1e-4:
            raise SystemExit(f"{path}: the rebuilt terms miss the written {ORACLE} by {gap:.2g} (generator changed?)")
        logits, labels = model_logits(model, cfg, path)
        name = cfg.model.name + (f":{cfg.model.interformer.interaction}" if cfg.model.name == "interformer" else "")
        rows.append({"model": f"{name}, seed {cfg.train.seed}", "run": str(run), "auc": auc_of(logits, labels), **regress(logits, terms)})
        oracle = {"model": "oracle", "run": "", "auc": auc_of(terms["logit"], labels), **regress(terms["logit"], terms)}
        print(f"{rows[-1]['model']:<32} test AUC {rows[-1]['auc']:.4f}  R² {rows[-1]['r2']:.3f}", flush=True)
    rows.append(oracle)
    write_report(args.out, "planted", rows, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
