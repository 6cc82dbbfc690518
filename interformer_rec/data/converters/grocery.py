"""Amazon Grocery and Gourmet Food (ReChorus' 5-core log) -> Parquet, DIN protocol.

Raw files (``raw_dir``, tab-separated, header line first)
--------------------------------------------------------
* ``train.csv``: ``user_id  item_id  time``, one review per line; ``time`` is the
  day-level unix review time. Despite the name it is the whole log.
* ``item_meta.csv``: ``item_id  i_category  ...``; only ``item_id`` and ``i_category``
  are read (the list columns ``r_complement`` / ``r_substitute`` are ignored).

The header names the columns (any order; extra columns are allowed and skipped). A
header without a required column, or naming one twice, is a :class:`ConversionError`
naming the file. A *bad row* (a line with another field count than the header, a
required field that is empty or not a decimal integer, a user / item id below 1, a
category below 0, an item listed twice in ``item_meta.csv``) falls under the
:class:`~interformer_rec.data.converters.convert.BadRowPolicy`: it is reported as
``file:line: column 'name': reason`` (``line`` counts the header as line 1) in
``<out_dir>/bad_rows.txt``, skipped (never repaired), and past the policy's threshold
the conversion fails and writes nothing.

Ids
---
User and item ids are kept as in the files (they are dense: users ``1..14681``, items
``1..8713``); 0 is reserved for padding / unknown. The converter checks that they are
dense (max id at most ``2 * distinct + 16``) and fails otherwise. Categories: the raw
``i_category`` starts at 0 (a real category, 96 % of the items), so ``cat_id =
i_category + 1`` and ``cat_id = 0`` means "no metadata" (also the padding id). Table
sizes are ``max id + 1`` (items: over the log and the metadata). Real data: user 14682,
item 8714, cat 58 (:data:`GROCERY_TABLES`).

Examples (DIN protocol)
-----------------------
Each user's reviews are put in time order; reviews of one user on the same day keep
their order in the file. Review ``k`` of a user (``k = 0, 1, ...``) has the history
``reviews 0..k-1`` of that user: the most recent ``max_len`` of them, oldest first,
most recent last, with their categories as a parallel list; ``log_hist_len`` is
``log(1 + k)`` (the untruncated length). As in DIN, each user's first review
(``k = 0``, an empty history) gives no example. Every other review gives two rows,
written one after the other: the positive (``label`` 1, target = the reviewed item)
and one sampled negative (``label`` 0) with the same user, time and history, whose
target is drawn uniformly from the items *already in the log at that time* (first
reviewed by someone on or before that day) that this user never reviewed, at any time.
Drawing from all of the log's items instead would put items that appear only later
among the training negatives: their embeddings would learn "always 0", and in the
later valid / test periods, where those items are bought, every model ranks them last
(measured: the training-period popularity then scores test AUC 0.53; see
docs/experiments/amazon_grocery.md). Draws: one ``numpy.random.default_rng(seed)``
generator, one draw per example in (user, time, file line) order, a draw hitting an
item the user reviewed redrawn (rejection sampling; see
:func:`interformer_rec.data.converters.amazon._negatives`; a user who reviewed every item of the
log so far, at its very start, draws from all items).

Split (global time)
-------------------
Examples are sorted by (time, file line) and split 80/10/10 (``valid_frac``,
``test_frac``) by time thresholds ``t1 <= t2``: train ``time < t1``, valid ``t1 <= time
< t2``, test ``time >= t2``, where ``t1`` / ``t2`` are the times of the examples at
sorted positions ``int(n * (1 - valid_frac - test_frac))`` / ``int(n * (1 -
test_frac))``. So one day is never in two splits, and the day in which an exact cut
would fall goes whole to the *later* split: train gets at most 80 % (the summary
reports the actual fractions). Rows are written in that time order (never shuffled
across the split; the reader shuffles within a split). Histories may reach back into
earlier splits (they are the past), never forward.

Written: ``label`` (int8), ``user_id`` (int64; the group key for gAUC and a pooled
feature), ``item_id``, ``cat_id`` (int64, the target, sharing the ``item`` / ``cat``
tables with the history), ``hist_item_ids``, ``hist_cat_ids`` (``list<int64>``),
``log_hist_len`` (float32), ``hist_age_days`` (``list<float>``, parallel to the
history: days from each history review to this one, a sequence float), and ``timestamp`` (int64 unix time of the review, not in
the schema: for auditing the split), in row groups of ``row_group_size`` rows, each
file by :class:`~interformer_rec.data.converters.convert.AtomicParquetWriter` (it appears only
when complete). The log is small: it is held in memory as int arrays, every step a
sort or a linear pass (no per-user Python loop).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from interformer_rec.arrays import ConversionError, Jagged, ages_in_days, gather, list_array
from interformer_rec.data.converters.amazon import _negatives
from interformer_rec.data.converters.convert import (
    AtomicParquetWriter,
    BadRowPolicy,
    BadRows,
    PathLike,
    Reasons,
)
from interformer_rec.data.converters.text import Block, parse_int, read_blocks, split, token

log = logging.getLogger(__name__)

LOG_FILE = "train.csv"
META_FILE = "item_meta.csv"
# required columns and the smallest value allowed (None: any integer)
LOG_COLUMNS: Dict[str, Optional[int]] = {"user_id": 1, "item_id": 1, "time": None}
META_COLUMNS: Dict[str, Optional[int]] = {"item_id": 1, "i_category": 0}
# table sizes (max id + 1) of the real log (tests/test_grocery.py recomputes them)
GROCERY_TABLES = {"user": 14682, "item": 8714, "cat": 58}

ARROW_SCHEMA = pa.schema(
    [
        ("label", pa.int8()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("cat_id", pa.int64()),
        ("hist_item_ids", pa.list_(pa.int64())),
        ("hist_cat_ids", pa.list_(pa.int64())),
        ("log_hist_len", pa.float32()),
        ("hist_age_days", pa.list_(pa.float32())),
        ("timestamp", pa.int64()),
    ]
)




# --------------------------------------------------------------------------- reading


@dataclass
class _Columns:
    """Required integer columns of a TSV file: ``values[name] [n]`` int64 and ``lines
    [n]`` (1-based file line) of the good rows; ``read``: data lines read."""

    values: Dict[str, np.ndarray]
    lines: np.ndarray
    read: int


def _header(block: Block, path: Path, columns: Dict[str, Optional[int]]) -> Tuple[Dict[str, int], int]:
    """Position of each required column in the header line, and the field count."""
    if block.too_long[0]:
        raise ConversionError(f"{path}:1: header line too long")
    names = [c.strip() for c in block.text(0, limit=1 << 16).lstrip("\ufeff").split("\t")]
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConversionError(f"{path}:1: header lacks column(s) {missing}; got {names} "
                              f"(expected tab-separated {list(columns)})")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ConversionError(f"{path}:1: header names column(s) {dup} twice")
    return {c: names.index(c) for c in columns}, len(names)


def _parse_block(block: Block, index: Dict[str, int], width: int,
                 columns: Dict[str, Optional[int]]) -> Tuple[Dict[str, np.ndarray], Reasons]:
    """Parse the required columns of a block's lines; the reasons of its bad lines."""
    buf, n = block.buf, len(block)
    f = split(buf, block.starts, block.ends, b"\t")
    r = Reasons(n)
    r.add(block.too_long, lambda i: "line too long")
    r.add(f.counts != width, lambda i: f"{f.counts[i]} tab-separated fields, expected {width}")
    s, e = f.grid(width)
    out: Dict[str, np.ndarray] = {}
    for c, lo in columns.items():
        cs, ce = s[:, index[c]], e[:, index[c]]
        v, ok, empty = parse_int(buf, cs, ce)
        r.add(empty, lambda i, c=c: f"column {c!r}: empty")
        r.add(~ok, lambda i, c=c, cs=cs, ce=ce: f"column {c!r}: {token(buf, cs[i], ce[i])} is not an integer")
        if lo is not None:
            r.add(ok & (v < lo), lambda i, c=c, v=v, lo=lo: f"column {c!r}: {v[i]} < {lo}"
                  + (" (0 is reserved for padding / unknown)" if lo == 1 else ""))
        out[c] = v
    return out, r


