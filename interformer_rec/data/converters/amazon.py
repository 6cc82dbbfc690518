"""Amazon (Electronics) in DIN's form -> Parquet in the project's schema.

DIN form (``convert_amazon_din``)
---------------------------------
One example per line, ``history_items;history_cats;target_item;target_cat;label``: the
user's reviewed items and their categories (space-separated, oldest first, so the most
recent is last), the target item and its category, and the label (1: the user's next
item, 0: a sampled negative). Ids are DIN's remapped ids, checked against the table
sizes (``num_items``, ``num_cats``; DIN's Electronics sizes by default).

Written: ``label`` (int8), ``item_id``, ``cat_id`` (int64, the targets, sharing the
``item`` / ``cat`` tables with the history), ``hist_item_ids``, ``hist_cat_ids``
(``list<int64>``), and ``log_hist_len`` (float32 ``log(1 + history length)``: the
form has no dense feature, and the untruncated length is one). An empty history is
allowed (both lists empty). Bad rows: not exactly 5 fields, a malformed or
out-of-range id, lists of unequal lengths, a missing target, a label not in {0, 1}.

From raw reviews (``build_amazon_din``)
---------------------------------------
What DIN's scripts do from the McAuley review dumps, with our ids: ``reviews`` is the
JSON-lines review file (``reviewerID``, ``asin``, ``unixReviewTime`` per line; e.g.
``reviews_Electronics_5.json``), ``meta`` the item metadata (``asin``, ``categories``,
one JSON or Python-literal dict per line; the item's category is the last entry of its
first category path). A streaming pass over each file builds the vocabularies (ids from
1 in sorted order of the raw strings; 0 is padding/unknown, e.g. an item without
metadata) and keeps ``(user, item, time)`` as int arrays (24 bytes per review: bounded
by the review count, not the text size). Per user, in time order, each review ``i >= 1``
gives a positive example (history = the previous at most ``max_len`` items, target =
the item) and a negative (same history, target = an item drawn uniformly from the items
the user never reviewed, from ``seed``). As in DIN, each user's last review goes to
``test.parquet``, the others to ``train.parquet``. Beside the DIN form's columns it
writes ``user_id`` and ``hist_age_days`` (``list<float>``, parallel to the history: days
from each history review to this one, a sequence float). Malformed lines of either file
fall under the bad-row policy.
"""

from __future__ import annotations

import ast
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import pyarrow as pa

from interformer_rec.arrays import ConversionError, Jagged, ages_in_days, gather, list_array
from interformer_rec.data.converters.convert import (
    AtomicParquetWriter,
    BadRowPolicy,
    BadRows,
    Parsed,
    PathLike,
    Reasons,
    TextFormat,
    convert_text,
)
from interformer_rec.data.converters.text import (
    Block,
    parse_int,
    parse_int_lists,
    parse_label,
    read_blocks,
    split,
    token,
)

log = logging.getLogger(__name__)

# DIN's Amazon Electronics vocabulary sizes (item_count, cate_count in its scripts)
DIN_NUM_ITEMS = 63001
DIN_NUM_CATS = 801

ARROW_SCHEMA = pa.schema(
    [
        ("label", pa.int8()),
        ("log_hist_len", pa.float32()),
        ("item_id", pa.int64()),
        ("cat_id", pa.int64()),
        ("hist_item_ids", pa.list_(pa.int64())),
        ("hist_cat_ids", pa.list_(pa.int64())),
    ]
)




