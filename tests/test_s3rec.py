"""S3-Rec release converter (Amazon Beauty): a hand-computed small example (brands told
from categories by position, leave-last-out, negatives never among the user's items,
histories strictly earlier), the bad-row policy, and the real Beauty log against
configs/amazon_beauty.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from interformer_rec.cli import main
from interformer_rec.config import load_config
from interformer_rec.data.converters.convert import BadRowPolicy, ConversionError
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.converters.s3rec import ARROW_SCHEMA, convert_s3rec

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "amazon_beauty"
needs_real = pytest.mark.skipif(not (REAL / "Beauty.txt").is_file(), reason=f"real log not found at {REAL}")

# item -> [brand?, categories most general first]; brand ids 10..12, category ids 20..23
ATTRIBUTES = {"1": [10, 20, 21], "2": [20, 22], "3": [11, 20], "4": [], "5": [12, 20, 21, 23]}
BRAND = {1: 1, 2: 0, 3: 2, 4: 0, 5: 3}  # raw 10 -> 1, 11 -> 2, 12 -> 3; item 2's first id (20) is a category
CAT = {1: 2, 2: 3, 3: 1, 4: 0, 5: 4}  # the most specific category: raw 20 -> 1, 21 -> 2, 22 -> 3, 23 -> 4


def write_raw(d: Path, lines: list[str], name: str = "Tiny") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (d / f"{name}_item2attributes.json").write_text(json.dumps(ATTRIBUTES))
    return d


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_hand_computed_example(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", ["1 1 2 3 4", "2 5 1"])
    s = convert_s3rec(raw, tmp_path / "out", max_len=2)
    assert s["name"] == "Tiny" and s["users"] == 2 and s["events"] == 6
    assert s["tables"] == {"user": 3, "item": 6, "brand": 4, "cat": 5} and s["brands"] == 3 and s["categories"] == 4
    out = {split: rows(tmp_path / "out" / f"{split}.parquet") for split in ("train", "valid", "test")}
    assert pq.read_schema(tmp_path / "out" / "train.parquet") == ARROW_SCHEMA
    # user 1 (4 events): events 0, 1 train, 2 valid, 3 test; user 2 (2 events): 0 valid, 1 test
    positives = {split: [(r["user_id"], r["item_id"], r["hist_item_ids"]) for r in rs if r["label"] == 1]
                 for split, rs in out.items()}
    assert positives == {
        "train": [(1, 1, []), (1, 2, [1])],
        "valid": [(1, 3, [1, 2]), (2, 5, [])],
        "test": [(1, 4, [2, 3]), (2, 1, [5])],  # max_len 2: the most recent two, oldest first
    }
    reviewed = {1: {1, 2, 3, 4}, 2: {5, 1}}
    for rs in out.values():
        assert [r["label"] for r in rs] == [1, 0] * (len(rs) // 2)  # each positive, then its negative
        for pos, neg in zip(rs[::2], rs[1::2]):
            assert {k: v for k, v in neg.items() if k not in ("label", "item_id", "brand_id", "cat_id")} == \
                {k: v for k, v in pos.items() if k not in ("label", "item_id", "brand_id", "cat_id")}
            assert neg["item_id"] in {1, 2, 3, 4, 5} - reviewed[neg["user_id"]]
        for r in rs:
            assert r["brand_id"] == BRAND[r["item_id"]] and r["cat_id"] == CAT[r["item_id"]]
            assert r["hist_brand_ids"] == [BRAND[i] for i in r["hist_item_ids"]]
            assert r["hist_cat_ids"] == [CAT[i] for i in r["hist_item_ids"]]
    assert out["test"][0]["log_hist_len"] == pytest.approx(1.3862944)  # log(1 + 3): 3 earlier events, untruncated


def test_bad_rows_are_named_and_the_policy_writes_nothing(tmp_path: Path) -> None:
    lines = ["1 1 2 3 4", "2 5 x", "3", "2 5 1", "1 2 3", "4 0 1"]
    s = convert_s3rec(write_raw(tmp_path / "raw", lines), tmp_path / "ok", policy=BadRowPolicy(max_bad_fraction=1.0))
    assert s["users"] == 2 and s["bad_rows"] == 4
    report = (tmp_path / "ok" / "bad_rows.txt").read_text()
    assert "Tiny.txt:2: not space-separated decimal integers" in report
    assert "Tiny.txt:3: fewer than two ids" in report
    assert "Tiny.txt:5: user 1 already on line 1" in report
    assert "Tiny.txt:6: id 0 below 1" in report
    with pytest.raises(ConversionError, match="malformed"):
        convert_s3rec(write_raw(tmp_path / "raw2", lines), tmp_path / "strict")
    assert not list((tmp_path / "strict").glob("*.parquet"))


def test_attribute_file_errors(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", ["1 1 2 3"])
    (raw / "Tiny_item2attributes.json").write_text('{"1": ["a"]}')
    with pytest.raises(ConversionError, match="item '1': expected a decimal item id and a list of attribute ids"):
        convert_s3rec(raw, tmp_path / "out")
    (raw / "Tiny_item2attributes.json").write_text("{")
    with pytest.raises(ConversionError, match="not valid JSON"):
        convert_s3rec(raw, tmp_path / "out")
    (raw / "Other_item2attributes.json").write_text("{}")
    with pytest.raises(ConversionError, match="expected one <name>_item2attributes.json"):
        convert_s3rec(raw, tmp_path / "out")


@needs_real
def test_real_beauty_matches_the_config(tmp_path: Path) -> None:
    out = tmp_path / "beauty"
    assert main(["convert", "s3rec", "--raw", str(REAL), "--out", str(out)]) == 0
    cfg = load_config(ROOT / "configs" / "amazon_beauty.yaml", [f"data.{s}={out / f'{s}.parquet'}" for s in ("train", "valid", "test")])
    schema = cfg.data.schema
    summary_tables = {t.name: t.num_embeddings for t in schema.tables}
    assert summary_tables == {"user": 22364, "item": 12102, "brand": 436, "cat": 196}
    assert pq.read_metadata(out / "test.parquet").num_rows == 2 * 22363 == pq.read_metadata(out / "valid.parquet").num_rows
    assert pq.read_metadata(out / "train.parquet").num_rows == 2 * (198502 - 2 * 22363)
    for split in ("train", "valid", "test"):  # the reader accepts every row under id_policy: reject
        assert sum(b.batch_size for b in ParquetBatchReader(out / f"{split}.parquet", schema, 65536)) > 0
