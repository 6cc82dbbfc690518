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

1. each feature's test AUC and gAUC alone;
2. logistic regressions on nested sets of the features, and on the item prior plus each
   other feature, fit on the validation rows, scored on the test rows (how each feature
   trades AUC against gAUC);
3. for each trained run given, its test AUC, and the test AUC of a logistic regression
   (fit on the validation rows) of its logit plus item-CF, and plus all features: the
   gain is what the model leaves on the table;
4. the positive rate of each split's rows by their position among their user's rows of
   that split (first quarter ... last quarter, in time order);
5. for each run, its logit's variation *within* users (each user's mean taken out)
   regressed on the item prior's logit and the user's positive rate, likewise centred:
   what orders one user's rows, which is what gAUC measures; and the same on all the
   features above, each scaled to unit within-user standard deviation (which of them
   each model leans on inside a user);
6. for each model, the test AUC and gAUC of its runs' logits averaged (what is left of
   a gap when the seeds' noise averages out);
7. the gAUC on validation and test of the item prior's logit plus ``w`` times item-CF,
   both at unit within-user standard deviation: what leaning on item-CF inside a user
   (the ratio of the two coefficients of 5.) costs or gains.

    python benchmarks/movielens_signals.py runs/movielens runs/movielens_dlrm_dcn [...]

Run directories are optional (each needs ``checkpoints/best``). Reads the converted
files of ``configs/movielens.yaml`` (``interformer-rec convert movielens``). Writes
``results/movielens_signals.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from planted import metrics_of, model_logits, write_report

from interformer_rec.config import load_config
from interformer_rec.data.converters.movielens import NUM_ITEMS, NUM_USERS
from interformer_rec.export.export import load_model

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["item_prior", "user_pos", "user_genre_pos", "recent5_stars", "log_item_count", "log_history", "item_cf"]
FITS = {
    **{f"item_prior + {f}": ["item_prior", f] for f in FEATURES[1:]},
    "biases (item_prior, user_pos, counts)": ["item_prior", "user_pos", "log_item_count", "log_history"],
    "+ user_genre_pos, recent5_stars": ["item_prior", "user_pos", "log_item_count", "log_history", "user_genre_pos", "recent5_stars"],
    "+ item_cf (all)": FEATURES,
}
CF_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)  # item-CF's weight relative to the item prior's, within users
TRAIN_COLUMNS = ["user_id", "item_id", "label", "timestamp"]  # all that is read of it
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


def centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values [N, ...]`` less the mean of their group (``groups [N]``)."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts),) + values.shape[1:])
    np.add.at(sums, inverse, values)
    return values - (sums / counts.reshape(-1, *[1] * (values.ndim - 1)))[inverse]


def within_groups(y: np.ndarray, x: np.ndarray, groups: np.ndarray) -> Dict[str, Any]:
    """Least squares of ``y [N]`` on ``x [N, k]``, both centred within each group: the
    ``[k]`` coefficients and the share of ``y``'s within-group variance they explain."""
    yc, xc = centred(y, groups), centred(x, groups)
    coef, *_ = np.linalg.lstsq(xc, yc, rcond=None)
    return {"coef": coef.tolist(), "r2": 1.0 - ((yc - xc @ coef) ** 2).sum() / (yc**2).sum()}