class DINFormat(TextFormat):
    """``history_items;history_cats;target_item;target_cat;label`` lines."""

    name = "amazon_din"
    schema = ARROW_SCHEMA
    label = "label"

    def __init__(self, num_items: int = DIN_NUM_ITEMS, num_cats: int = DIN_NUM_CATS) -> None:
        self.num_items = num_items
        self.num_cats = num_cats

    def parse(self, block: Block) -> Parsed:
        buf, n = block.buf, len(block)
        f = split(buf, block.starts, block.ends, b";")
        r = Reasons(n)
        r.add(f.counts != 5, lambda i: f"{f.counts[i]} ';'-separated fields, expected 5")
        s, e = f.grid(5)
        items, items_bad, items_first = parse_int_lists(buf, s[:, 0], e[:, 0], b" ")
        cats, cats_bad, cats_first = parse_int_lists(buf, s[:, 1], e[:, 1], b" ")
        r.add(items_bad, lambda i: f"history item {items_first[i] + 1} is not an integer id ({token(buf, s[i, 0], e[i, 0])})")
        r.add(cats_bad, lambda i: f"history category {cats_first[i] + 1} is not an integer id ({token(buf, s[i, 1], e[i, 1])})")
        r.add(items.lengths != cats.lengths,
              lambda i: f"history has {items.lengths[i]} items but {cats.lengths[i]} categories")
        item, item_ok, _ = parse_int(buf, s[:, 2], e[:, 2])
        cat, cat_ok, _ = parse_int(buf, s[:, 3], e[:, 3])
        y, y_ok = parse_label(buf, s[:, 4], e[:, 4])
        r.add(~item_ok, lambda i: f"target item {token(buf, s[i, 2], e[i, 2])} is not an integer id")
        r.add(~cat_ok, lambda i: f"target category {token(buf, s[i, 3], e[i, 3])} is not an integer id")
        r.add(~y_ok, lambda i: f"label {token(buf, s[i, 4], e[i, 4])} is not 0 or 1")
        row_items = np.repeat(np.arange(n), items.lengths)
        row_cats = np.repeat(np.arange(n), cats.lengths)
        for name, vals, rows, size in (
            ("history item", items.values, row_items, self.num_items),
            ("history category", cats.values, row_cats, self.num_cats),
        ):
            out = (vals < 0) | (vals >= size)
            bad = np.bincount(rows[out], minlength=n) > 0
            first = np.full(n, -1, np.int64)
            pos = np.flatnonzero(out)[::-1]
            first[rows[pos]] = vals[pos]
            r.add(bad, lambda i, name=name, first=first, size=size: f"{name} id {first[i]} outside [0, {size})")
        r.add(item_ok & ((item < 0) | (item >= self.num_items)),
              lambda i: f"target item id {item[i]} outside [0, {self.num_items})")
        r.add(cat_ok & ((cat < 0) | (cat >= self.num_cats)),
              lambda i: f"target category id {cat[i]} outside [0, {self.num_cats})")
        keep = np.flatnonzero(~r.bad)
        h_items, h_cats = items.take(keep), cats.take(keep)
        table = pa.table(
            {
                "label": pa.array(y[keep].astype(np.int8)),
                "log_hist_len": pa.array(np.log1p(h_items.lengths).astype(np.float32)),
                "item_id": pa.array(item[keep]),
                "cat_id": pa.array(cat[keep]),
                "hist_item_ids": list_array(h_items),
                "hist_cat_ids": list_array(h_cats),
            },
            schema=ARROW_SCHEMA,
        )
        return Parsed(table, r.bad, r.reasons)


def convert_amazon_din(
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    num_items: int = DIN_NUM_ITEMS,
    num_cats: int = DIN_NUM_CATS,
    policy: Optional[BadRowPolicy] = None,
    **kw: Any,
) -> Dict[str, Any]:
    """Convert DIN-form Amazon file(s) (see the module docstring); keywords as in
    :func:`~interformer_rec.data.converters.convert.convert_text`."""
    return convert_text(DINFormat(num_items, num_cats), inputs, out_dir, policy=policy, **kw)


# --------------------------------------------------------------------------- raw reviews


def _json_lines(path: Path, bad: BadRows, block_bytes: int) -> Any:
    """``(line number, dict)`` of each line of ``path`` (JSON, or a Python literal as in
    the McAuley ``meta_*.json`` dumps); other lines are bad rows."""
    for block in read_blocks(path, block_bytes):
        for i in range(len(block)):
            line = int(block.line0 + i)
            if block.too_long[i]:
                bad.add(path, line, "line too long")
                continue
            raw = block.buf[block.starts[i] : block.ends[i]].tobytes()
            if not raw.strip():
                bad.add(path, line, "empty line")
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                try:
                    obj = ast.literal_eval(raw.decode("utf-8"))
                except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
                    bad.add(path, line, f"not a JSON object: {token(block.buf, block.starts[i], block.ends[i])}")
                    continue
            if not isinstance(obj, dict):
                bad.add(path, line, "not a JSON object")
                continue
            yield line, obj


def _vocab(values: List[str]) -> Tuple[Dict[str, int], np.ndarray]:
    """Ids from 1 in sorted order of the distinct strings; ``[n]`` ids of ``values``."""
    uniq = sorted(set(values))
    ids = {v: i + 1 for i, v in enumerate(uniq)}
    return ids, np.fromiter((ids[v] for v in values), np.int64, len(values))


