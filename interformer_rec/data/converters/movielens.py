"""MovieLens-100K (``u.data``, ``u.user``, ``u.item``) -> Parquet in the project's schema.

One row per rating, label ``rating >= 4``. The behaviour history of a row is the user's
items rated *strictly before* the rating's timestamp, in time order (ties broken by the
order of ``u.data``; a rating never sees itself nor anything at its own or a later
second), most recent last, at most ``max_len`` steps, with the primary genre of each
item as a parallel sequence. Rows are split by time with global cut points: train holds
the earliest ``1 - valid_frac - test_frac`` of the ratings, valid the next
``valid_frac``, test the rest; all rows with one timestamp land in one split, so
``max(train time) < min(valid time) <= max(valid time) < min(test time)``. Histories may
reach into earlier splits (that is the past). Within a file rows are in time order.

Columns: ``label``; dense ``hour_of_day``, ``day_of_week`` (UTC, scaled to [0, 1]),
``log_history`` (log #earlier ratings of the user / log 1000), ``item_age`` (years from
release to rating / 80), ``log_item_count`` (log #earlier ratings of the item / log
1000); sparse ``user_id``, ``age_bucket``, ``gender``, ``occupation``, ``zip_prefix``,
``item_id`` and ``item_genre`` (targets, sharing the ``item`` and ``genre`` tables with
the history), ``item_genres`` (multi-hot), ``release_year``; sequences
``hist_item_ids``, ``hist_genre_ids`` and ``hist_ratings`` (the stars, 1..5, the user
gave each history item: known before the row's time, so no leakage); sequence floats
``hist_stars`` (the same stars as ``float``) and ``hist_age_days`` (days from each
history rating to this one); and ``timestamp`` (unix seconds, not a feature).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from interformer_rec.arrays import Jagged, ages_in_days, gather, list_array
from interformer_rec.data.converters.convert import write_table_atomic
from interformer_rec.data.corating import corating_embeddings

NUM_USERS = 944  # ids 1..943
NUM_ITEMS = 1683  # ids 1..1682
NUM_GENRES = 19  # u.genre, "unknown" = 0
AGE_EDGES = [18, 25, 35, 45, 50, 56]  # MovieLens-1M's age groups
YEAR_EDGES = [1960, 1970, 1980, 1990, 1995, 1996, 1997, 1998]  # bucket 0 = unknown
ROW_GROUP_SIZE = 8192
LOG_SCALE = np.log(1000.0)
DENSE = ["hour_of_day", "day_of_week", "log_history", "item_age", "log_item_count"]




# --------------------------------------------------------------------------- raw files


def _read_ratings(raw_dir: Path) -> Dict[str, np.ndarray]:
    names = ["user", "item", "rating", "ts"]
    table = pacsv.read_csv(
        raw_dir / "u.data",
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.int64() for n in names}),
    )
    return {n: table.column(n).to_numpy() for n in names}


def _lines(path: Path) -> List[List[str]]:
    text = path.read_text(encoding="latin-1")
    return [line.split("|") for line in text.splitlines() if line.strip()]


def _read_users(raw_dir: Path) -> Dict[str, np.ndarray]:
    """Per-user attribute arrays of length NUM_USERS, indexed by user id."""
    occupations = [r[0] for r in _lines(raw_dir / "u.occupation")]
    keys = ("age_bucket", "gender", "occupation", "zip_prefix")
    out = {k: np.zeros(NUM_USERS, np.int64) for k in keys}
    for uid, age, gender, occ, zip_code in _lines(raw_dir / "u.user"):
        u = int(uid)
        out["age_bucket"][u] = np.searchsorted(AGE_EDGES, int(age), side="right")
        out["gender"][u] = int(gender == "F")
        out["occupation"][u] = occupations.index(occ)
        out["zip_prefix"][u] = int(zip_code[0]) if zip_code[:1].isdigit() else 10
    return out


def _read_items(raw_dir: Path) -> Tuple[Dict[str, np.ndarray], Jagged]:
    """Per-item arrays of length NUM_ITEMS (``genre``: first listed genre, ``year``
    bucket, ``release`` unix time or -1), and the multi-hot genres, one row per item id."""
    genre = np.zeros(NUM_ITEMS, np.int64)
    year = np.zeros(NUM_ITEMS, np.int64)
    release = np.full(NUM_ITEMS, -1, np.int64)
    flags = np.zeros((NUM_ITEMS, NUM_GENRES), bool)
    for fields in _lines(raw_dir / "u.item"):
        i = int(fields[0])
        flags[i] = [f == "1" for f in fields[5 : 5 + NUM_GENRES]]
        genre[i] = int(np.argmax(flags[i]))
        if fields[2]:
            date = datetime.strptime(fields[2], "%d-%b-%Y").replace(tzinfo=timezone.utc)
            release[i] = int(date.timestamp())
            year[i] = 1 + np.searchsorted(YEAR_EDGES, date.year, side="right")
    rows, cols = np.nonzero(flags)
    genres = Jagged(np.bincount(rows, minlength=NUM_ITEMS), cols.astype(np.int64))
    return {"genre": genre, "year": year, "release": release}, genres


# --------------------------------------------------------------------------- history


def _earlier(key: np.ndarray, ts: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row, the rows of the same ``key`` strictly earlier in time.

    Args:
        key: ``[N]`` group of each row (user or item).
        ts: ``[N]`` timestamps.
    Returns:
        ``order [N]``: rows sorted by (key, ts, row index); and, per position of that
        order, ``group_start [N]`` and ``run_start [N]``: the positions where the key's
        rows and the rows of the same (key, ts) begin. Positions
        ``[group_start, run_start)`` are exactly the same key's strictly earlier rows.
    """
    order = np.lexsort((np.arange(len(key)), ts, key))
    k, t = key[order], ts[order]
    new_group = np.r_[True, k[1:] != k[:-1]]
    new_run = new_group | np.r_[True, t[1:] != t[:-1]]
    pos = np.arange(len(key))
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    run_start = np.maximum.accumulate(np.where(new_run, pos, 0))
    return order, group_start, run_start


