"""Raw-format converters (Criteo, Taobao DMR / FuxiCTR, Amazon DIN form and raw reviews):
against independent pure-Python reference parsers on the shared samples, the bad-row
policy (counted, reported with file:line, skipped under the threshold, no output above
it), I/O failures, and hypothesis property tests (malformed lines are never silently
mis-parsed; parse(format(row)) round-trips)."""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import re
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interformer_rec.config import load_config
from config_schemas import config_schema
from interformer_rec.data import convert as convert_mod
from interformer_rec.data.amazon import (
    DIN_NUM_CATS,
    DIN_NUM_ITEMS,
    build_amazon_din,
    convert_amazon_din,
)
from interformer_rec.data.convert import BadRowPolicy, ConversionError
from interformer_rec.data.text import read_blocks
from interformer_rec.data.criteo import convert_criteo
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.taobao import (
    DMR_SIZES,
    convert_taobao_dmr,
    convert_taobao_fuxictr,
)

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


# --------------------------------------------------------------------------- samples


# the sample's trailing empty fields were stripped: it needs min_fields=15 (opt-in)
convert_criteo_stripped = partial(convert_criteo, min_fields=15)


@needs_samples
def test_criteo_sample_matches_reference(tmp_path: Path) -> None:
    s = convert_criteo_stripped(CRITEO, tmp_path)
    raw = CRITEO.read_bytes()
    assert s["lines"] == 1000 and s["bad_rows"] == 0, "stripped trailing empty fields are accepted"
    check_against_reference(raw, tmp_path, s, criteo_ref, "train_head999")
    assert 0.0 < s["outputs"]["train_head999"]["positive_rate"] < 0.5
    assert s["missing_rates"]["C26"] > 0.3, "trailing fields stripped are missing values"


@needs_samples
def test_criteo_is_strict_about_field_counts_by_default(tmp_path: Path) -> None:
    """Without min_fields=15 the stripped sample is refused (half its lines are short),
    with a message that says what to do, and nothing is written."""
    with pytest.raises(ConversionError, match=r"498 of 1000 rows malformed .*38 tab-separated fields, "
                       r"expected 40 \(if trailing empty fields were stripped from this file, use min_fields=15"):
        convert_criteo(CRITEO, tmp_path)
    assert not list(tmp_path.glob("*.parquet"))


@needs_samples
def test_dmr_sample_matches_reference_and_layout(tmp_path: Path) -> None:
    s = convert_taobao_dmr(DMR, tmp_path)
    assert s["lines"] == 500 and s["bad_rows"] == 0
    check_against_reference(DMR.read_bytes(), tmp_path, s, dmr_ref, "dmr_alimama_sample500")
    t = pq.read_table(tmp_path / "dmr_alimama_sample500.parquet")
    btag = t.column("hist_btag").to_pylist()
    assert all(1 <= b <= 4 for h in btag for b in h), "real steps have a behaviour type"
    assert max(map(len, btag)) == 50 and min(map(len, btag)) < 50
    assert set(t.column("pid").to_pylist()) == {0, 1}
    assert 0 < np.mean(t.column("clk").to_numpy()) < 1


@needs_samples
def test_fuxictr_sample(tmp_path: Path) -> None:
    s = convert_taobao_fuxictr(FUXI, tmp_path)
    assert s["lines"] == 100 and s["bad_rows"] == 0
    t = pq.read_table(tmp_path / "fuxictr_tiny_train.parquet")
    raw = [l.split(",") for l in FUXI.read_text().splitlines()]
    head, body = raw[0], raw[1:]
    col = {c: [r[head.index(c)] for r in body] for c in head}
    assert t.column("clk").to_pylist() == [int(x) for x in col["clk"]]
    assert t.column("userid").to_pylist() == [int(x) for x in col["userid"]]
    assert t.column("brand").to_pylist() == [int(x) if x else None for x in col["brand"]]
    assert t.column("click_sequence").to_pylist() == [
        [int(x) for x in v.split("^")] if v else [] for v in col["click_sequence"]
    ]
    assert t.column("price").to_pylist() == [f32(math.log1p(float(x))) for x in col["price"]]
    assert t.column("timestamp").to_pylist()[0] == 1494028800  # 2017-05-06 00:00:00 UTC
    pids = dict(zip(col["pid"], t.column("pid").to_pylist()))
    assert len(set(pids.values())) == len(pids) == 2, "pid strings hash to distinct stable ids"


