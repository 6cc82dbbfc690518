"""Sequential-recommendation logs in S3-Rec's release form (Amazon Beauty, Sports, Toys,
...) -> Parquet: leave-last-out per user, one sampled negative per event (DIN protocol).

Raw files (``raw_dir``)
-----------------------
* ``<name>.txt``: one user per line, ``user_id item_id item_id ...`` (space-separated
  decimal integers, ids from 1), the user's items oldest first. No timestamps.
* ``<name>_item2attributes.json``: ``{"item_id": [attribute ids]}``: the item's brand
  first, when it has one, then the entries of its category paths, most general first.
  Brands and categories share one id space.

``<name>`` is found from the one ``*_item2attributes.json`` in ``raw_dir`` (or given).
A *bad row* of the log (a line with fewer than two ids, an id that is not a decimal
integer or is below 1, a user id on a second line) falls under the
:class:`~interformer_rec.data.converters.convert.BadRowPolicy` (``file:line: reason`` in
``<out_dir>/bad_rows.txt``, skipped, never repaired; past the threshold nothing is
written). An attribute file that is not a JSON object of integer lists is a
:class:`ConversionError`.

Brands and categories
---------------------
The release keeps no names, so they are told apart by position: an attribute id that
occurs at any position after the first of some item's list is a category; an item's
first attribute is its brand if that id never occurs after a first position (a brand
is never a category path entry), else the item has no brand and the id is its most
general category. Each item gets ``brand_id`` (brands renumbered ``1..B`` in the order
of their raw ids; 0: none) and ``cat_id``, its most specific category (the last
category entry, renumbered ``1..C``; 0: none). An item of the log without attributes
has both 0 (the summary counts them).

Examples and split
------------------
Each user's items in file order are events ``k = 0 .. n-1``. Every event gives two
rows, written one after the other: the positive (``label`` 1, target = the event's
item) and a negative (``label`` 0, target drawn uniformly from the items of the log the
user never reviewed; one ``numpy.random.default_rng(seed)`` generator, rejection
sampling as :func:`interformer_rec.data.converters.amazon._negatives`), with the same user and
history: the user's events ``0..k-1``, the most recent ``max_len`` of them, oldest
first, with their brands and categories as parallel lists; ``log_hist_len`` is
``log(1 + k)`` (the untruncated length; the log has no other dense feature).
Leave-last-out: event ``n-1`` goes to ``test.parquet``, event ``n-2`` to
``valid.parquet``, the rest to ``train.parquet`` (a user with fewer than 3 events has
no train rows; with 1, only a test row). Rows are in (user, event) order; all three
files are written atomically (all or none).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from interformer_rec.arrays import ConversionError, Jagged, gather, list_array
from interformer_rec.data.converters.amazon import _negatives
from interformer_rec.data.converters.convert import AtomicParquetWriter, BadRowPolicy, BadRows, PathLike
from interformer_rec.data.converters.text import parse_int_lists, read_blocks

ARROW_SCHEMA = pa.schema(
    [
        ("label", pa.int8()),
        ("log_hist_len", pa.float32()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("brand_id", pa.int64()),
        ("cat_id", pa.int64()),
        ("hist_item_ids", pa.list_(pa.int64())),
        ("hist_brand_ids", pa.list_(pa.int64())),
        ("hist_cat_ids", pa.list_(pa.int64())),
    ]
)
ATTRIBUTES_SUFFIX = "_item2attributes.json"


def find_name(raw_dir: Path) -> str:
    """The release's ``<name>``: the one ``<name>_item2attributes.json`` in ``raw_dir``."""
    found = sorted(p.name[: -len(ATTRIBUTES_SUFFIX)] for p in raw_dir.glob(f"*{ATTRIBUTES_SUFFIX}"))
    if len(found) != 1:
        raise ConversionError(
            f"{raw_dir}: expected one <name>{ATTRIBUTES_SUFFIX} (with <name>.txt), found {found or 'none'}"
        )
    return found[0]