def _histories(r: Dict[str, np.ndarray], max_len: int) -> Tuple[Jagged, np.ndarray]:
    """Each rating's history as rows of ``r`` (the user's earlier ratings, most recent
    last, at most ``max_len``) in the row order of ``r``, and its untruncated length
    ``[N]``."""
    order, group_start, run_start = _earlier(r["user"], r["ts"])
    n_earlier = run_start - group_start
    length = np.minimum(n_earlier, max_len)
    hist = Jagged(length, gather(order, run_start - length, length))  # `order` rows
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return hist.take(back), n_earlier[back]


# --------------------------------------------------------------------------- convert


def _split_bounds(ts: np.ndarray, valid_frac: float, test_frac: float) -> Tuple[int, int]:
    """Timestamps ``(t1, t2)``: train ``ts < t1``, valid ``t1 <= ts < t2``, test ``ts >= t2``."""
    s = np.sort(ts)
    n = len(s)
    return int(s[int(n * (1 - valid_frac - test_frac))]), int(s[int(n * (1 - test_frac))])


def convert_movielens(
    raw_dir: Path,
    out_dir: Path,
    max_len: int = 50,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    corating_dim: int = 16,
) -> Dict[str, Any]:
    """Convert MovieLens-100K in ``raw_dir`` to ``{train,valid,test}.parquet`` in
    ``out_dir`` (see the module docstring for the columns and the split), and write
    ``item_corating{corating_dim}.npy``: co-rating item embeddings of the training split
    (:func:`interformer_rec.data.corating.corating_embeddings`), the ``init`` of the
    ``item`` table in ``configs/movielens.yaml``.

    Returns:
        ``{"out_dir", "max_len", "split_times", "corating", "splits": {split: {"path",
        "rows", "positive_rate", "first", "last"}}}`` (``first``/``last``: ISO times, UTC).
    """
    if not (valid_frac > 0 and test_frac > 0 and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 < valid_frac, test_frac, sum < 1: {valid_frac}, {test_frac}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    for name in ("u.data", "u.user", "u.item", "u.occupation"):
        if not (raw_dir / name).is_file():
            raise FileNotFoundError(f"{raw_dir / name}: MovieLens-100K file missing")
    out_dir.mkdir(parents=True, exist_ok=True)

    r = _read_ratings(raw_dir)
    label = (r["rating"] >= 4).astype(np.int8)
    table = _columns(r, label, _read_users(raw_dir), *_read_items(raw_dir), max_len)
    ts = r["ts"]
    time_order = np.lexsort((np.arange(len(ts)), ts))
    t1, t2 = _split_bounds(ts, valid_frac, test_frac)
    cuts = np.searchsorted(ts[time_order], [t1, t2])
    bounds = {"train": (0, cuts[0]), "valid": (cuts[0], cuts[1]), "test": (cuts[1], len(ts))}
    splits = {
        split: _write_split(table.take(pa.array(time_order[lo:hi])), out_dir / f"{split}.parquet")
        for split, (lo, hi) in bounds.items()
    }
    train_rows = time_order[: cuts[0]]
    corating = out_dir / f"item_corating{corating_dim}.npy"
    user, item = r["user"][train_rows], r["item"][train_rows]
    tmp = corating.with_name(f".{corating.name}.{os.getpid()}.tmp")  # renamed when whole, as the splits are
    with open(tmp, "wb") as f:
        np.save(f, corating_embeddings(user, item, label[train_rows], NUM_USERS, NUM_ITEMS, corating_dim))
    os.replace(tmp, corating)
    return {
        "out_dir": str(out_dir),
        "max_len": max_len,
        "split_times": [_iso(t1), _iso(t2)],
        "corating": str(corating),
        "splits": splits,
    }


def _iso(t: int) -> str:
    return datetime.fromtimestamp(int(t), timezone.utc).isoformat()


def _columns(
    r: Dict[str, np.ndarray],
    label: np.ndarray,
    users: Dict[str, np.ndarray],
    items: Dict[str, np.ndarray],
    item_genres: Jagged,
    max_len: int,
) -> pa.Table:
    """Every column of the module docstring, one row per rating (file order)."""
    user, item, ts = r["user"], r["item"], r["ts"]
    hist_rows, n_history = _histories(r, max_len)
    hist_items = Jagged(hist_rows.lengths, item[hist_rows.values])
    hist_stars = r["rating"][hist_rows.values]
    order, group_start, run_start = _earlier(item, ts)
    n_item_earlier = np.empty_like(order)
    n_item_earlier[order] = run_start - group_start
    release = items["release"][item]
    item_age = np.where(release >= 0, np.clip((ts - release) / (365.25 * 86400), 0, 80) / 80, 0)
    cols: Dict[str, pa.Array] = {
        "label": pa.array(label),
        "hour_of_day": pa.array(((ts % 86400) // 3600 / 23).astype(np.float32)),
        "day_of_week": pa.array(((ts // 86400 + 3) % 7 / 6).astype(np.float32)),  # Monday 0
        "log_history": pa.array((np.log1p(n_history) / LOG_SCALE).astype(np.float32)),
        "item_age": pa.array(item_age.astype(np.float32)),
        "log_item_count": pa.array((np.log1p(n_item_earlier) / LOG_SCALE).astype(np.float32)),
        "user_id": pa.array(user),
        **{k: pa.array(v[user]) for k, v in users.items()},
        "item_id": pa.array(item),
        "item_genre": pa.array(items["genre"][item]),
        "item_genres": list_array(item_genres.take(item)),
        "release_year": pa.array(items["year"][item]),
        "hist_item_ids": list_array(hist_items),
        "hist_genre_ids": list_array(Jagged(hist_items.lengths, items["genre"][hist_items.values])),
        "hist_ratings": list_array(Jagged(hist_rows.lengths, hist_stars)),
        "hist_stars": list_array(Jagged(hist_rows.lengths, hist_stars.astype(np.float32)), pa.float32()),
        "hist_age_days": list_array(ages_in_days(ts, Jagged(hist_rows.lengths, ts[hist_rows.values])), pa.float32()),
        "timestamp": pa.array(ts),
    }
    return pa.table(cols)


def _write_split(part: pa.Table, path: Path) -> Dict[str, Any]:
    """Write one split (rows in time order); its summary."""
    write_table_atomic(part, path, ROW_GROUP_SIZE)
    labels = part.column("label").to_numpy()
    ts = part.column("timestamp").to_numpy()
    n = part.num_rows
    return {
        "path": str(path),
        "rows": n,
        "positive_rate": round(float(labels.mean()), 4) if n else None,
        "first": _iso(ts[0]) if n else None,
        "last": _iso(ts[-1]) if n else None,
    }
