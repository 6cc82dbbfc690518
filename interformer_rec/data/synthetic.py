"""Synthetic CTR data with a planted, known click model.

A fixed *world* (drawn once from the seed) holds users (a segment, a preference over
item categories, and the multi-hot list of their main interests), items (a category and
a popularity bias) and per-context parameters. Each row is one impression: a user, a
context (e.g. time of day), dense floats, a behaviour history of 0..max_len
(item, category) events, most recent last, and a target item. The recent part of a
history follows a per-row *session* category that nothing but the history reveals.

The click logit is ``b0 + sum`` of

a. non-sequence crosses: ``seg_cat[segment, target category]`` (user segment x item
   category), ``ctx_dense[context] . dense`` (context x dense), ``dense_0 * dense_1``,
   and the target item's popularity bias;
b. target x history: ``1.5 * [target item occurs in the history]``;
c. context x history: ``gain[context] * tanh(sum over history steps whose category is
   the target's of exp(-age / tau[context]))`` (``age`` = 0 for the most recent step):
   in a context with small ``tau`` only a match among the last few events counts, in one
   with large ``tau`` a match anywhere in the history does.

``b0`` is set (by bisection on a fixed calibration sample) so that the click rate is
``cfg.positive_rate``. The label is drawn from ``true_prob = sigmoid(logit)``, which is
written beside it, so the oracle AUC (the ceiling no model can beat) is known. With ``conversion: true`` a second task ``convert`` is planted on top of the click: a
clicked impression converts with probability ``q = sigmoid(c0 + conv_cat[target
category] + 0.8 * dense_last + 1.0 * [target item occurs in the history])`` (``c0``
calibrated to a mean ``q`` of :data:`CONVERSION_RATE`), an unclicked one never, so the
true conversion probability ``true_prob * q`` (written as ``true_prob_convert``) is its
oracle. The click columns do not change when the option is turned on. Targets
are drawn from the history often enough (re-engagement, session category) that the
history carries much of the signal. Everything is vectorised numpy and deterministic in
``cfg.seed``; each split has its own stream, so a split does not change when another
split's size does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from interformer_rec.arrays import Jagged, list_array
from interformer_rec.config import (
    Schema,
    SequenceFeature,
    SparseFeature,
    SyntheticConfig,
    TableConfig,
)
from interformer_rec.data.converters.convert import write_table_atomic
from interformer_rec.data.reader import oracle_auc

LABEL = "click"
ORACLE = "true_prob"
CONVERT = "convert"
CONVERT_ORACLE = "true_prob_convert"
CONVERSION_RATE = 0.3  # mean conversion probability of a click
ITEM_MATCH_WEIGHT = 1.5
SESSION_PROB = 0.8  # chance that the most recent step follows the session category
SESSION_DECAY = 3.0  # ... decaying as exp(-age / SESSION_DECAY) with the step's age
CALIBRATION_ROWS = 20000


def dense_names(cfg: SyntheticConfig) -> list[str]:
    return [f"dense_{i}" for i in range(cfg.num_dense)]


def synthetic_schema(cfg: SyntheticConfig) -> Schema:
    """The schema of the files :func:`generate` writes for ``cfg``."""
    return Schema(
        labels=[LABEL, CONVERT] if cfg.conversion else [LABEL],
        dense=dense_names(cfg),
        sparse=[
            SparseFeature("user_id", "user"),
            SparseFeature("user_segment", "segment"),
            SparseFeature("user_interests", "interest"),
            SparseFeature("context", "context"),
            SparseFeature("item_id", "item"),
            SparseFeature("item_category", "category"),
        ],
        sequence=[
            SequenceFeature("hist_item_ids", "item", cfg.max_len),
            SequenceFeature("hist_cat_ids", "category", cfg.max_len),
        ],
        tables=[
            TableConfig("user", cfg.num_users),
            TableConfig("segment", cfg.num_segments),
            TableConfig("interest", cfg.num_categories),
            TableConfig("context", cfg.num_contexts),
            TableConfig("item", cfg.num_items),
            TableConfig("category", cfg.num_categories),
        ],
        group_key="user_id",
        oracle=ORACLE,
        task_oracles={CONVERT: CONVERT_ORACLE} if cfg.conversion else {},
        id_policy="reject",
    )


@dataclass
class World:
    """The fixed entities and click-model parameters shared by all splits."""

    item_cat: np.ndarray  # [I] category of each item
    items_by_cat: np.ndarray  # [I] item ids sorted by category
    cat_start: np.ndarray  # [C] first position of each category in items_by_cat
    cat_count: np.ndarray  # [C] items per category
    item_bias: np.ndarray  # [I] popularity bias
    user_seg: np.ndarray  # [U] segment of each user
    user_cdf: np.ndarray  # [U, C] cumulative category preference, + user index
    interests: Jagged  # U rows: the user's main categories, strongest first
    seg_cat: np.ndarray  # [S, C] segment x category logit
    ctx_dense: np.ndarray  # [X, D] context x dense weights
    ctx_tau: np.ndarray  # [X] recency scale of the history match
    ctx_gain: np.ndarray  # [X] weight of the history match


def make_world(cfg: SyntheticConfig) -> World:
    if cfg.num_items < cfg.num_categories:
        raise ValueError("synthetic: num_items must be >= num_categories")
    if not 0 <= cfg.min_len <= cfg.max_len or cfg.max_len < 1:
        raise ValueError("synthetic: need 0 <= min_len <= max_len and max_len >= 1")
    if cfg.length_dist == "lognormal" and not (cfg.mean_len > 0 and cfg.length_sigma > 0):
        raise ValueError("synthetic: a lognormal length_dist needs mean_len > 0 and length_sigma > 0")
    rng = np.random.default_rng([cfg.seed, 0])
    n_cat, n_user = cfg.num_categories, cfg.num_users
    item_cat = rng.permutation(np.arange(cfg.num_items) % n_cat)
    items_by_cat = np.argsort(item_cat, kind="stable")
    cat_count = np.bincount(item_cat, minlength=n_cat)
    pref = rng.dirichlet(np.full(n_cat, 0.2), size=n_user)
    order = np.argsort(-pref, axis=1, kind="stable")
    strong = np.take_along_axis(pref, order, axis=1) >= 0.2
    return World(
        item_cat=item_cat,
        items_by_cat=items_by_cat,
        cat_start=np.concatenate([[0], np.cumsum(cat_count)[:-1]]),
        cat_count=cat_count,
        item_bias=rng.normal(0.0, 0.3, cfg.num_items),
        user_seg=rng.integers(0, cfg.num_segments, n_user),
        user_cdf=np.cumsum(pref, axis=1) + np.arange(n_user)[:, None],
        interests=Jagged(strong.sum(1), order[strong]),
        seg_cat=rng.normal(0.0, 0.8, (cfg.num_segments, n_cat)),
        ctx_dense=rng.normal(0.0, 0.5, (cfg.num_contexts, cfg.num_dense)),
        ctx_tau=rng.permutation(np.geomspace(1.0, cfg.max_len, cfg.num_contexts)),
        ctx_gain=rng.uniform(1.5, 3.0, cfg.num_contexts),
    )


def _item_in(world: World, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A uniform item of category ``cat`` (any shape), from uniforms ``u`` in [0, 1)."""
    k = np.minimum((u * world.cat_count[cat]).astype(np.int64), world.cat_count[cat] - 1)
    return world.items_by_cat[world.cat_start[cat] + k]