def _read_tsv(path: Path, columns: Dict[str, Optional[int]], bad: BadRows, block_bytes: int) -> _Columns:
    """The required integer ``columns`` of the tab-separated ``path`` (header first);
    bad lines are reported to ``bad`` and skipped."""
    parts: Dict[str, List[np.ndarray]] = {c: [] for c in columns}
    lines: List[np.ndarray] = []
    index: Optional[Dict[str, int]] = None
    width, read = 0, 0
    for block in read_blocks(path, block_bytes):
        if index is None:
            index, width = _header(block, path, columns)
            keep = slice(1, None)
            block = Block(block.buf, block.starts[keep], block.ends[keep], block.line0 + 1, block.too_long[keep])
        if not len(block):
            continue
        read += len(block)
        values, r = _parse_block(block, index, width, columns)
        for i in np.flatnonzero(r.bad):
            bad.add(path, int(block.line0 + i), r.reasons[int(i)])
        good = ~r.bad
        for c in columns:
            parts[c].append(values[c][good])
        lines.append(block.lines[good])
    if index is None:
        raise ConversionError(f"{path}: empty file, expected a header line {list(columns)}")
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return _Columns({c: cat(v) for c, v in parts.items()}, cat(lines), read)


def _categories(meta: _Columns, path: Path, bad: BadRows) -> _Columns:
    """``meta`` without the repeated listings of an item (bad rows: the later lines)."""
    item = meta.values["item_id"]
    order = np.lexsort((meta.lines, item))
    repeat = np.r_[False, item[order][1:] == item[order][:-1]]
    if repeat.any():
        first_line = dict(zip(item[order][~repeat].tolist(), meta.lines[order][~repeat].tolist()))
        for k in np.sort(order[repeat]):
            bad.add(path, int(meta.lines[k]), f"column 'item_id': item {item[k]} already listed "
                    f"at line {first_line[int(item[k])]}")
    keep = np.sort(order[~repeat])
    return _Columns({c: v[keep] for c, v in meta.values.items()}, meta.lines[keep], meta.read)