@needs_samples
def test_amazon_din_sample_matches_reference(tmp_path: Path) -> None:
    s = convert_amazon_din(AMAZON, tmp_path)
    assert s["lines"] == 100 and s["bad_rows"] == 0
    check_against_reference(AMAZON.read_bytes(), tmp_path, s, din_ref, "din_sample100")


@needs_samples
@pytest.mark.parametrize(
    "name,convert,raw",
    [
        ("criteo", convert_criteo_stripped, CRITEO),
        ("taobao", convert_taobao_dmr, DMR),
        ("taobao_fuxictr", convert_taobao_fuxictr, FUXI),
        ("amazon", convert_amazon_din, AMAZON),
    ],
)
def test_config_schema_fits_the_converted_files(tmp_path: Path, name, convert, raw) -> None:
    """configs/<name>.yaml is the one definition of the converter's schema: its columns
    have the written types, and the reader (ids checked against the tables) takes every
    row of the converted sample."""
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    s = convert(raw, tmp_path)
    out = next(iter(s["outputs"].values()))
    reader = ParquetBatchReader(out["path"], cfg.data.schema, 64)
    batches = list(reader)
    assert sum(b.batch_size for b in batches) == out["rows"] > 0
    assert abs(float(np.mean([x for b in batches for x in b.labels[:, 0].tolist()])) - out["positive_rate"]) < 1e-3


@needs_samples
def test_criteo_positional_split_and_gzip(tmp_path: Path) -> None:
    gz = tmp_path / "day.txt.gz"
    gz.write_bytes(gzip.compress(CRITEO.read_bytes()))
    s = convert_criteo_stripped(gz, tmp_path / "out", valid_frac=0.1, test_frac=0.2, row_group_size=64)
    assert {k: v["rows"] for k, v in s["outputs"].items()} == {"train": 700, "valid": 100, "test": 200}
    whole = [criteo_ref(l) for l in lines_of(CRITEO.read_bytes())]
    got = [r for split in ("train", "valid", "test") for r in rows(tmp_path / "out" / f"{split}.parquet")]
    assert got == whole, "splits are consecutive lines, in order"
    assert pq.ParquetFile(tmp_path / "out" / "train.parquet").metadata.num_row_groups == 11


# --------------------------------------------------------------------------- bad rows


def _corrupt_criteo(tmp_path: Path) -> Path:
    lines = lines_of(CRITEO.read_bytes())[:50]
    assert lines[1].count(b"\t") == 39
    lines[1] = lines[1].replace(b"\t", b"\t\t", 1)  # a field too many (41)
    lines[10] = b"2" + lines[10][1:]  # label 2
    lines[20] = lines[20][: lines[20].index(b"\t", 40)] + b"\tnot-a-hash"  # bad C-field
    lines[30] = b""  # empty line
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\r\n".join(lines))  # CRLF and no final newline
    return p


@needs_samples
def test_bad_rows_are_counted_reported_and_skipped(tmp_path: Path, caplog) -> None:
    p = _corrupt_criteo(tmp_path)
    with caplog.at_level("WARNING", logger="interformer_rec.data.convert"):
        s = convert_criteo_stripped(p, tmp_path / "out", policy=BadRowPolicy(max_bad_rows=4, max_bad_fraction=0.1))
    assert s["bad_rows"] == 4 and s["outputs"]["bad"]["rows"] == 46
    report = (tmp_path / "out" / "bad_rows.txt").read_text().splitlines()
    assert [l.split(": ")[0] for l in report] == [f"{p}:{n}" for n in (2, 11, 21, 31)]
    assert "41 tab-separated fields" in report[0] and "label '2'" in report[1]
    assert "'not-a-hash' is not an 8-digit hex id" in report[2]
    assert f"{p}:11" in caplog.text, "bad rows are logged with file:line"
    check_against_reference(p.read_bytes(), tmp_path / "out", s, criteo_ref, "bad")