def _preferred(world: World, user: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categories drawn from each user's preference, by inverse CDF: ``user [n]``,
    ``u [n, ...]`` uniforms -> categories of ``u``'s shape."""
    n_cat = world.user_cdf.shape[1]
    row = user.reshape(user.shape + (1,) * (u.ndim - 1))
    pos = np.searchsorted(world.user_cdf.ravel(), row + u, side="right")
    return np.clip(pos - row * n_cat, 0, n_cat - 1)


TERMS = (
    "segment x category",
    "context x dense",
    "item bias",
    "item in history",
    "category match x recency",
    "dense_0 x dense_1",
)


def logit_terms(
    world: World,
    cfg: SyntheticConfig,
    segment: np.ndarray,
    ctx: np.ndarray,
    dense: np.ndarray,
    item: np.ndarray,
    hist_item: np.ndarray,
    hist_cat: np.ndarray,
    valid: np.ndarray,
) -> Dict[str, np.ndarray]:
    """The planted click logit without ``b0``, term by term (keys :data:`TERMS`).

    Args:
        segment, ctx, item: ``[n]`` ids. dense: ``[n, num_dense]``.
        hist_item, hist_cat: ``[n, T]`` left-aligned histories (most recent last).
        valid: ``[n, T]`` bool, True at real steps.

    Returns:
        ``{term: [n] float}``; their sum is the logit less ``b0``.
    """
    T = valid.shape[1]
    age = np.where(valid, valid.sum(1, keepdims=True) - 1 - np.arange(T), 0)  # 0 = most recent
    item_cat = world.item_cat[item]
    w = np.exp(-age / world.ctx_tau[ctx][:, None]) * valid
    cat_match = np.tanh((w * (hist_cat == item_cat[:, None])).sum(1))
    n = len(item)
    return dict(zip(TERMS, (
        world.seg_cat[segment, item_cat],
        (world.ctx_dense[ctx] * dense).sum(1),
        world.item_bias[item],
        ITEM_MATCH_WEIGHT * ((hist_item == item[:, None]) & valid).any(1),
        world.ctx_gain[ctx] * cat_match,
        0.5 * dense[:, 0] * dense[:, 1] if cfg.num_dense >= 2 else np.zeros(n),
    )))


def table_logit_terms(table: pa.Table, cfg: SyntheticConfig) -> Dict[str, np.ndarray]:
    """:func:`logit_terms` of the rows of a table :func:`generate` wrote for ``cfg``,
    rebuilt from its columns (for diagnosing what a trained model has learned)."""
    world = make_world(cfg)
    col = lambda name: table.column(name).to_numpy()  # noqa: E731
    lengths = pa.compute.list_value_length(table.column("hist_item_ids")).to_numpy(zero_copy_only=False)
    valid = np.arange(cfg.max_len) < lengths[:, None]

    def grid(name: str) -> np.ndarray:
        out = np.zeros(valid.shape, dtype=np.int64)
        out[valid] = pa.compute.list_flatten(table.column(name)).to_numpy()
        return out

    dense = np.stack([col(c) for c in dense_names(cfg)], axis=1).astype(np.float64)
    return logit_terms(world, cfg, col("user_segment"), col("context"), dense, col("item_id"),
                       grid("hist_item_ids"), grid("hist_cat_ids"), valid)


def history_lengths(cfg: SyntheticConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` int64 history lengths: uniform on ``[min_len, max_len]``, or log-normal
    with mean ``mean_len`` (before clipping) and shape ``length_sigma``, rounded and
    clipped to ``[min_len, max_len]`` (``cfg.length_dist``)."""
    if cfg.length_dist == "uniform":
        return rng.integers(cfg.min_len, cfg.max_len + 1, n)
    mu = np.log(cfg.mean_len) - cfg.length_sigma**2 / 2
    return np.clip(np.rint(rng.lognormal(mu, cfg.length_sigma, n)), cfg.min_len, cfg.max_len).astype(np.int64)


def _impressions(
    world: World, cfg: SyntheticConfig, n: int, rng: np.random.Generator
) -> Dict[str, Any]:
    """``n`` impressions: features, the history grid and the logit without ``b0``."""
    T, C = cfg.max_len, cfg.num_categories
    user = rng.integers(0, cfg.num_users, n)
    ctx = rng.integers(0, cfg.num_contexts, n)
    dense = rng.normal(0.0, 1.0, (n, cfg.num_dense)).astype(np.float32)
    length = history_lengths(cfg, n, rng)
    valid = np.arange(T) < length[:, None]  # [n, T], step t of a row is real if t < length
    age = np.where(valid, length[:, None] - 1 - np.arange(T), 0)  # 0 = most recent

    session = rng.integers(0, C, n)
    from_session = rng.random((n, T)) < SESSION_PROB * np.exp(-age / SESSION_DECAY)
    hist_cat = np.where(from_session, session[:, None], _preferred(world, user, rng.random((n, T))))
    hist_item = _item_in(world, hist_cat, rng.random((n, T)))

    # target: an item of the history (20%), an item of a history step's category (30%),
    # else an item of a preferred (25%) or uniform (25%) category
    mode = rng.random(n)
    step = np.minimum((rng.random(n) * length).astype(np.int64), np.maximum(length - 1, 0))
    rows = np.arange(n)
    has = length > 0
    cat = np.where(mode < 0.75, _preferred(world, user, rng.random(n)), rng.integers(0, C, n))
    cat = np.where(has & (mode < 0.5), hist_cat[rows, step], cat)
    item = _item_in(world, cat, rng.random(n))
    item = np.where(has & (mode < 0.2), hist_item[rows, step], item)
    item_cat = world.item_cat[item]

    terms = logit_terms(world, cfg, world.user_seg[user], ctx, dense, item, hist_item, hist_cat, valid)
    logit = sum(terms.values())
    return dict(
        user=user, ctx=ctx, dense=dense, length=length, valid=valid,
        hist_item=hist_item, hist_cat=hist_cat, item=item, item_cat=item_cat, logit=logit,
        repeat=terms["item in history"] > 0,
    )


def conversion_logit(cfg: SyntheticConfig, imp: Dict[str, Any]) -> np.ndarray:
    """The planted conversion logit of clicked impressions, without ``c0``: ``[n]``.
    Its parameters come from their own stream, so the click world is unchanged."""
    conv_cat = np.random.default_rng([cfg.seed, 3]).normal(0.0, 1.0, cfg.num_categories)
    dense_last = imp["dense"][:, -1] if cfg.num_dense else np.zeros(len(imp["item"]))
    return conv_cat[imp["item_cat"]] + 0.8 * dense_last + 1.0 * imp["repeat"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _intercept(logit: np.ndarray, rate: float) -> float:
    """``b`` with ``mean(sigmoid(logit + b)) == rate``, by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < rate else (lo, mid)
    return (lo + hi) / 2


def _table(
    world: World, cfg: SyntheticConfig, imp: Dict[str, Any], b0: float, c0: float, rng: np.random.Generator,
    conv_rng: np.random.Generator,
) -> pa.Table:
    prob = _sigmoid(imp["logit"] + b0)
    click = (rng.random(len(prob)) < prob).astype(np.int8)
    interests = world.interests.take(imp["user"])
    cols: Dict[str, pa.Array] = {LABEL: pa.array(click), ORACLE: pa.array(prob)}
    if cfg.conversion:
        q = _sigmoid(conversion_logit(cfg, imp) + c0)
        convert = (click == 1) & (conv_rng.random(len(q)) < q)
        cols.update({CONVERT: pa.array(convert.astype(np.int8)), CONVERT_ORACLE: pa.array(prob * q)})
    cols.update({name: pa.array(imp["dense"][:, i]) for i, name in enumerate(dense_names(cfg))})
    cols.update(
        user_id=pa.array(imp["user"]),
        user_segment=pa.array(world.user_seg[imp["user"]]),
        user_interests=list_array(interests),
        context=pa.array(imp["ctx"]),
        item_id=pa.array(imp["item"]),
        item_category=pa.array(imp["item_cat"]),
        hist_item_ids=list_array(Jagged(imp["length"], imp["hist_item"][imp["valid"]])),
        hist_cat_ids=list_array(Jagged(imp["length"], imp["hist_cat"][imp["valid"]])),
    )
    return pa.table(cols)


def generate(cfg: SyntheticConfig, out_dir: Path) -> Dict[str, Any]:
    """Write ``<split>.parquet`` for each split of ``cfg.rows`` (row groups of
    ``cfg.row_group_size``) into ``out_dir``.

    Returns:
        ``{"out_dir", "intercept", "splits": {split: {"path", "rows",
        "positive_rate", "mean_true_prob", "oracle_auc"}}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = make_world(cfg)
    calib = _impressions(world, cfg, CALIBRATION_ROWS, np.random.default_rng([cfg.seed, 1]))
    b0 = _intercept(calib["logit"], cfg.positive_rate)
    c0 = _intercept(conversion_logit(cfg, calib), CONVERSION_RATE)
    schema = synthetic_schema(cfg)
    splits: Dict[str, Any] = {}
    for split, n in cfg.rows.items():
        crc = zlib.crc32(split.encode())
        rng = np.random.default_rng([cfg.seed, 2, crc])
        imp = _impressions(world, cfg, n, rng)
        table = _table(world, cfg, imp, b0, c0, rng, np.random.default_rng([cfg.seed, 4, crc]))
        path = out_dir / f"{split}.parquet"
        write_table_atomic(table, path, cfg.row_group_size)
        oracles = oracle_auc(path, schema)
        splits[split] = {
            "path": str(path),
            "rows": n,
            **{
                f"positive_rate{'' if t == LABEL else '_' + t}": round(float(table.column(t).to_numpy().mean()), 4)
                for t in schema.labels
            },
            "mean_true_prob": round(float(table.column(ORACLE).to_numpy().mean()), 4),
            **{f"oracle_auc{'' if t == LABEL else '_' + t}": round(v, 4) for t, v in oracles.items()},
        }
    return {"out_dir": str(out_dir), "intercept": round(b0, 4), "splits": splits}
