"""Raw-format converters (Criteo, Taobao DMR / FuxiCTR, Amazon DIN form and raw reviews):
against independent pure-Python reference parsers (tests/converter_refs.py) on the
shared samples, the bad-row policy (counted, reported with file:line, skipped under the
threshold, no output above it) and I/O failures. Property tests:
tests/test_converters_properties.py."""

from __future__ import annotations

import errno
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from config_schemas import config_schema
from converter_refs import (
    ALLOW_ALL,
    AMAZON,
    CRITEO,
    DMR,
    FUXI,
    ROOT,
    check_against_reference,
    convert_criteo_stripped,
    criteo_ref,
    din_ref,
    dmr_ref,
    f32,
    lines_of,
    needs_samples,
    rows,
)

from interformer_rec.config import load_config
from interformer_rec.data.converters import convert as convert_mod
from interformer_rec.data.converters.amazon import (
    build_amazon_din,
    convert_amazon_din,
)
from interformer_rec.data.converters.convert import BadRowPolicy, ConversionError
from interformer_rec.data.converters.criteo import convert_criteo
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.converters.taobao import (
    convert_taobao_dmr,
    convert_taobao_fuxictr,
)
from interformer_rec.data.converters.text import read_blocks

# --------------------------------------------------------------------------- samples




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
    with caplog.at_level("WARNING", logger="interformer_rec.data.converters.convert"):
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
    reviews, truth, times_by_name = [], {}, {}
    for u in range(30):
        items = rng.choice(40, size=rng.integers(2, 9), replace=False)
        times = np.sort(rng.integers(0, 10**6, len(items)))
        truth[f"U{u}"] = [f"A{i:03d}" for i in items]
        times_by_name[f"U{u}"] = times.tolist()
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
    times_of = {uid[u]: t for u, t in times_by_name.items()}
    for split, rs in (("train", train), ("test", test)):
        for pos, neg in zip(rs[0::2], rs[1::2]):
            assert (pos["label"], neg["label"]) == (1, 0)
            assert pos["hist_item_ids"] == neg["hist_item_ids"] and pos["user_id"] == neg["user_id"]
            seq = by_user[pos["user_id"]]
            k = seq.index(pos["item_id"])
            assert k >= 1 and pos["hist_item_ids"] == seq[max(0, k - 3):k], "the previous <= 3 items"
            when = times_of[pos["user_id"]]
            assert pos["hist_age_days"] == pytest.approx([(when[k] - when[j]) / 86400 for j in range(max(0, k - 3), k)],
                                                         rel=1e-6), "days from each history review"
            assert neg["hist_age_days"] == pos["hist_age_days"]
            assert (k == len(seq) - 1) == (split == "test"), "the last review goes to test"
            assert neg["item_id"] not in seq, "negatives are items the user never reviewed"
            asin_of = {v: a for a, v in item_id.items()}
            assert pos["hist_cat_ids"] == [cat_id[f"Cat{int(asin_of[i][1:]) % 7}"] for i in pos["hist_item_ids"]]
    schema = config_schema("amazon", max_len=3, item=len(asins) + 1, cat=8)
    assert sum(b.batch_size for b in ParquetBatchReader(tmp_path / "out" / "train.parquet", schema, 16)) == len(train)