def read_log(path: Path, bad: BadRows, block_bytes: int = 1 << 20) -> Tuple[np.ndarray, Jagged, int]:
    """``(users [U], items per user (Jagged over U), lines read)`` of the good lines
    (checked per block with numpy; only bad lines are visited one by one)."""
    lines: List[np.ndarray] = []
    lists: List[Jagged] = []
    reasons: Dict[int, str] = {}
    for block in read_blocks(path, block_bytes):
        ids, malformed, _ = parse_int_lists(block.buf, block.starts, block.ends, b" ")
        starts, stops = ids.offsets[:-1], ids.offsets[1:]
        nonempty = ids.lengths > 0
        low = np.ones(len(starts), np.int64)  # each line's smallest id
        if nonempty.any():
            low[nonempty] = np.minimum.reduceat(ids.values, starts[nonempty])
        for i in np.flatnonzero(block.too_long | malformed | (ids.lengths < 2) | (low < 1)):
            reasons[int(block.line0 + i)] = (
                "line too long" if block.too_long[i]
                else f"not space-separated decimal integers: {block.text(i, 60)!r}" if malformed[i]
                else "fewer than two ids (a user and at least one item)" if ids.lengths[i] < 2
                else f"id {int(ids.values[starts[i]:stops[i]].min())} below 1"
            )
        lines.append(block.lines)
        lists.append(ids)
    if not lists:
        raise ConversionError(f"{path}: no valid lines")
    line = np.concatenate(lines)
    ids = Jagged(np.concatenate([j.lengths for j in lists]), np.concatenate([j.values for j in lists]))
    good = np.ones(len(line), bool)
    good[np.searchsorted(line, np.fromiter(reasons, np.int64, len(reasons)))] = False
    user = np.zeros(len(line), np.int64)  # each line's first id
    user[ids.lengths > 0] = ids.values[ids.offsets[:-1][ids.lengths > 0]]
    # a user id on a second line: the first stays
    idx = np.flatnonzero(good)
    _, first = np.unique(user[idx], return_index=True)
    repeated = np.setdiff1d(np.arange(len(idx)), first)
    first_line = {int(u): int(line[idx[f]]) for u, f in zip(user[idx][first], first)}
    for r in idx[repeated]:
        reasons[int(line[r])] = f"user {int(user[r])} already on line {first_line[int(user[r])]}"
    good[idx[repeated]] = False
    for ln in sorted(reasons):
        bad.add(path, ln, reasons[ln])
    keep = np.flatnonzero(good)
    if not len(keep):
        raise ConversionError(f"{path}: no valid lines")
    rows = ids.take(keep)
    items = Jagged(rows.lengths - 1, np.delete(rows.values, rows.offsets[:-1]))
    return user[keep], items, len(line)


def read_attributes(path: Path) -> Dict[int, List[int]]:
    """``{item: [attribute ids]}`` of ``<name>_item2attributes.json``."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a JSON object {{item id: [attribute ids]}}")
    out: Dict[int, List[int]] = {}
    for key, attrs in raw.items():
        if not key.isdigit() or not isinstance(attrs, list) or not all(
            isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in attrs
        ):
            raise ConversionError(f"{path}: item {key[:40]!r}: expected a decimal item id and a list of attribute ids")
        out[int(key)] = attrs
    return out


def brands_and_categories(attributes: Dict[int, List[int]], num_items: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(brand_of_item, cat_of_item)``, each ``[num_items]`` renumbered ids (0: none),
    told apart by position (see the module docstring)."""
    later = {a for attrs in attributes.values() for a in attrs[1:]}  # category path entries
    brand_raw: Dict[int, int] = {}
    cat_raw: Dict[int, int] = {}
    for item, attrs in attributes.items():
        if item >= num_items or not attrs:
            continue
        cats = attrs
        if attrs[0] not in later:
            brand_raw[item] = attrs[0]
            cats = attrs[1:]
        if cats:
            cat_raw[item] = cats[-1]
    brand_id = {b: i + 1 for i, b in enumerate(sorted(set(brand_raw.values())))}
    cat_id = {c: i + 1 for i, c in enumerate(sorted(set(cat_raw.values())))}
    brand_of = np.zeros(num_items, np.int64)
    cat_of = np.zeros(num_items, np.int64)
    for item, b in brand_raw.items():
        brand_of[item] = brand_id[b]
    for item, c in cat_raw.items():
        cat_of[item] = cat_id[c]
    return brand_of, cat_of


