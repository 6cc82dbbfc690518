"""Independent pure-Python reference parsers of the raw formats (Criteo, Taobao DMR, the
Amazon DIN form) and the shared samples they are checked on; used by
tests/test_converters.py and tests/test_converters_properties.py."""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pyarrow.parquet as pq
import pytest

from interformer_rec.data.converters.amazon import DIN_NUM_CATS, DIN_NUM_ITEMS
from interformer_rec.data.converters.convert import BadRowPolicy
from interformer_rec.data.converters.criteo import convert_criteo
from interformer_rec.data.converters.taobao import DMR_SIZES

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
CRITEO = SAMPLES / "criteo" / "train_head999.txt"
DMR = SAMPLES / "taobao_ad" / "dmr_alimama_sample500.txt"
FUXI = SAMPLES / "taobao_ad" / "fuxictr_tiny_train.csv"
AMAZON = SAMPLES / "amazon_electronics" / "din_sample100.txt"

needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"raw-format samples not found at {SAMPLES} (shared data beside the repo)"
)
ALLOW_ALL = BadRowPolicy(max_bad_fraction=1.0, log_first=0)
INT = re.compile(rb"-?[0-9]{1,18}")
UINT = re.compile(rb"[0-9]{1,18}")
FLOAT = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


# --------------------------------------------------------------------------- references


def lines_of(data: bytes) -> List[bytes]:
    """Lines as the converters number them: split at \\n, one trailing \\r dropped, a
    final newline ends the last line."""
    if not data:
        return []
    parts = data.split(b"\n")
    if data.endswith(b"\n"):
        parts = parts[:-1]
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def f32(x: float) -> float:
    return float(np.float32(x))


def criteo_ref(line: bytes, min_fields: int = 15) -> Optional[dict]:
    f = line.split(b"\t")
    if not min_fields <= len(f) <= 40:
        return None
    f += [b""] * (40 - len(f))
    if f[0] not in (b"0", b"1"):
        return None
    row: dict = {"label": int(f[0])}
    for j in range(1, 14):
        if f[j] == b"":
            x = 0
        elif INT.fullmatch(f[j]):
            x = int(f[j])
        else:
            return None
        row[f"I{j}"] = f32(math.log1p(max(x, 0)))
    for j in range(14, 40):
        if f[j] == b"":
            v = 0
        elif re.fullmatch(rb"[0-9a-fA-F]{8}", f[j]):
            v = int(f[j], 16)
        else:
            return None
        row[f"C{j - 13}"] = v
    return row


DMR_OPTIONAL = set(range(251, 259)) | set(range(260, 266))


def dmr_ref(line: bytes) -> Optional[dict]:
    f = line.split(b",")
    if len(f) != 267:
        return None
    v: List = [0] * 267
    for j, x in enumerate(f):
        if j in DMR_OPTIONAL and x in (b"", b"NULL"):
            v[j] = 0
        elif j == 264:
            if not FLOAT.fullmatch(x) or not math.isfinite(float(x)):
                return None
            v[j] = float(x)
        elif INT.fullmatch(x):
            v[j] = int(x)
        else:
            return None
    if f[266] not in (b"0", b"1"):
        return None
    limits = [5] * 50 + [12978] * 50 + [461529] * 50 + [2] * 100
    names = ["userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
             "shopping_level", "occupation", "new_user_class_level", "adgroup_id", "cate_id",
             "campaign_id", "customer", "brand"]
    limits += [DMR_SIZES[c] for c in names] + [None, 2, 2]
    for j, hi in enumerate(limits):
        if hi is not None and not 0 <= v[j] < hi:
            return None
    real = [t for t in range(50) if v[150 + t] == 1]
    row = {"clk": v[266], "price": f32(v[264])}
    row.update({c: v[250 + k] for k, c in enumerate(names)})
    row["pid"] = v[265]
    for b, lo in (("btag", 0), ("cate", 50), ("brand", 100), ("match", 200)):
        row[f"hist_{b}"] = [v[lo + t] for t in real]
    return row


def din_ref(line: bytes, num_items: int = DIN_NUM_ITEMS, num_cats: int = DIN_NUM_CATS) -> Optional[dict]:
    f = line.split(b";")
    if len(f) != 5:
        return None

    def ids(x: bytes, size: int) -> Optional[List[int]]:
        if x == b"":
            return []
        out = []
        for t in x.split(b" "):
            if not INT.fullmatch(t) or not 0 <= int(t) < size:
                return None
            out.append(int(t))
        return out

    items, cats = ids(f[0], num_items), ids(f[1], num_cats)
    if items is None or cats is None or len(items) != len(cats):
        return None
    one_item, one_cat = ids(f[2], num_items), ids(f[3], num_cats)
    if one_item is None or one_cat is None or len(one_item) != 1 or len(one_cat) != 1 or b" " in f[2] + f[3]:
        return None
    if f[4] not in (b"0", b"1"):
        return None
    return {"label": int(f[4]), "log_hist_len": f32(math.log1p(len(items))), "item_id": one_item[0],
            "cat_id": one_cat[0], "hist_item_ids": items, "hist_cat_ids": cats}


def rows(path: Path) -> List[dict]:
    return pq.read_table(path).to_pylist()


def check_against_reference(raw: bytes, out: Path, summary: dict, ref: Callable, name: str) -> None:
    """Output rows == reference rows of the good lines; bad lines == reference's Nones."""
    want, bad_lines = [], []
    for i, line in enumerate(lines_of(raw), start=1):
        r = ref(line)
        (bad_lines.append(i) if r is None else want.append(r))
    got = rows(out / f"{name}.parquet")
    assert got == want
    assert summary["bad_rows"] == len(bad_lines)
    if bad_lines:
        report = (out / "bad_rows.txt").read_text().splitlines()
        assert [int(l.split(":")[1]) for l in report] == bad_lines, "each bad row reported with its line"


# the Criteo sample's trailing empty fields were stripped: it needs min_fields=15 (opt-in)
convert_criteo_stripped = partial(convert_criteo, min_fields=15)