@needs_samples
@pytest.mark.parametrize("policy,match", [
    (BadRowPolicy(max_bad_rows=3, max_bad_fraction=1.0), r"more than max_bad_rows=3 .*bad.txt:31"),
    (BadRowPolicy(max_bad_fraction=0.05), r"4 of 50 rows malformed \(8.000% > max_bad_fraction 5.000%\)"),
])
def test_too_many_bad_rows_fail_and_leave_no_output(tmp_path: Path, policy, match) -> None:
    p = _corrupt_criteo(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=match):
        convert_criteo_stripped(p, out, policy=policy)
    assert not list(out.glob("*.parquet")) and not list(out.glob(".*tmp")), "no (partial) output file"
    assert (out / "bad_rows.txt").is_file()


@needs_samples
def test_dmr_bad_rows(tmp_path: Path) -> None:
    lines = lines_of(DMR.read_bytes())[:20]
    f = lines[2].split(b","); f[255] = b"NULL"; lines[2] = b",".join(f)  # optional: ok, -> 0
    f = lines[3].split(b","); f[250] = b""; lines[3] = b",".join(f)  # userid missing: bad
    f = lines[4].split(b","); f[0] = b"7"; lines[4] = b",".join(f)  # btag outside [0, 5): bad
    f = lines[5].split(b","); f[264] = b"nan"; lines[5] = b",".join(f)  # price nan: bad
    lines[6] = lines[6] + b",0"  # 268 fields: bad
    p = tmp_path / "dmr.txt"
    p.write_bytes(b"\n".join(lines) + b"\n")
    s = convert_taobao_dmr(p, tmp_path / "out", policy=ALLOW_ALL)
    assert s["bad_rows"] == 4
    assert s["missing_rates"] == {"pvalue_level": round(1 / 16, 6)}
    check_against_reference(p.read_bytes(), tmp_path / "out", s, dmr_ref, "dmr")
    report = (tmp_path / "out" / "bad_rows.txt").read_text()
    assert "field 251 (userid) missing" in report and "btag step 1) value 7 outside [0, 5)" in report


@needs_samples
def test_fuxictr_header_errors_and_bad_rows(tmp_path: Path) -> None:
    text = FUXI.read_text().splitlines()
    p = tmp_path / "no_seq.csv"
    p.write_text("\n".join([text[0].replace(",click_sequence", "")] + [l.rsplit(",", 1)[0] for l in text[1:]]))
    with pytest.raises(ConversionError, match=r"no_seq.csv:1: header lacks column\(s\) \['click_sequence'\]"):
        convert_taobao_fuxictr(p, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet"))
    body = text[1:11]
    body[1] = body[1].replace("2017-05-06 00:00:00", "2017-13-06 00:00:00")
    body[2] = body[2].rsplit(",", 1)[0] + ",1^^2"
    body[3] = "," + body[3].split(",", 1)[1]  # clk missing
    p = tmp_path / "t.csv"
    p.write_text("\n".join([text[0]] + body) + "\n")
    s = convert_taobao_fuxictr(p, tmp_path / "out2", policy=ALLOW_ALL)
    assert s["bad_rows"] == 3 and s["outputs"]["t"]["rows"] == 7
    report = (tmp_path / "out2" / "bad_rows.txt").read_text().splitlines()
    assert [l.split(": ")[0].rsplit(":", 1)[1] for l in report] == ["3", "4", "5"], "header is line 1"
    assert "not a valid date" in report[0] and "click_sequence element 2" in report[1] and "clk" in report[2]


# --------------------------------------------------------------------------- I/O errors


def test_missing_or_unreadable_input(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="nope.txt: no such file"):
        convert_criteo(tmp_path / "nope.txt", tmp_path / "out")
    with pytest.raises(ConversionError, match=r"no such file \(a directory\)"):
        convert_criteo(tmp_path, tmp_path / "out")


@needs_samples
def test_read_error_midway_fails_cleanly(tmp_path: Path, monkeypatch) -> None:
    real = pa.input_stream

    class Flaky:
        def __init__(self, *a, **k):
            self.s, self.n = real(*a, **k), 0

        def read(self, n):
            self.n += 1
            if self.n == 3:
                raise OSError(errno.EIO, "Input/output error")
            return self.s.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.s.close()

    monkeypatch.setattr(convert_mod.pa, "input_stream", Flaky)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"train_head999.txt: read error near line \d+ .*Input/output"):
        convert_criteo_stripped(CRITEO, out, block_bytes=20_000, row_group_size=50)
    assert not list(out.glob("*.parquet")) and not list(out.glob(".*"))


