"""Which signals of MovieLens-100K do the trained models use? (MovieLens only)

Builds, for every row, hand-made features from what is known at the row's time: the
target item's positive rate in the training split, the user's positive rate over the
history, the same over the history items of the target's genre, the mean stars of the
last 5 history items, the counts, and **item-CF**: the rating-signed similarity of the
target to the history, ``Σ_t sim(target, h_t)·sign_t / Σ_t |sim(target, h_t)|``, where
``sign_t`` is +1 for a history rating >= 4 and -1 otherwise and ``sim`` is the cosine
of two items' columns in the training split's signed user × item matrix. Item-CF is
what a pooled history cannot give a DLRM (it needs each history item *with* its rating)
and what InterFormer's per-step sequence could learn.

Then:

1. each feature's test AUC alone;
2. logistic regressions on nested sets of the features, fit on the validation rows,
   scored on the test rows;
3. for each trained run given, its test AUC, and the test AUC of a logistic regression
   (fit on the validation rows) of its logit plus item-CF, and plus all features: the
   gain is what the model leaves on the table.

    python benchmarks/movielens_signals.py runs/movielens runs/movielens_dlrm_dcn [...]

Run directories are optional (each needs ``checkpoints/best``). Reads the converted
files of ``configs/movielens.yaml`` (``interformer-rec convert movielens``). Writes
``results/movielens_signals.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from planted import metrics_of, model_logits, write_report

from interformer_rec.config import load_config
from interformer_rec.data.movielens import NUM_ITEMS, NUM_USERS
from interformer_rec.export.export import load_model

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["item_prior", "user_pos", "user_genre_pos", "recent5_stars", "log_item_count", "log_history", "item_cf"]
NESTED = {
    "biases (item_prior, user_pos, counts)": ["item_prior", "user_pos", "log_item_count", "log_history"],
    "+ user_genre_pos, recent5_stars": ["item_prior", "user_pos", "log_item_count", "log_history", "user_genre_pos", "recent5_stars"],
    "+ item_cf (all)": FEATURES,
}
TRAIN_COLUMNS = ["user_id", "item_id", "label"]  # all that item_similarity and features read of it
SMOOTH = 10.0  # pseudo-rows at the global rate for the item prior (and 2 for the per-user rates)


def item_similarity(train: Dict[str, List[Any]]) -> np.ndarray:
    """``[items, items]`` cosine of the items' columns of the signed user × item matrix
    of the training rows (+1: rating >= 4, -1: below); 0 on the diagonal."""
    r = np.zeros((NUM_USERS, NUM_ITEMS))
    r[np.asarray(train["user_id"]), np.asarray(train["item_id"])] = np.where(np.asarray(train["label"]) > 0, 1.0, -1.0)
    norm = np.linalg.norm(r, axis=0) + 1e-9
    sim = (r.T @ r) / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0.0)
    return sim


def features(rows: Dict[str, List[Any]], train: Dict[str, List[Any]], sim: np.ndarray) -> np.ndarray:
    """``[N, len(FEATURES)]`` hand features of ``rows`` (item statistics from ``train`` only)."""
    labels = np.asarray(train["label"], dtype=np.float64)
    rate = labels.mean()
    items = np.asarray(train["item_id"])
    pos = np.bincount(items, weights=labels, minlength=NUM_ITEMS)
    count = np.bincount(items, minlength=NUM_ITEMS)
    out = np.zeros((len(rows["label"]), len(FEATURES)))
    for n, (item, genre, hist, stars, genres) in enumerate(
        zip(rows["item_id"], rows["item_genre"], rows["hist_item_ids"], rows["hist_ratings"], rows["hist_genre_ids"])
    ):
        hist, stars, genres = np.asarray(hist, dtype=np.int64), np.asarray(stars, dtype=np.float64), np.asarray(genres)
        liked = (stars >= 4).astype(np.float64)
        user_pos = (liked.sum() + 2 * rate) / (len(liked) + 2)
        same = genres == genre
        s = sim[item, hist]
        out[n] = [
            (pos[item] + SMOOTH * rate) / (count[item] + SMOOTH),
            user_pos,
            (liked[same].sum() + 2 * user_pos) / (same.sum() + 2),
            stars[-5:].mean() if len(stars) else 3.5,
            np.log1p(count[item]),
            np.log1p(len(hist)),
            (s * (2 * liked - 1)).sum() / (np.abs(s).sum() + 1e-3),
        ]
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> Callable[[np.ndarray], np.ndarray]:
    """An L2-regularised logistic regression on standardised ``x [N, k]`` (L-BFGS);
    returns the logit of new rows ``[M, k] -> [M]``."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    a = torch.from_numpy((x - mu) / sd)
    t = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w[:-1] + w[-1], t) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    coef, bias = w.detach().numpy()[:-1], float(w[-1])
    return lambda rows: ((rows - mu) / sd) @ coef + bias


