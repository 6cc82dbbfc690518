"""Taobao display ads (Alimama) -> Parquet in the project's schema, from two public
preprocessings.

DMR (``convert_taobao_dmr``)
----------------------------
The Deep Match to Rank (DMR) preprocessing of the Alimama data: 267 comma-separated
numbers per line. By position (the layout DMR's model code slices, and what the
sample's columns show: value ranges, cardinalities, left zero-padding):

=========  =============================================================================
0-49       ``btag`` of the last 50 behaviours (1 pv, 2 cart, 3 fav, 4 buy; 0 = padding)
50-99      ``cate`` of each behaviour
100-149    ``brand`` of each behaviour
150-199    ``mask``: 1 for a real step, 0 for padding (padding is on the left, so the
           most recent behaviour is last)
200-249    ``match_mask`` (0/1 per step, DMR's auxiliary input; written, not in the schema)
250-258    user: ``userid, cms_segid, cms_group_id, final_gender_code, age_level,
           pvalue_level, shopping_level, occupation, new_user_class_level``
259-263    ad: ``adgroup_id, cate_id, campaign_id, customer, brand``
264        ``price`` (normalised to [0, 1] by DMR)
265        ``pid`` (position, 0/1)
266        ``clk`` (the label)
=========  =============================================================================

Written: ``clk`` (int8), ``price`` (float32, as given), the user and ad ids (int64),
and the real steps (``mask == 1``, in order) as parallel ``list<int64>`` columns
``hist_btag``, ``hist_cate``, ``hist_brand``, ``hist_match``. Every id is checked
against DMR's vocabulary sizes (:data:`DMR_SIZES`), so the files pass the reader under
``id_policy: reject`` (``configs/taobao.yaml``). Missing values (empty or ``NULL``) are
allowed in the user features, in the ad features other than ``adgroup_id``, in
``price`` and ``pid``, and become 0 (DMR's own "unknown" id, which the data already
uses, e.g. ``brand`` 0); a missing value in the sequences, ``userid``, ``adgroup_id``
or ``clk`` makes a bad row, as does any other malformed field, a ``mask``/``clk`` not
in {0, 1} or an id outside its table.

FuxiCTR (``convert_taobao_fuxictr``)
------------------------------------
FuxiCTR's Taobao Ad CSV: a header line, then comma-separated ``clk, time_stamp,
userid, adgroup_id, pid, cate_id, campaign_id, customer, brand, price, cms_segid,
cms_group_id, final_gender_code, age_level, pvalue_level, shopping_level, occupation,
new_user_class_level, click_sequence`` (any column order; extra columns are ignored;
no quoting). ``click_sequence`` holds ``^``-joined ``adgroup_id``s (most recent last).
Written: ``clk`` (int8), ``timestamp`` (int64 unix seconds of ``time_stamp``, read as
UTC; null if empty), ``price`` (float32 ``log(1 + max(price, 0))``, 0 if empty), the id
columns (int64; an empty id is null, which the reader treats as an empty bag),
``pid`` (int64: a stable 64-bit hash of the string, e.g. ``430548_1007``) and
``click_sequence`` (``list<int64>``). Raw ids are unbounded, so
``configs/taobao_fuxictr.yaml`` sets ``id_policy: hash``. ``clk``, ``userid`` and
``adgroup_id`` are required.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interformer_rec.arrays import ConversionError, Jagged, list_array
from interformer_rec.data.converters.convert import (
    BadRowPolicy,
    Parsed,
    PathLike,
    Reasons,
    TextFormat,
    convert_text,
)
from interformer_rec.data.converters.text import (
    Block,
    equals,
    parse_float,
    parse_int,
    parse_int_lists,
    parse_label,
    split,
    to_binary,
    token,
)

SEQ_LEN = 50
USER_COLUMNS = [
    "userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level",
    "pvalue_level", "shopping_level", "occupation", "new_user_class_level",
]
AD_COLUMNS = ["adgroup_id", "cate_id", "campaign_id", "customer", "brand"]
# Vocabulary sizes of DMR's preprocessing (its model code sizes its tables with these).
DMR_SIZES: Dict[str, int] = {
    "userid": 1141730, "cms_segid": 97, "cms_group_id": 13, "final_gender_code": 3,
    "age_level": 7, "pvalue_level": 4, "shopping_level": 4, "occupation": 3,
    "new_user_class_level": 5, "adgroup_id": 846812, "cate_id": 12978,
    "campaign_id": 423437, "customer": 255876, "brand": 461529, "pid": 2, "btag": 5,
}










# --------------------------------------------------------------------------- DMR

DMR_FIELDS = 267
_SEQ_BLOCKS = ["btag", "cate", "brand", "mask", "match"]
_SCALARS = USER_COLUMNS + AD_COLUMNS  # positions 250..263
_PRICE, _PID, _CLK = 264, 265, 266
_OPTIONAL = set(USER_COLUMNS[1:]) | set(AD_COLUMNS[1:])  # may be missing -> 0

DMR_ARROW = pa.schema(
    [("clk", pa.int8()), ("price", pa.float32())]
    + [(c, pa.int64()) for c in _SCALARS]
    + [("pid", pa.int64())]
    + [(f"hist_{b}", pa.list_(pa.int64())) for b in ("btag", "cate", "brand", "match")]
)


class DMRFormat(TextFormat):
    """DMR's 267-field Alimama lines (see the module docstring)."""

    name = "taobao_dmr"
    schema = DMR_ARROW
    label = "clk"

    def parse(self, block: Block) -> Parsed:
        buf, n = block.buf, len(block)
        f = split(buf, block.starts, block.ends, b",")
        r = Reasons(n)
        r.add(f.counts != DMR_FIELDS, lambda i: f"{f.counts[i]} comma-separated fields, expected {DMR_FIELDS}")
        s, e = f.grid(DMR_FIELDS)
        int_cols = np.r_[0:_PRICE, _PID, _CLK]
        v, ok, _ = (a.reshape(n, len(int_cols)) for a in parse_int(buf, s[:, int_cols].ravel(), e[:, int_cols].ravel()))
        values = np.zeros((n, DMR_FIELDS), np.int64)
        values[:, int_cols] = v
        good = np.zeros((n, DMR_FIELDS), bool)
        good[:, int_cols] = ok
        price, p_ok, _ = parse_float(buf, s[:, _PRICE], e[:, _PRICE])
        good[:, _PRICE] = p_ok
        optional = np.zeros(DMR_FIELDS, bool)
        optional[[250 + _SCALARS.index(c) for c in _OPTIONAL] + [_PRICE, _PID]] = True
        missing = e == s
        opt = np.flatnonzero(optional)
        missing[:, opt] |= equals_grid(buf, s[:, opt], e[:, opt], b"NULL")  # NULL: optional fields only
        allowed_missing = missing & optional
        bad_field = ~good & ~allowed_missing

        def field_reason(i: int) -> str:
            j = int(np.argmax(bad_field[i]))
            what = "missing" if missing[i, j] else f"{token(buf, s[i, j], e[i, j])} is not a number"
            return f"field {j + 1} ({_field_name(j)}) {what}"

        r.add(bad_field.any(axis=1), field_reason)
        values[allowed_missing] = 0
        price = np.where(allowed_missing[:, _PRICE], 0.0, price)

        # ranges: ids in [0, size), mask / match / clk in {0, 1}
        hi = np.full(DMR_FIELDS, np.iinfo(np.int64).max)
        hi[0:50] = DMR_SIZES["btag"]
        hi[50:100] = DMR_SIZES["cate_id"]
        hi[100:150] = DMR_SIZES["brand"]
        hi[150:250] = 2
        for k, c in enumerate(_SCALARS):
            hi[250 + k] = DMR_SIZES[c]
        hi[_PID] = DMR_SIZES["pid"]
        hi[_CLK] = 2
        out = ((values < 0) | (values >= hi)) & good
        out[:, _PRICE] = False

        def range_reason(i: int) -> str:
            j = int(np.argmax(out[i]))
            return f"field {j + 1} ({_field_name(j)}) value {values[i, j]} outside [0, {hi[j]})"

        r.add(out.any(axis=1), range_reason)
        _, clk_ok = parse_label(buf, s[:, _CLK], e[:, _CLK])
        r.add(~clk_ok, lambda i: f"field {_CLK + 1} (clk) {token(buf, s[i, _CLK], e[i, _CLK])} is not 0 or 1")
        ok_rows = ~r.bad
        vals = values[ok_rows]
        mask = vals[:, 150:200] == 1
        lengths = mask.sum(axis=1)
        cols: Dict[str, Any] = {
            "clk": pa.array(vals[:, _CLK].astype(np.int8)),
            "price": pa.array(price[ok_rows].astype(np.float32)),
        }
        cols.update({c: pa.array(vals[:, 250 + k]) for k, c in enumerate(_SCALARS)})
        cols["pid"] = pa.array(vals[:, _PID])
        for b, lo in (("btag", 0), ("cate", 50), ("brand", 100), ("match", 200)):
            cols[f"hist_{b}"] = list_array(Jagged(lengths, vals[:, lo : lo + SEQ_LEN][mask]))
        miss = allowed_missing[ok_rows].sum(0)
        missing = {_field_name(j): int(miss[j]) for j in np.flatnonzero(miss)}
        return Parsed(pa.table(cols, schema=DMR_ARROW), r.bad, r.reasons, missing)