class _Events:
    """Every event in (user, file order), with what a row needs."""

    def __init__(self, users: np.ndarray, items: Jagged, brand_of: np.ndarray, cat_of: np.ndarray,
                 max_len: int, seed: int) -> None:
        self.user = np.repeat(users, items.lengths)
        self.item = items.values
        starts = np.repeat(items.offsets[:-1], items.lengths)
        self.k = np.arange(len(self.item)) - starts  # index of the event within its user's
        self.n = np.repeat(items.lengths, items.lengths)
        self.brand_of, self.cat_of, self.max_len = brand_of, cat_of, max_len
        self.neg = _negatives(self.user, self.item, len(brand_of) - 1, np.random.default_rng(seed),
                              candidates=np.unique(self.item))

    def split(self) -> Dict[str, np.ndarray]:
        last = self.k == self.n - 1
        return {"train": np.flatnonzero(self.k < self.n - 2), "valid": np.flatnonzero(self.k == self.n - 2),
                "test": np.flatnonzero(last)}

    def rows(self, idx: np.ndarray) -> pa.Table:
        """The rows of events ``idx``: each event's positive, then its negative."""
        lens = np.minimum(self.k[idx], self.max_len)
        hist = Jagged(lens, gather(self.item, idx - lens, lens))
        pick = np.repeat(np.arange(len(idx)), 2)
        target = np.stack([self.item[idx], self.neg[idx]], 1).ravel()
        label = np.tile(np.array([1, 0], np.int8), len(idx))
        h = hist.take(pick)
        return pa.table(
            {
                "label": pa.array(label),
                "log_hist_len": pa.array(np.log1p(self.k[idx][pick]).astype(np.float32)),
                "user_id": pa.array(self.user[idx][pick]),
                "item_id": pa.array(target),
                "brand_id": pa.array(self.brand_of[target]),
                "cat_id": pa.array(self.cat_of[target]),
                "hist_item_ids": list_array(h),
                "hist_brand_ids": list_array(Jagged(h.lengths, self.brand_of[h.values])),
                "hist_cat_ids": list_array(Jagged(h.lengths, self.cat_of[h.values])),
            },
            schema=ARROW_SCHEMA,
        )


def _write_splits(out_dir: Path, ev: _Events, row_group_size: int) -> Dict[str, Any]:
    step = max(row_group_size // 2, 1)  # events per row group (two rows each)
    writers: Dict[str, AtomicParquetWriter] = {}
    out: Dict[str, Any] = {}
    try:
        for name, idx in ev.split().items():
            w = writers[name] = AtomicParquetWriter(out_dir / f"{name}.parquet", ARROW_SCHEMA)
            for lo in range(0, len(idx), step):
                w.write(ev.rows(idx[lo : lo + step]))
            lens = np.minimum(ev.k[idx], ev.max_len)
            out[name] = {"path": str(w.path), "rows": w.rows, "positive_rate": 0.5 if w.rows else None,
                         "history_mean": round(float(lens.mean()), 2) if len(idx) else None}
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return out


def convert_s3rec(
    raw_dir: PathLike,
    out_dir: PathLike,
    *,
    name: Optional[str] = None,
    max_len: int = 50,
    seed: int = 0,
    policy: Optional[BadRowPolicy] = None,
    row_group_size: int = 65536,
    block_bytes: int = 1 << 20,
) -> Dict[str, Any]:
    """Convert ``raw_dir/<name>.txt`` and ``<name>_item2attributes.json`` to
    ``out_dir/{train,valid,test}.parquet`` (see the module docstring).

    Returns:
        ``{"format", "name", "outputs": {split: {"path", "rows", "positive_rate",
        "history_mean"}}, "users", "events", "items", "items_without_attributes",
        "brands", "categories", "tables" ({"user", "item", "brand", "cat"}: the schema's
        sizes), "max_len", "seed", "bad_rows", "bad_rows_report", "first_bad_rows",
        "seconds"}``.
    """
    t0 = time.perf_counter()
    if max_len < 1 or row_group_size < 2:
        raise ValueError(f"need max_len >= 1 and row_group_size >= 2: {max_len}, {row_group_size}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    name = name or find_name(raw_dir)
    log_path, attr_path = raw_dir / f"{name}.txt", raw_dir / f"{name}{ATTRIBUTES_SUFFIX}"
    if not log_path.is_file():
        raise ConversionError(f"{log_path}: no such file")
    attributes = read_attributes(attr_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "bad_rows.txt"
    report.unlink(missing_ok=True)
    bad = BadRows(policy or BadRowPolicy(), report)
    try:
        users, items, lines = read_log(log_path, bad, block_bytes)
        bad.check(lines)
    finally:
        bad.close()
    num_items = int(max(items.values.max(), max(attributes, default=0))) + 1
    brand_of, cat_of = brands_and_categories(attributes, num_items)
    ev = _Events(users, items, brand_of, cat_of, max_len, seed)
    outputs = _write_splits(out_dir, ev, row_group_size)
    in_log = np.unique(items.values)
    return {
        "format": "s3rec",
        "name": name,
        "outputs": outputs,
        "users": int(len(users)),
        "events": int(len(ev.item)),
        "items": int(len(in_log)),
        "items_without_attributes": int(np.sum((brand_of[in_log] == 0) & (cat_of[in_log] == 0))),
        "brands": int(brand_of.max()),
        "categories": int(cat_of.max()),
        "tables": {"user": int(users.max()) + 1, "item": num_items, "brand": int(brand_of.max()) + 1,
                   "cat": int(cat_of.max()) + 1},
        "max_len": max_len,
        "seed": seed,
        "bad_rows": bad.count,
        "bad_rows_report": str(report) if bad.count else None,
        "first_bad_rows": bad.first,
        "seconds": round(time.perf_counter() - t0, 3),
    }