def _negatives(
    user: np.ndarray, item: np.ndarray, num_items: int, rng: np.random.Generator,
    *, query: Optional[np.ndarray] = None, candidates: Optional[np.ndarray] = None,
    limit: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Sampled negatives: for each user of ``query`` (``[Q]``; default ``user``, one per
    review), an item that user never reviewed in ``(user, item)`` (``[N]`` each, all of
    the log), drawn uniformly from ``[1, num_items]`` or, if given, from ``candidates``
    (``[C]`` distinct item ids in ``[1, num_items]``); with ``limit`` (``[Q]``, each in
    ``[1, C]``) query ``q`` draws from ``candidates[:limit[q]]`` only (e.g. the items
    already in the log at its time). Rejection sampling: a draw that hits a reviewed item
    is redrawn (from the same ``rng``, in order), so each negative is uniform over the
    user's unreviewed items of its range; a query whose range the user reviewed whole
    (after 100 redraws) draws from all candidates. Returns ``[Q]`` item ids."""
    query = user if query is None else query
    reviewed = np.unique(user * (num_items + 1) + item)
    if limit is not None and candidates is None:
        raise ValueError("negative sampling: limit needs candidates")
    if limit is not None:
        limit = limit.astype(np.float64)

    def draw(idx: np.ndarray) -> np.ndarray:
        if candidates is None:
            return rng.integers(1, num_items + 1, len(idx))
        if limit is None:
            return candidates[rng.integers(0, len(candidates), len(idx))]
        return candidates[(rng.random(len(idx)) * limit[idx]).astype(np.int64)]

    todo = np.arange(len(query))
    neg = draw(todo)
    for round_ in range(1000):
        key = query[todo] * (num_items + 1) + neg[todo]
        pos = np.searchsorted(reviewed, key)
        clash = reviewed[np.minimum(pos, len(reviewed) - 1)] == key
        todo = todo[clash]
        if not len(todo):
            return neg
        if round_ == 100 and limit is not None:
            limit[todo] = len(candidates)
        neg[todo] = draw(todo)
    raise ConversionError("negative sampling: a user reviewed (nearly) every item")


def _read_reviews(path: Path, bad: BadRows, block_bytes: int) -> Tuple[List[str], List[str], List[int], int]:
    """``(users, asins, times, lines)`` of the well-formed reviews; bad ones go to ``bad``."""
    users: List[str] = []
    asins: List[str] = []
    times: List[int] = []
    lines = 0
    for line, obj in _json_lines(path, bad, block_bytes):
        lines += 1
        u, a, t = obj.get("reviewerID"), obj.get("asin"), obj.get("unixReviewTime")
        if not isinstance(u, str) or not isinstance(a, str) or not u or not a:
            bad.add(path, line, "reviewerID / asin missing or not a string")
        elif isinstance(t, bool) or not isinstance(t, int):
            bad.add(path, line, f"unixReviewTime {t!r} is not an integer")
        else:
            users.append(u)
            asins.append(a)
            times.append(t)
    return users, asins, times, lines


def _read_categories(path: Path, wanted: Set[str], bad: BadRows, block_bytes: int) -> Tuple[Dict[str, str], int]:
    """``({asin: leaf category}, lines)`` of the metadata of the ``wanted`` items."""
    cat_of_asin: Dict[str, str] = {}
    lines = 0
    for line, obj in _json_lines(path, bad, block_bytes):
        lines += 1
        a, cats = obj.get("asin"), obj.get("categories")
        if not isinstance(a, str):
            bad.add(path, line, "asin missing or not a string")
            continue
        if a not in wanted:
            continue
        if (not isinstance(cats, list) or not cats or not isinstance(cats[0], list)
                or not cats[0] or not isinstance(cats[0][-1], str)):
            bad.add(path, line, f"categories {cats!r} is not a non-empty list of category paths")
            continue
        cat_of_asin[a] = cats[0][-1]
    return cat_of_asin, lines


@dataclass
class _Timeline:
    """Every review, sorted by user, then time, then file order.

    Attributes:
        user, item: ``[R]`` ids. ts: ``[R]`` unix seconds. k: ``[R]`` index of the
            review within its user's.
        neg: ``[R]`` a sampled item the user never reviewed. cat_of_item: ``[I + 1]``.
        max_len: history length cap.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    k: np.ndarray
    neg: np.ndarray
    cat_of_item: np.ndarray
    max_len: int

    def rows(self, idx: np.ndarray) -> pa.Table:
        """The DIN rows of reviews ``idx``: each review's positive, then its negative."""
        lens = np.minimum(self.k[idx], self.max_len)
        hist = Jagged(lens, gather(self.item, idx - lens, lens))
        hcat = Jagged(lens, self.cat_of_item[hist.values])
        ages = ages_in_days(self.ts[idx], Jagged(lens, gather(self.ts, idx - lens, lens)))
        both = np.r_[idx, idx]
        target = np.r_[self.item[idx], self.neg[idx]]
        label = np.r_[np.ones(len(idx), np.int8), np.zeros(len(idx), np.int8)]
        # interleave positive and negative of one review
        inter = np.arange(2 * len(idx)).reshape(2, -1).T.ravel()
        pick = np.r_[np.arange(len(idx)), np.arange(len(idx))][inter]
        return pa.table(
            {
                "label": pa.array(label[inter]),
                "log_hist_len": pa.array(np.log1p(self.k[both][inter]).astype(np.float32)),
                "item_id": pa.array(target[inter]),
                "cat_id": pa.array(self.cat_of_item[target[inter]]),
                "hist_item_ids": list_array(hist.take(pick)),
                "hist_cat_ids": list_array(hcat.take(pick)),
                "user_id": pa.array(self.user[both][inter]),
                "hist_age_days": list_array(ages.take(pick), pa.float32()),
            }
        )


def _timeline(user: np.ndarray, item: np.ndarray, ts: np.ndarray, cat_of_item: np.ndarray,
              max_len: int, seed: int) -> _Timeline:
    order = np.lexsort((np.arange(len(user)), ts, user))  # by user, then time, then file order
    u, it = user[order], item[order]
    first = np.r_[True, u[1:] != u[:-1]]
    pos = np.arange(len(u))
    k = pos - np.maximum.accumulate(np.where(first, pos, 0))
    neg = _negatives(u, it, len(cat_of_item) - 1, np.random.default_rng(seed))
    return _Timeline(u, it, ts[order], k, neg, cat_of_item, max_len)


def _write_split(w: AtomicParquetWriter, tl: _Timeline, idx: np.ndarray, row_group_size: int) -> Dict[str, Any]:
    """Write the rows of reviews ``idx`` in row groups of about ``row_group_size``."""
    positives = 0
    step = max(row_group_size // 2, 1)
    for lo in range(0, len(idx), step):
        table = tl.rows(idx[lo : lo + step])
        positives += int(np.sum(table.column("label").to_numpy()))
        w.write(table)
    return {"path": str(w.path), "rows": w.rows, "positive_rate": round(positives / w.rows, 4) if w.rows else None}


def build_amazon_din(
    reviews: PathLike,
    meta: PathLike,
    out_dir: PathLike,
    *,
    max_len: int = 100,
    seed: int = 0,
    policy: Optional[BadRowPolicy] = None,
    row_group_size: int = 65536,
    block_bytes: int = 1 << 20,
) -> Dict[str, Any]:
    """Build ``train.parquet`` / ``test.parquet`` in DIN's form from raw review and
    metadata dumps, with negative sampling (see the module docstring). Besides the
    DIN-form columns the files carry ``user_id`` (int64, ids from 1) for gAUC.

    Returns:
        ``{"outputs": {split: {"path", "rows", "positive_rate"}}, "num_users",
        "num_items", "num_cats", "bad_rows", "seconds"}``; the schema's tables need
        ``num_items + 1`` and ``num_cats + 1`` rows.
    """
    t0 = time.perf_counter()
    reviews, meta, out_dir = Path(reviews), Path(meta), Path(out_dir)
    for p in (reviews, meta):
        if not p.is_file():
            raise ConversionError(f"{p}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "bad_rows.txt"
    report.unlink(missing_ok=True)
    bad = BadRows(policy or BadRowPolicy(), report)
    writers: Dict[str, AtomicParquetWriter] = {}
    try:
        users, asins, times, lines = _read_reviews(reviews, bad, block_bytes)
        lines_reviews = lines + bad.count
        cat_of_asin, meta_lines = _read_categories(meta, set(asins), bad, block_bytes)
        bad.check(lines_reviews + meta_lines)
        if not users:
            raise ConversionError(f"{reviews}: no valid reviews")
        user_ids, user = _vocab(users)
        item_ids, item = _vocab(asins)
        cat_ids, _ = _vocab(list(cat_of_asin.values()))
        cat_of_item = np.zeros(len(item_ids) + 1, np.int64)
        for a, i in item_ids.items():
            cat_of_item[i] = cat_ids.get(cat_of_asin.get(a, ""), 0)
        tl = _timeline(user, item, np.asarray(times, np.int64), cat_of_item, max_len, seed)
        del users, asins, times
        last = np.r_[tl.user[1:] != tl.user[:-1], True]
        schema = ARROW_SCHEMA.append(pa.field("user_id", pa.int64())).append(
            pa.field("hist_age_days", pa.list_(pa.float32())))
        summary: Dict[str, Any] = {}
        for name, sel in (("train", (tl.k >= 1) & ~last), ("test", (tl.k >= 1) & last)):
            writers[name] = AtomicParquetWriter(out_dir / f"{name}.parquet", schema)
            summary[name] = _write_split(writers[name], tl, np.flatnonzero(sel), row_group_size)
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bad.close()
    return {
        "format": "amazon_reviews",
        "outputs": summary,
        "num_users": len(user_ids),
        "num_items": len(item_ids),
        "num_cats": len(cat_ids),
        "bad_rows": bad.count,
        "bad_rows_report": str(report) if bad.count else None,
        "first_bad_rows": bad.first,
        "seconds": round(time.perf_counter() - t0, 3),
    }