@needs_samples
def test_disk_full_fails_cleanly(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = pq.ParquetWriter.write_table

    def full(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"disk full while writing train_head999.parquet .*partial output removed"):
        convert_criteo_stripped(CRITEO, out, row_group_size=100)
    assert not list(out.glob("*.parquet")) and not list(out.glob(".*tmp"))


def test_interrupt_leaves_no_output(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "a.txt"
    raw.write_text("1;2;3;4;1\n" * 10 + "5;6;7;8;0\n" * 10)
    calls = {"n": 0}
    real = convert_mod._Output.add

    def interrupted(self, table):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, table)

    monkeypatch.setattr(convert_mod._Output, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_amazon_din(raw, tmp_path / "out", block_bytes=64, row_group_size=2)
    assert not list((tmp_path / "out").iterdir()) or not list((tmp_path / "out").glob("*.parquet"))
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_read_blocks_lines_and_long_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    data = b"a\nbb\r\n" + b"x" * 100 + b"\n\nccc"
    p.write_bytes(data)
    for block_bytes in (1, 3, 7, 1000):
        got = []
        for b in read_blocks(p, block_bytes=block_bytes, max_line_bytes=50):
            got += [(int(b.line0 + i), bool(b.too_long[i]), b.buf[b.starts[i]:b.ends[i]].tobytes()) for i in range(len(b))]
        assert got == [(1, False, b"a"), (2, False, b"bb"), (3, True, b""), (4, False, b""), (5, False, b"ccc")], block_bytes


# --------------------------------------------------------------------------- raw reviews


def test_amazon_reviews_negative_sampling(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reviews, truth = [], {}
    for u in range(30):
        items = rng.choice(40, size=rng.integers(2, 9), replace=False)
        times = np.sort(rng.integers(0, 10**6, len(items)))
        truth[f"U{u}"] = [f"A{i:03d}" for i in items]
        reviews += [{"reviewerID": f"U{u}", "asin": f"A{i:03d}", "unixReviewTime": int(t), "overall": 5.0}
                    for i, t in zip(items, times)]
    order = rng.permutation(len(reviews))
    lines = [json.dumps(reviews[i]) for i in order]
    lines.insert(5, "{not json")
    (tmp_path / "reviews.json").write_text("\n".join(lines) + "\n")
    asins = sorted({r["asin"] for r in reviews})
    meta = [repr({"asin": a, "categories": [["Electronics", f"Cat{int(a[1:]) % 7}"]]}) for a in asins]
    (tmp_path / "meta.json").write_text("\n".join(meta) + "\n")
    s = build_amazon_din(tmp_path / "reviews.json", tmp_path / "meta.json", tmp_path / "out", max_len=3,
                         policy=BadRowPolicy(max_bad_rows=1, max_bad_fraction=0.01))
    assert s["bad_rows"] == 1 and s["num_items"] == len(asins) and s["num_cats"] == 7
    item_id = {a: i + 1 for i, a in enumerate(asins)}
    cat_id = {f"Cat{k}": k + 1 for k in range(7)}
    train, test = rows(tmp_path / "out" / "train.parquet"), rows(tmp_path / "out" / "test.parquet")
    n_reviews, n_users = len(reviews), len(truth)
    assert len(train) + len(test) == 2 * (n_reviews - n_users) and len(test) == 2 * n_users
    uid = {u: i + 1 for i, u in enumerate(sorted(truth))}
    by_user = {uid[u]: [item_id[a] for a in seq] for u, seq in truth.items()}
    for split, rs in (("train", train), ("test", test)):
        for pos, neg in zip(rs[0::2], rs[1::2]):
            assert (pos["label"], neg["label"]) == (1, 0)
            assert pos["hist_item_ids"] == neg["hist_item_ids"] and pos["user_id"] == neg["user_id"]
            seq = by_user[pos["user_id"]]
            k = seq.index(pos["item_id"])
            assert k >= 1 and pos["hist_item_ids"] == seq[max(0, k - 3):k], "the previous <= 3 items"
            assert (k == len(seq) - 1) == (split == "test"), "the last review goes to test"
            assert neg["item_id"] not in seq, "negatives are items the user never reviewed"
            asin_of = {v: a for a, v in item_id.items()}
            assert pos["hist_cat_ids"] == [cat_id[f"Cat{int(asin_of[i][1:]) % 7}"] for i in pos["hist_item_ids"]]
    schema = config_schema("amazon", max_len=3, item=len(asins) + 1, cat=8)
    assert sum(b.batch_size for b in ParquetBatchReader(tmp_path / "out" / "train.parquet", schema, 16)) == len(train)


# --------------------------------------------------------------------------- properties

# HYPOTHESIS_EXAMPLES=2000 for a deeper search than the suite's default
PROPS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

criteo_rows = st.fixed_dictionaries({
    "label": st.integers(0, 1),
    "ints": st.lists(st.one_of(st.none(), st.integers(-(10**18) + 1, 10**18 - 1), st.integers(-5, 5000)),
                     min_size=13, max_size=13),
    "cats": st.lists(st.one_of(st.none(), st.integers(0, 2**32 - 1)), min_size=26, max_size=26),
    "upper": st.booleans(),
    "strip": st.booleans(),
})


def format_criteo(r: dict) -> bytes:
    fields = [str(r["label"])] + ["" if x is None else str(x) for x in r["ints"]]
    fields += ["" if c is None else (f"{c:08X}" if r["upper"] else f"{c:08x}") for c in r["cats"]]
    line = "\t".join(fields)
    if r["strip"]:
        line = line.rstrip("\t")
        if line.count("\t") + 1 < 15:  # a converter never sees fewer than min_fields here
            line += "\t" * (14 - line.count("\t"))
    return line.encode()


@PROPS
@given(st.lists(criteo_rows, min_size=1, max_size=20))
def test_criteo_round_trip(tmp_path_factory, rs) -> None:
    """parse(format(row)) == row, for any valid row (large ints, missing fields, hex case,
    stripped trailing fields)."""
    d = tmp_path_factory.mktemp("rt")
    (d / "x.txt").write_bytes(b"\n".join(map(format_criteo, rs)) + b"\n")
    s = convert_criteo_stripped(d / "x.txt", d, policy=BadRowPolicy(max_bad_rows=0))
    got = rows(d / "x.parquet")
    assert s["bad_rows"] == 0 and len(got) == len(rs)
    for g, r in zip(got, rs):
        assert g["label"] == r["label"]
        assert [g[f"I{j + 1}"] for j in range(13)] == [f32(math.log1p(max(x or 0, 0))) for x in r["ints"]]
        assert [g[f"C{j + 1}"] for j in range(26)] == [c or 0 for c in r["cats"]]


NOISE = st.sampled_from([b"\t", b"\t\t", b"-", b"--", b"x", b"g", b"0", b"9", b"F", b" ", b".", b"e5",
                         b"\r", b"\n", b"\xc3\xa9", b"\x00", b";", b",", b"NULL", b"", b"1" * 19, b"^"])


def mutate(lines: List[bytes], data: st.DataObject) -> bytes:
    out = []
    for line in lines:
        for _ in range(data.draw(st.integers(0, 2))):
            kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
            i = data.draw(st.integers(0, len(line)))
            if kind == "insert":
                line = line[:i] + data.draw(NOISE) + line[i:]
            elif kind == "delete":
                line = line[:i] + line[i + data.draw(st.integers(1, 4)):]
            else:
                line = line[:i] + data.draw(NOISE) + line[i + 1:]
        out.append(line)
    return b"\n".join(out) + data.draw(st.sampled_from([b"", b"\n", b"\r\n"]))


def _never_silently_wrong(tmp_path_factory, data, valid_lines, convert, ref, name="x") -> None:
    d = tmp_path_factory.mktemp("mut")
    raw = mutate(valid_lines, data)
    (d / f"{name}.txt").write_bytes(raw)
    s = convert(d / f"{name}.txt", d, policy=ALLOW_ALL, block_bytes=data.draw(st.sampled_from([64, 1 << 20])))
    check_against_reference(raw, d, s, ref, name)


@PROPS
@given(st.data())
def test_criteo_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    rs = data.draw(st.lists(criteo_rows, min_size=1, max_size=8))
    k = data.draw(st.sampled_from([15, 40]))
    _never_silently_wrong(tmp_path_factory, data, [format_criteo(r) for r in rs],
                          partial(convert_criteo, min_fields=k), partial(criteo_ref, min_fields=k))


def format_din(items: List[int], cats: List[int], item: int, cat: int, label: int) -> bytes:
    return f"{' '.join(map(str, items))};{' '.join(map(str, cats))};{item};{cat};{label}".encode()


din_rows = st.integers(0, 6).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, DIN_NUM_ITEMS - 1), min_size=n, max_size=n),
    st.lists(st.integers(0, DIN_NUM_CATS - 1), min_size=n, max_size=n),
    st.integers(0, DIN_NUM_ITEMS - 1), st.integers(0, DIN_NUM_CATS - 1), st.integers(0, 1)))