def equals_grid(buf: np.ndarray, s: np.ndarray, e: np.ndarray, tok: bytes) -> np.ndarray:
    return equals(buf, s.ravel(), e.ravel(), tok).reshape(s.shape)


def _field_name(j: int) -> str:
    if j < 250:
        return f"{_SEQ_BLOCKS[j // 50]} step {j % 50 + 1}"
    return (_SCALARS + ["price", "pid", "clk"])[j - 250]


def convert_taobao_dmr(
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    policy: Optional[BadRowPolicy] = None,
    **kw: Any,
) -> Dict[str, Any]:
    """Convert DMR-format Alimama file(s) (see the module docstring); keywords as in
    :func:`~interformer_rec.data.converters.convert.convert_text`."""
    return convert_text(DMRFormat(), inputs, out_dir, policy=policy, **kw)


# --------------------------------------------------------------------------- FuxiCTR

FUXI_IDS = [
    "userid", "adgroup_id", "pid", "cate_id", "campaign_id", "customer", "brand",
    "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
    "shopping_level", "occupation", "new_user_class_level",
]
FUXI_REQUIRED = ["clk", "userid", "adgroup_id"]
FUXI_COLUMNS = ["clk", "time_stamp", *FUXI_IDS, "price", "click_sequence"]
FUXI_ARROW = pa.schema(
    [("clk", pa.int8()), ("timestamp", pa.int64()), ("price", pa.float32())]
    + [(c, pa.int64()) for c in FUXI_IDS]
    + [("click_sequence", pa.list_(pa.int64()))]
)
_TIME_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"