def metrics(logits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> Dict[str, float]:
    m = metrics_of(logits, labels, groups)
    return {"auc": m["auc"], "gauc": m["gauc"]}


def markdown(single: Dict[str, float], nested: Dict[str, Dict[str, float]], runs: List[Dict[str, Any]]) -> str:
    lines = ["Each hand feature alone (test AUC)", "", "| feature | test AUC |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in single.items()]
    lines += [
        "",
        "Logistic regression on the hand features (fit on the validation rows, scored on test)",
        "",
        "| features | test AUC | test gAUC |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['auc']:.4f} | {v['gauc']:.4f} |" for k, v in nested.items()]
    if runs:
        lines += [
            "",
            "Trained models, and a logistic regression (fit on validation) of each model's logit plus item-CF, plus all features",
            "",
            "| run | model AUC / gAUC | + item_cf AUC / gAUC | + all features AUC / gAUC |",
            "|---|---|---|---|",
        ]
        for r in runs:
            cells = [f"{r[k]['auc']:.4f} / {r[k]['gauc']:.4f}" for k in ("model", "plus_item_cf", "plus_all")]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Test AUC points item-CF adds to each model (mean ± std over its runs)",
            "",
            "| model | runs | model AUC | + item_cf AUC | gain (points) |",
            "|---|---|---|---|---|",
        ]
        for label in dict.fromkeys(r["label"] for r in runs):
            auc = np.array([[r["model"]["auc"], r["plus_item_cf"]["auc"]] for r in runs if r["label"] == label])
            gain = 100 * (auc[:, 1] - auc[:, 0])
            lines.append(
                f"| {label} | {len(auc)} | {auc[:, 0].mean():.4f} | {auc[:, 1].mean():.4f} | {gain.mean():+.2f} ± {gain.std():.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="run directories trained on configs/movielens*.yaml")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)

    data = load_config(args.config).data
    paths = {"train": Path(data.train), "valid": Path(data.valid), "test": Path(data.test or data.valid)}
    for split, path in paths.items():
        if not path.exists():
            raise SystemExit(f"{path}: missing {split} split; run `interformer-rec convert movielens` first")
    # the training split is only needed for its item statistics, not its histories
    split = {k: pq.read_table(v, columns=TRAIN_COLUMNS if k == "train" else None).to_pydict() for k, v in paths.items()}
    sim = item_similarity(split["train"])
    x = {k: features(split[k], split["train"], sim) for k in ("valid", "test")}
    y = {k: np.asarray(split[k]["label"], dtype=np.float64) for k in ("valid", "test")}
    groups = np.asarray(split["test"]["user_id"])

    single = {f: metrics(x["test"][:, j], y["test"], groups)["auc"] for j, f in enumerate(FEATURES)}
    nested = {}
    for name, cols in NESTED.items():
        idx = [FEATURES.index(c) for c in cols]
        nested[name] = metrics(fit_logistic(x["valid"][:, idx], y["valid"])(x["test"][:, idx]), y["test"], groups)
        print(f"{name:<40} test AUC {nested[name]['auc']:.4f}  gAUC {nested[name]['gauc']:.4f}", flush=True)

    runs = []
    cf = FEATURES.index("item_cf")
    for run in args.runs:
        model, cfg, _, _ = load_model(run / "checkpoints")
        logit = {k: model_logits(model, cfg, paths[k])[0][:, None] for k in ("valid", "test")}
        label = cfg.model.name + (f":{cfg.model.interformer.interaction}" if cfg.model.name == "interformer" else "")
        row: Dict[str, Any] = {"name": str(run), "label": label, "model": metrics(logit["test"][:, 0], y["test"], groups)}
        for key, extra in (("plus_item_cf", [cf]), ("plus_all", list(range(len(FEATURES))))):
            xv, xt = (np.concatenate([logit[k], x[k][:, extra]], axis=1) for k in ("valid", "test"))
            row[key] = metrics(fit_logistic(xv, y["valid"])(xt), y["test"], groups)
        runs.append(row)
        print(f"{run}: model AUC {row['model']['auc']:.4f}, + item_cf {row['plus_item_cf']['auc']:.4f}", flush=True)

    write_report(args.out, "movielens_signals", {"single": single, "nested": nested, "runs": runs}, markdown(single, nested, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