@PROPS
@given(st.data())
def test_amazon_din_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    rs = data.draw(st.lists(din_rows, min_size=1, max_size=8))
    _never_silently_wrong(tmp_path_factory, data, [format_din(*r) for r in rs], convert_amazon_din, din_ref)


@PROPS
@given(st.lists(din_rows, min_size=1, max_size=10))
def test_amazon_din_round_trip(tmp_path_factory, rs) -> None:
    d = tmp_path_factory.mktemp("rt")
    (d / "x.txt").write_bytes(b"\n".join(format_din(*r) for r in rs))
    convert_amazon_din(d / "x.txt", d, policy=BadRowPolicy(max_bad_rows=0))
    got = rows(d / "x.parquet")
    assert [(g["hist_item_ids"], g["hist_cat_ids"], g["item_id"], g["cat_id"], g["label"]) for g in got] == \
        [tuple(r) for r in rs]


@needs_samples
@PROPS
@given(st.data())
def test_dmr_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    sample = lines_of(DMR.read_bytes())
    picked = data.draw(st.lists(st.sampled_from(sample), min_size=1, max_size=4))
    _never_silently_wrong(tmp_path_factory, data, picked, convert_taobao_dmr, dmr_ref)


def _spans(tokens: List[bytes], sep: bytes = b"|"):
    data = sep.join(tokens) + sep
    s, pos = [], 0
    for t in tokens:
        s.append(pos)
        pos += len(t) + 1
    s = np.array(s, np.int64)
    return np.frombuffer(data, np.uint8), s, s + np.array([len(t) for t in tokens], np.int64)