def _check_dense(name: str, ids: np.ndarray, path: Path) -> None:
    """Ids are kept as in the file: refuse sparse ones (tables would be mostly empty)."""
    distinct = len(np.unique(ids))
    if len(ids) and int(ids.max()) > 2 * distinct + 16:
        raise ConversionError(
            f"{path}: {name} ids are not dense small ints (max {int(ids.max())}, {distinct} "
            f"distinct); this converter keeps the file's ids, remap them first")


# --------------------------------------------------------------------------- examples


@dataclass
class _Log:
    """The log sorted by (user, time, file line): ``user, item, ts, line [N]``; ``k
    [N]``: index of the review within its user (= untruncated history length)."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    line: np.ndarray
    k: np.ndarray


def _sorted_log(cols: _Columns) -> _Log:
    """The reviews in (user, time, file line) order, with each one's rank in its user."""
    u, ts, line = cols.values["user_id"], cols.values["time"], cols.lines
    order = np.lexsort((line, ts, u))
    u = u[order]
    pos = np.arange(len(u))
    first = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    k = pos - np.maximum.accumulate(np.where(first, pos, 0)) if len(u) else pos
    return _Log(u, cols.values["item_id"][order], ts[order], line[order], k)


def _items_by_first_review(lg: _Log, num_items: int, times: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The log's items in order of their first review (ties by id), and for each of
    ``times`` (``[Q]``) how many of them had been reviewed on or before it (``[Q]``,
    at least 1 for the time of a review)."""
    first = np.full(num_items, np.iinfo(np.int64).max)
    np.minimum.at(first, lg.item, lg.ts)
    in_log = np.flatnonzero(first < np.iinfo(np.int64).max)
    order = in_log[np.lexsort((in_log, first[in_log]))]
    return order, np.searchsorted(first[order], times, side="right")


def _time_cuts(ts_sorted: np.ndarray, valid_frac: float, test_frac: float) -> Tuple[int, int]:
    """Thresholds ``(t1, t2)`` over the examples' sorted times ``[n]``: train ``< t1``,
    valid ``[t1, t2)``, test ``>= t2`` (the day of an exact cut goes to the later split)."""
    n = len(ts_sorted)
    never = np.iinfo(np.int64).max

    def at(p: int) -> int:
        return int(ts_sorted[p]) if p < n else never

    return at(int(n * (1 - valid_frac - test_frac))), at(int(n * (1 - test_frac)))


def _table(lg: _Log, idx: np.ndarray, neg: np.ndarray, cat_of_item: np.ndarray, max_len: int) -> pa.Table:
    """The rows of examples ``idx`` (``[m]`` positions in ``lg``): per example its
    positive then its negative (``neg [N]``, indexed like ``lg``), ``2m`` rows."""
    lens = np.minimum(lg.k[idx], max_len)
    hist = Jagged(lens, gather(lg.item, idx - lens, lens))  # the user's previous reviews
    pick = np.repeat(np.arange(len(idx)), 2)
    hist = hist.take(pick)
    ages = ages_in_days(lg.ts[idx], Jagged(lens, gather(lg.ts, idx - lens, lens))).take(pick)
    target = np.stack([lg.item[idx], neg[idx]], axis=1).ravel()
    return pa.table(
        {
            "label": pa.array(np.tile(np.array([1, 0], np.int8), len(idx))),
            "user_id": pa.array(lg.user[idx][pick]),
            "item_id": pa.array(target),
            "cat_id": pa.array(cat_of_item[target]),
            "hist_item_ids": list_array(hist),
            "hist_cat_ids": list_array(Jagged(hist.lengths, cat_of_item[hist.values])),
            "log_hist_len": pa.array(np.log1p(lg.k[idx][pick]).astype(np.float32)),
            "hist_age_days": list_array(ages, pa.float32()),
            "timestamp": pa.array(lg.ts[idx][pick]),
        },
        schema=ARROW_SCHEMA,
    )


def _day(t: int) -> str:
    return datetime.fromtimestamp(int(t), timezone.utc).date().isoformat()


def _history_stats(k: np.ndarray, max_len: int) -> Dict[str, Any]:
    """Distribution of the written (truncated) history lengths over the examples."""
    if not len(k):
        return {}
    length = np.minimum(k, max_len)
    return {
        "mean": round(float(length.mean()), 2),
        "median": float(np.median(length)),
        "p90": float(np.percentile(length, 90)),
        "max": int(length.max()),
        "share_at_max_len": round(float(np.mean(k >= max_len)), 4),
        "untruncated_mean": round(float(k.mean()), 2),
    }


# --------------------------------------------------------------------------- convert


def _read_inputs(raw_dir: Path, bad: BadRows, block_bytes: int) -> Tuple[_Columns, _Columns]:
    """Both files' required columns, duplicates of the metadata removed, policy checked."""
    paths = raw_dir / LOG_FILE, raw_dir / META_FILE
    for p in paths:
        if not p.is_file():
            raise ConversionError(f"{p}: no such file (expected {LOG_FILE} and {META_FILE} in {raw_dir})")
    reviews = _read_tsv(paths[0], LOG_COLUMNS, bad, block_bytes)
    meta = _categories(_read_tsv(paths[1], META_COLUMNS, bad, block_bytes), paths[1], bad)
    bad.check(reviews.read + meta.read)
    if not len(reviews.lines):
        raise ConversionError(f"{paths[0]}: no valid reviews")
    _check_dense("user_id", reviews.values["user_id"], paths[0])
    _check_dense("item_id", np.r_[reviews.values["item_id"], meta.values["item_id"]], paths[0])
    return reviews, meta


def _write_splits(out_dir: Path, lg: _Log, neg: np.ndarray, cat_of_item: np.ndarray, max_len: int,
                  valid_frac: float, test_frac: float, row_group_size: int) -> Dict[str, Any]:
    """Write train/valid/test.parquet (atomically, all or none); their summaries."""
    ex = np.flatnonzero(lg.k >= 1)
    ex = ex[np.lexsort((lg.line[ex], lg.ts[ex]))]  # global (time, file line) order
    t1, t2 = _time_cuts(lg.ts[ex], valid_frac, test_frac)
    sel = {"train": lg.ts[ex] < t1, "valid": (lg.ts[ex] >= t1) & (lg.ts[ex] < t2), "test": lg.ts[ex] >= t2}
    step = max(row_group_size // 2, 1)  # examples per row group (two rows each)
    writers: Dict[str, AtomicParquetWriter] = {}
    out: Dict[str, Any] = {}
    try:
        for name, mask in sel.items():
            idx = ex[mask]
            w = writers[name] = AtomicParquetWriter(out_dir / f"{name}.parquet", ARROW_SCHEMA)
            positives = 0
            for lo in range(0, len(idx), step):
                table = _table(lg, idx[lo : lo + step], neg, cat_of_item, max_len)
                positives += int(np.sum(table.column("label").to_numpy()))
                w.write(table)
            out[name] = {
                "path": str(w.path), "rows": w.rows,
                "positive_rate": round(positives / w.rows, 4) if w.rows else None,
                "fraction": round(len(idx) / max(len(ex), 1), 4),
                "first_day": _day(lg.ts[idx[0]]) if len(idx) else None,
                "last_day": _day(lg.ts[idx[-1]]) if len(idx) else None,
            }
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    never = np.iinfo(np.int64).max
    out["split_days"] = [_day(t) if t != never else None for t in (t1, t2)]
    return out


def convert_amazon_grocery(
    raw_dir: PathLike,
    out_dir: PathLike,
    *,
    max_len: int = 100,
    seed: int = 0,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    policy: Optional[BadRowPolicy] = None,
    row_group_size: int = 65536,
    block_bytes: int = 1 << 20,
) -> Dict[str, Any]:
    """Convert ``raw_dir/{train,item_meta}.csv`` to ``out_dir/{train,valid,test}.parquet``
    with the DIN protocol and a global time split (see the module docstring).

    Returns:
        ``{"format", "outputs": {split: {"path", "rows", "positive_rate", "fraction" (of
        the examples), "first_day", "last_day"}}, "split_days" ([t1, t2] as dates),
        "reviews", "examples", "users", "items", "items_in_log", "items_without_meta",
        "tables" ({"user", "item", "cat"}: max id + 1, the schema's sizes), "max_len",
        "seed", "history" (truncated length: mean, median, p90, max, share_at_max_len;
        untruncated_mean), "bad_rows", "bad_rows_report", "first_bad_rows", "seconds"}``.
    """
    t0 = time.perf_counter()
    if max_len < 1 or row_group_size < 2:
        raise ValueError(f"need max_len >= 1 and row_group_size >= 2: {max_len}, {row_group_size}")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 <= valid_frac, test_frac and a sum < 1: {valid_frac}, {test_frac}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "bad_rows.txt"
    report.unlink(missing_ok=True)
    bad = BadRows(policy or BadRowPolicy(), report)
    try:
        reviews, meta = _read_inputs(raw_dir, bad, block_bytes)
    finally:
        bad.close()
    lg = _sorted_log(reviews)
    num_items = int(max(lg.item.max(), meta.values["item_id"].max(initial=0))) + 1
    cat_of_item = np.zeros(num_items, np.int64)
    cat_of_item[meta.values["item_id"]] = meta.values["i_category"] + 1  # 0: no metadata
    in_log = np.unique(lg.item)
    ex = lg.k >= 1
    neg = np.zeros(len(lg.k), np.int64)
    by_first, available = _items_by_first_review(lg, num_items, lg.ts[ex])
    neg[ex] = _negatives(lg.user, lg.item, num_items - 1, np.random.default_rng(seed),
                         query=lg.user[ex], candidates=by_first, limit=available)
    splits = _write_splits(out_dir, lg, neg, cat_of_item, max_len, valid_frac, test_frac, row_group_size)
    split_days = splits.pop("split_days")
    return {
        "format": "amazon_grocery",
        "outputs": splits,
        "split_days": split_days,
        "reviews": int(len(lg.k)),
        "examples": int(ex.sum()),
        "users": int(len(np.unique(lg.user))),
        "items": int(len(np.union1d(in_log, meta.values["item_id"]))),
        "items_in_log": int(len(in_log)),
        "items_without_meta": int(np.sum(cat_of_item[in_log] == 0)),
        "tables": {"user": int(lg.user.max()) + 1, "item": num_items, "cat": int(cat_of_item.max()) + 1},
        "max_len": max_len,
        "seed": seed,
        "history": _history_stats(lg.k[ex], max_len),
        "bad_rows": bad.count,
        "bad_rows_report": str(report) if bad.count else None,
        "first_bad_rows": bad.first,
        "seconds": round(time.perf_counter() - t0, 3),
    }