def rate_by_position(labels: np.ndarray, groups: np.ndarray, ts: np.ndarray, bins: int = 4) -> List[Dict[str, float]]:
    """The positive rate of the rows in each of ``bins`` equal slices of each group's rows
    taken in time order (position 0 = a group's first row, 1 = its last)."""
    order = np.lexsort((np.arange(len(ts)), ts, groups))
    _, first, counts = np.unique(groups[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(first, counts)
    position = np.empty(len(order))
    position[order] = rank / np.maximum(np.repeat(counts, counts) - 1, 1)
    which = np.minimum((position * bins).astype(int), bins - 1)
    return [
        {"from": b / bins, "to": (b + 1) / bins, "rate": float(labels[which == b].mean()), "rows": int((which == b).sum())}
        for b in range(bins)
    ]


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    """A titled Markdown table, preceded by a blank line."""
    lines = ["", title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(
    single: Dict[str, Dict[str, float]],
    fits: Dict[str, Dict[str, float]],
    positions: Dict[str, List[Dict[str, float]]],
    blend: Dict[str, Dict[float, float]],
    runs: List[Dict[str, Any]],
    averaged: Dict[str, Dict[str, float]],
) -> str:
    lines = table(
        "Each hand feature alone",
        ["feature", "test AUC", "test gAUC"],
        ([k, f"{v['auc']:.4f}", f"{v['gauc']:.4f}"] for k, v in single.items()),
    )[1:]
    lines += table(
        "Logistic regression on the hand features (fit on the validation rows, scored on test)",
        ["features", "test AUC", "test gAUC"],
        ([k, f"{v['auc']:.4f}", f"{v['gauc']:.4f}"] for k, v in fits.items()),
    )
    lines += table(
        "Positive rate of each split's rows by their place among their user's rows of the split (time order)",
        ["place", *[f"{split} positive rate" for split in positions]],
        ([f"{b['from']:.2f}-{b['to']:.2f}", *[f"{positions[k][i]['rate']:.3f}" for k in positions]] for i, b in enumerate(positions["test"])),
    )
    lines += table(
        "gAUC of the item prior's logit + w · item-CF, both at unit within-user standard deviation",
        ["split", *[f"w = {w:g}" for w in CF_WEIGHTS]],
        ([k, *[f"{blend[k][w]:.4f}" for w in CF_WEIGHTS]] for k in blend),
    )
    if not runs:
        return "\n".join(lines) + "\n"
    lines += table(
        "Trained models, and a logistic regression (fit on validation) of each model's logit plus item-CF, plus all features",
        ["run", "model AUC / gAUC", "+ item_cf AUC / gAUC", "+ all features AUC / gAUC"],
        ([r["name"]] + [f"{r[k]['auc']:.4f} / {r[k]['gauc']:.4f}" for k in ("model", "plus_item_cf", "plus_all")] for r in runs),
    )
    by_label = {label: [r for r in runs if r["label"] == label] for label in dict.fromkeys(r["label"] for r in runs)}
    gains = []
    for label, mine in by_label.items():
        auc = np.array([[r["model"]["auc"], r["plus_item_cf"]["auc"]] for r in mine])
        gain = 100 * (auc[:, 1] - auc[:, 0])
        gains.append([label, str(len(mine)), f"{auc[:, 0].mean():.4f}", f"{auc[:, 1].mean():.4f}", f"{gain.mean():+.2f} ± {gain.std():.2f}"])
    lines += table(
        "Test AUC points item-CF adds to each model (mean ± std over its runs)",
        ["model", "runs", "model AUC", "+ item_cf AUC", "gain (points)"],
        gains,
    )
    within = []
    for label, mine in by_label.items():
        coef = np.mean([r["within_user"]["coef"] for r in mine], axis=0)
        gauc, r2 = np.mean([r["model"]["gauc"] for r in mine]), np.mean([r["within_user"]["r2"] for r in mine])
        within.append([label, str(len(mine)), f"{gauc:.4f}", f"{coef[0]:.2f}", f"{coef[1]:.2f}", f"{r2:.3f}"])
    lines += table(
        "Within users: each run's test logit and the terms below, less each user's mean, regressed on each other "
        "(mean over the model's runs; R²: the share of the logit's within-user variance the two terms explain)",
        ["model", "runs", "test gAUC", "item prior (logit)", "user's positive rate", "R²"],
        within,
    )
    lines += table(
        "Within users, on all the hand features (item prior as its logit), each scaled to unit within-user "
        "standard deviation (mean over the model's runs)",
        ["model", *FEATURES, "R²"],
        (
            [label, *[f"{c:+.2f}" for c in np.mean([r["within_user_all"]["coef"] for r in mine], axis=0)],
             f"{np.mean([r['within_user_all']['r2'] for r in mine]):.3f}"]
            for label, mine in by_label.items()
        ),
    )
    lines += table(
        "Each model's runs' test logits averaged",
        ["model", "runs", "test AUC", "test gAUC"],
        ([label, str(a["runs"]), f"{a['auc']:.4f}", f"{a['gauc']:.4f}"] for label, a in averaged.items()),
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
    ip = FEATURES.index("item_prior")
    prior_logit = {k: np.log(x[k][:, ip] / (1 - x[k][:, ip])) for k in ("valid", "test")}
    blend = {}
    for k in ("valid", "test"):
        g = np.asarray(split[k]["user_id"])
        pair = np.stack([prior_logit[k], x[k][:, FEATURES.index("item_cf")]], axis=1)
        pair /= centred(pair, g).std(0)
        blend[k] = {w: metrics(pair[:, 0] + w * pair[:, 1], y[k], g)["gauc"] for w in CF_WEIGHTS}

    single = {f: metrics(x["test"][:, j], y["test"], groups) for j, f in enumerate(FEATURES)}
    fits = {}
    for name, cols in FITS.items():
        idx = [FEATURES.index(c) for c in cols]
        fits[name] = metrics(fit_logistic(x["valid"][:, idx], y["valid"])(x["test"][:, idx]), y["test"], groups)
        print(f"{name:<40} test AUC {fits[name]['auc']:.4f}  gAUC {fits[name]['gauc']:.4f}", flush=True)
    positions = {
        k: rate_by_position(np.asarray(split[k]["label"], dtype=np.float64), np.asarray(split[k]["user_id"]), np.asarray(split[k]["timestamp"]))
        for k in ("train", "valid", "test")
    }
    within_terms = np.stack([prior_logit["test"], x["test"][:, FEATURES.index("user_pos")]], axis=1)
    all_terms = x["test"].copy()
    all_terms[:, ip] = prior_logit["test"]
    all_terms /= centred(all_terms, groups).std(0)  # unit within-user standard deviation

    runs = []
    test_logits: Dict[str, List[np.ndarray]] = {}
    cf = FEATURES.index("item_cf")
    for run in args.runs:
        model, cfg, _, _ = load_model(run / "checkpoints")
        logit = {k: model_logits(model, cfg, paths[k])[0][:, None] for k in ("valid", "test")}
        label = cfg.model.name + (f":{cfg.model.interformer.interaction}" if cfg.model.name == "interformer" else "")
        row: Dict[str, Any] = {"name": str(run), "label": label, "model": metrics(logit["test"][:, 0], y["test"], groups)}
        for key, extra in (("plus_item_cf", [cf]), ("plus_all", list(range(len(FEATURES))))):
            xv, xt = (np.concatenate([logit[k], x[k][:, extra]], axis=1) for k in ("valid", "test"))
            row[key] = metrics(fit_logistic(xv, y["valid"])(xt), y["test"], groups)
        row["within_user"] = within_groups(logit["test"][:, 0], within_terms, groups)
        row["within_user_all"] = within_groups(logit["test"][:, 0], all_terms, groups)
        runs.append(row)
        test_logits.setdefault(label, []).append(logit["test"][:, 0])
        print(f"{run}: model AUC {row['model']['auc']:.4f}, + item_cf {row['plus_item_cf']['auc']:.4f}", flush=True)

    averaged = {label: {"runs": len(z), **metrics(np.mean(z, axis=0), y["test"], groups)} for label, z in test_logits.items()}
    write_report(
        args.out,
        "movielens_signals",
        {"single": single, "fits": fits, "positions": positions, "blend": blend, "runs": runs, "averaged": averaged},
        markdown(single, fits, positions, blend, runs, averaged),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