tokens = st.lists(
    st.one_of(st.binary(max_size=24), st.from_regex(rb"\A-?[0-9]{1,20}\Z"),
              st.from_regex(rb"\A[0-9a-fA-F]{6,10}\Z"), st.sampled_from([b"-", b"/", b":", b"0" * 8, b"9" * 18])),
    max_size=40,
).map(lambda ts: [t for t in ts if b"|" not in t])


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 200)), deadline=None)
@given(tokens)
def test_parse_int_and_hex_match_a_regex_reference(ts) -> None:
    """The vectorised (SWAR) number parsers against Python's int() behind a strict regex."""
    from interformer_rec.data.text import parse_hex, parse_int

    buf, s, e = _spans(ts)
    v, ok, empty = parse_int(buf, s, e)
    assert ok.tolist() == [bool(INT.fullmatch(t)) for t in ts]
    assert v[ok].tolist() == [int(t) for t in ts if INT.fullmatch(t)]
    assert empty.tolist() == [t == b"" for t in ts]
    v, ok, _ = parse_hex(buf, s, e, 8)
    hexok = [bool(re.fullmatch(rb"[0-9a-fA-F]{8}", t)) for t in ts]
    assert ok.tolist() == hexok
    assert v[ok].tolist() == [int(t, 16) for t, h in zip(ts, hexok) if h]