def hash_strings(arr: pa.Array) -> np.ndarray:
    """A stable 64-bit hash (BLAKE2b) of each value of a binary array, ``[m]`` int64;
    hashed once per distinct value."""
    enc = pc.dictionary_encode(arr)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    table = np.array(
        [int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little", signed=True)
         for v in enc.dictionary.to_pylist()],
        dtype=np.int64,
    )
    return table[codes] if len(table) else np.zeros(len(arr), np.int64)


class FuxiCTRFormat(TextFormat):
    """FuxiCTR's Taobao Ad CSV (see the module docstring)."""

    name = "taobao_fuxictr"
    schema = FUXI_ARROW
    label = "clk"
    header = True

    def __init__(self) -> None:
        self.index: Dict[str, int] = {}
        self.num_fields = 0

    def set_header(self, text: str, path: Path) -> None:
        names = [c.strip() for c in text.split(",")]
        missing = [c for c in FUXI_COLUMNS if c not in names]
        if missing:
            raise ConversionError(f"{path}:1: header lacks column(s) {missing}; got {names}")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ConversionError(f"{path}:1: header names column(s) {dup} twice")
        self.index = {c: names.index(c) for c in FUXI_COLUMNS}
        self.num_fields = len(names)

    def parse(self, block: Block) -> Parsed:
        buf, n = block.buf, len(block)
        f = split(buf, block.starts, block.ends, b",")
        r = Reasons(n)
        r.add(f.counts != self.num_fields,
              lambda i: f"{f.counts[i]} comma-separated fields, expected {self.num_fields}")
        s, e = f.grid(self.num_fields)

        def span(c: str):
            return s[:, self.index[c]], e[:, self.index[c]]

        cols: Dict[str, Any] = {}
        y, y_ok = parse_label(buf, *span("clk"))
        r.add(~y_ok, lambda i: f"clk {token(buf, *_at(span('clk'), i))} is not 0 or 1")
        cols["clk"] = y.astype(np.int8)

        ts_bin = to_binary(buf, *span("time_stamp"))
        ts_empty = (span("time_stamp")[1] == span("time_stamp")[0])
        ts_ok = pc.match_substring_regex(ts_bin, _TIME_RE).to_numpy(zero_copy_only=False)
        r.add(~ts_ok & ~ts_empty,
              lambda i: f"time_stamp {token(buf, *_at(span('time_stamp'), i))} is not YYYY-MM-DD HH:MM:SS")
        ts = np.zeros(n, np.int64)
        if ts_ok.any():
            txt = pc.cast(pc.filter(ts_bin, pa.array(ts_ok)), pa.string())
            parsed = pc.strptime(txt, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
            secs = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
            bad_date = np.zeros(n, bool)
            bad_date[np.flatnonzero(ts_ok)] = pc.is_null(parsed).to_numpy(zero_copy_only=False)
            r.add(bad_date, lambda i: f"time_stamp {token(buf, *_at(span('time_stamp'), i))} is not a valid date")
            ts[np.flatnonzero(ts_ok)] = np.where(np.isnan(secs.astype(float)), 0, secs)
        cols["timestamp"] = (ts, ts_empty | ~ts_ok)

        price, p_ok, p_empty = parse_float(buf, *span("price"))
        r.add(~p_ok & ~p_empty, lambda i: f"price {token(buf, *_at(span('price'), i))} is not a number")
        cols["price"] = np.log1p(np.maximum(price, 0)).astype(np.float32)

        for c in FUXI_IDS:
            cs, ce = span(c)
            empty = ce == cs
            if c == "pid":
                v = hash_strings(to_binary(buf, cs, ce))
                ok = ~empty
            else:
                v, ok, _ = parse_int(buf, cs, ce)
            if c in FUXI_REQUIRED:
                r.add(~ok, lambda i, c=c: f"{c} {token(buf, *_at(span(c), i))} is not an integer id")
            else:
                r.add(~ok & ~empty, lambda i, c=c: f"{c} {token(buf, *_at(span(c), i))} is not an integer id")
            cols[c] = (v, empty)

        seq, seq_bad, first_bad = parse_int_lists(buf, *span("click_sequence"), b"^")
        r.add(seq_bad, lambda i: f"click_sequence element {first_bad[i] + 1} is not an integer id "
                                 f"({token(buf, *_at(span('click_sequence'), i))})")

        keep = ~r.bad
        out: Dict[str, pa.Array] = {}
        for c, v in cols.items():
            if isinstance(v, tuple):
                vals, null = v
                out[c] = pa.array(vals[keep], mask=null[keep], type=FUXI_ARROW.field(c).type)
            else:
                out[c] = pa.array(v[keep], type=FUXI_ARROW.field(c).type)
        out["click_sequence"] = list_array(seq.take(np.flatnonzero(keep)))
        return Parsed(pa.table(out, schema=FUXI_ARROW), r.bad, r.reasons)


def _at(spans, i: int):
    return int(spans[0][i]), int(spans[1][i])


def convert_taobao_fuxictr(
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    policy: Optional[BadRowPolicy] = None,
    **kw: Any,
) -> Dict[str, Any]:
    """Convert FuxiCTR Taobao CSV file(s) (see the module docstring); keywords as in
    :func:`~interformer_rec.data.converters.convert.convert_text`."""
    return convert_text(FuxiCTRFormat(), inputs, out_dir, policy=policy, **kw)
