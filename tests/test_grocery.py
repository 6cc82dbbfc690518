"""Amazon Grocery converter (DIN protocol, global time split): against a pure-Python
reference on a tiny hand-made log, the bad-row policy (file, column and line named), the
config's schema against the real files' sizes, and one conversion of the real log."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from interformer_rec.cli import main
from interformer_rec.config import load_config
from interformer_rec.data.converters.amazon import _negatives
from interformer_rec.data.converters.convert import BadRowPolicy, ConversionError
from interformer_rec.data.converters.grocery import GROCERY_TABLES, convert_amazon_grocery

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "amazon_grocery"
needs_real = pytest.mark.skipif(not (REAL / "train.csv").is_file(), reason=f"real log not found at {REAL}")
DAY = 86400
SPLITS = ("train", "valid", "test")

Review = Tuple[int, int, int]  # user, item, day


def write_raw(d: Path, reviews: Sequence[Review], meta: Dict[int, int]) -> Path:
    """``train.csv`` / ``item_meta.csv`` in the real files' format (days -> unix time)."""
    d.mkdir(parents=True, exist_ok=True)
    lines = ["user_id\titem_id\ttime"] + [f"{u}\t{i}\t{(16000 + t) * DAY}" for u, i, t in reviews]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    rows = ["item_id\ti_category\tr_complement\tr_substitute"]
    rows += [f"{i}\t{c}\t[{i + 1}, {i + 2}]\t[]" for i, c in sorted(meta.items())]
    (d / "item_meta.csv").write_text("\n".join(rows) + "\n")
    return d


def tiny_log(seed: int = 0) -> Tuple[List[Review], Dict[int, int]]:
    """13 users, items 1..33 (item 30 has no metadata, category 0 is used), 30 days:
    same-day reviews within users and across, a day on each split cut, the file not in
    time order."""
    rng = np.random.default_rng(seed)
    reviews: List[Review] = []
    for u in range(1, 13):
        items = rng.choice(np.arange(1, 31), size=int(rng.integers(1, 9)), replace=False)
        days = rng.integers(0, 30, len(items))
        reviews += [(u, int(i), int(t)) for i, t in zip(items, days)]
    reviews = [reviews[k] for k in rng.permutation(len(reviews))]
    # ties broken by file order: user 13 reviews 31 then 32 on the same day, 33 before both
    reviews += [(13, 31, 5), (13, 32, 5), (13, 33, 2)]
    meta = {i: i % 3 for i in range(1, 34) if i != 30}
    return reviews, meta


def reference(reviews: Sequence[Review], max_len: int) -> Dict[Tuple[int, int], dict]:
    """Per positive ``(user, item)``: the expected history, its length k and day."""
    by_user: Dict[int, List[Tuple[int, int, int]]] = defaultdict(list)
    for line, (u, i, t) in enumerate(reviews):
        by_user[u].append((t, line, i))
    out = {}
    for u, rs in by_user.items():
        items = [i for _, _, i in sorted(rs)]
        days = [t for t, _, _ in sorted(rs)]
        for k in range(1, len(items)):
            lo = max(0, k - max_len)
            out[(u, items[k])] = {"hist": items[lo:k], "k": k, "day": days[k], "hist_days": days[lo:k]}
    return out


def read(out: Path, split: str) -> List[dict]:
    return pq.read_table(out / f"{split}.parquet").to_pylist()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tuple[Path, dict, List[Review], Dict[int, int]]:
    reviews, meta = tiny_log()
    raw = write_raw(tmp_path_factory.mktemp("raw"), reviews, meta)
    out = raw.parent / "out"
    s = convert_amazon_grocery(raw, out, max_len=3, seed=1, row_group_size=4)
    return out, s, reviews, meta


def test_histories_targets_and_categories(tiny) -> None:
    out, s, reviews, meta = tiny
    ref = reference(reviews, 3)
    rows = [r for split in SPLITS for r in read(out, split)]
    cat = lambda i: meta[i] + 1 if i in meta else 0  # noqa: E731 - 0: no metadata
    positives = [r for r in rows if r["label"] == 1]
    assert sorted((r["user_id"], r["item_id"]) for r in positives) == sorted(ref), \
        "each review but a user's first is one positive; first reviews are dropped"
    assert s["examples"] == len(ref) and s["reviews"] == len(reviews)
    assert any(len(v["hist"]) == 3 and v["k"] > 3 for v in ref.values()), "truncation is exercised"
    for r in positives:
        want = ref[(r["user_id"], r["item_id"])]
        assert r["hist_item_ids"] == want["hist"], "the earlier items, oldest first, at most max_len"
        assert r["hist_cat_ids"] == [cat(i) for i in want["hist"]]
        assert r["cat_id"] == cat(r["item_id"])
        assert r["log_hist_len"] == pytest.approx(math.log1p(want["k"]), rel=1e-6), "untruncated length"
        assert r["timestamp"] == (16000 + want["day"]) * DAY
        assert r["hist_age_days"] == [want["day"] - d for d in want["hist_days"]], "days since each history review"
    assert ref[(13, 31)]["hist"] == [33] and ref[(13, 32)]["hist"] == [33, 31], "same day: file order"
    got = {(r["user_id"], r["item_id"]): r["hist_item_ids"] for r in positives}
    assert got[(13, 31)] == [33] and got[(13, 32)] == [33, 31]
    assert s["tables"] == {"user": 14, "item": 34, "cat": 4} and s["items_without_meta"] == 1


def test_negatives_share_everything_but_the_target(tiny) -> None:
    out, s, reviews, _ = tiny
    reviewed = defaultdict(set)
    for u, i, _ in reviews:
        reviewed[u].add(i)
    first_day: Dict[int, int] = {}
    for _, i, t in reviews:
        first_day[i] = min(t, first_day.get(i, t))
    for split in SPLITS:
        rows = read(out, split)
        assert [r["label"] for r in rows] == [1, 0] * (len(rows) // 2), "positive, then its negative"
        for pos, neg in zip(rows[0::2], rows[1::2]):
            for c in ("user_id", "timestamp", "hist_item_ids", "hist_cat_ids", "log_hist_len"):
                assert pos[c] == neg[c], c
            assert neg["item_id"] not in reviewed[neg["user_id"]], "never an item the user reviewed"
            day = neg["timestamp"] // DAY - 16000
            # drawn from the items already in the log that day (the very first days of
            # the log may have none the user did not review: then from all of its items)
            if any(d <= day and i not in reviewed[neg["user_id"]] for i, d in first_day.items()):
                assert first_day[neg["item_id"]] <= day, "an item not yet in the log"
            assert neg["item_id"] in first_day, "drawn from the items of the log"
        assert s["outputs"][split]["positive_rate"] in (0.5, None)


def test_global_time_split(tiny) -> None:
    out, s, _, _ = tiny
    days = {split: [r["timestamp"] for r in read(out, split)] for split in SPLITS}
    for split, ts in days.items():
        assert ts == sorted(ts), f"{split} rows are in time order"
        assert s["outputs"][split]["rows"] == len(ts)
        assert pq.ParquetFile(out / f"{split}.parquet").metadata.num_row_groups == math.ceil(len(ts) / 4)
    assert max(days["train"]) < min(days["valid"]) and max(days["valid"]) < min(days["test"]), \
        "train < valid < test in time: no day in two splits"
    ts = sorted(t for split in SPLITS for t in days[split][0::2])
    n = len(ts)
    t1, t2 = ts[int(n * 0.8)], ts[int(n * 0.9)]  # the cut's day goes to the later split
    assert ts[int(n * 0.8) - 1] == t1 and ts[int(n * 0.9) - 1] == t2, "both exact cuts fall inside a day"
    assert len(days["train"]) // 2 == sum(t < t1 for t in ts) and len(days["test"]) // 2 == sum(t >= t2 for t in ts)
    assert sum(s["outputs"][k]["fraction"] for k in SPLITS) == pytest.approx(1.0, abs=1e-3)
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).date().isoformat()  # noqa: E731
    assert s["split_days"] == [iso(t1), iso(t2)]


def test_seeded_and_deterministic(tmp_path: Path, tiny) -> None:
    out, _, reviews, meta = tiny
    raw = write_raw(tmp_path / "raw", reviews, meta)
    again = convert_amazon_grocery(raw, tmp_path / "same", max_len=3, seed=1, row_group_size=4)
    for split in SPLITS:
        assert read(tmp_path / "same", split) == read(out, split)
    convert_amazon_grocery(raw, tmp_path / "other", max_len=3, seed=2)
    negs = lambda d: [r["item_id"] for k in SPLITS for r in read(d, k)[1::2]]  # noqa: E731
    assert negs(tmp_path / "other") != negs(out)
    assert again["bad_rows"] == 0


def test_negatives_are_uniform_over_unreviewed_candidates() -> None:
    user = np.array([1, 1, 1, 2])
    item = np.array([2, 5, 7, 3])
    cand = np.array([1, 2, 3, 4, 5, 6, 7, 9])
    neg = _negatives(user, item, 9, np.random.default_rng(0), query=np.ones(50_000, np.int64), candidates=cand)
    values, counts = np.unique(neg, return_counts=True)
    assert values.tolist() == [1, 3, 4, 6, 9], "candidates the user never reviewed"
    assert np.all(np.abs(counts / 10_000 - 1) < 0.05)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("line,reason", [
    ("3\t4\t12a", r"column 'time': '12a' is not an integer"),
    ("3\t\t1382400000", r"column 'item_id': empty"),
    ("3\t0\t1382400000", r"column 'item_id': 0 < 1 \(0 is reserved"),
    ("3\t4", r"2 tab-separated fields, expected 3"),
])
def test_malformed_line_names_file_column_and_line(tmp_path: Path, line: str, reason: str) -> None:
    reviews, meta = tiny_log()
    raw = write_raw(tmp_path / "raw", reviews, meta)
    lines = (raw / "train.csv").read_text().splitlines()
    lines[3] = line  # file line 4 (the header is line 1)
    (raw / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError, match=rf"{raw / 'train.csv'}:4: {reason}"):
        convert_amazon_grocery(raw, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet")) and not list((tmp_path / "out").glob(".*tmp"))
    s = convert_amazon_grocery(raw, tmp_path / "ok", policy=BadRowPolicy(max_bad_fraction=1.0, log_first=0))
    assert s["bad_rows"] == 1 and s["reviews"] == len(reviews) - 1, "skipped under a lenient policy"
    assert (tmp_path / "ok" / "bad_rows.txt").read_text().startswith(f"{raw / 'train.csv'}:4: ")


def test_header_and_metadata_errors(tmp_path: Path) -> None:
    reviews, meta = tiny_log()
    raw = write_raw(tmp_path / "raw", reviews, meta)
    text = (raw / "train.csv").read_text()
    (raw / "train.csv").write_text(text.replace("user_id\titem_id\ttime", "user_id\titem_id\tstamp", 1))
    with pytest.raises(ConversionError, match=r"train.csv:1: header lacks column\(s\) \['time'\]"):
        convert_amazon_grocery(raw, tmp_path / "out")
    (raw / "train.csv").write_text(text)
    m = (raw / "item_meta.csv").read_text().splitlines()
    (raw / "item_meta.csv").write_text("\n".join(m + [m[2].replace("\t", "\t7", 1)]) + "\n")  # item 2 again
    with pytest.raises(ConversionError, match=r"item_meta.csv:\d+: column 'item_id': item 2 already listed at line 3"):
        convert_amazon_grocery(raw, tmp_path / "out", policy=BadRowPolicy(max_bad_rows=0))
    (raw / "item_meta.csv").write_text("")
    with pytest.raises(ConversionError, match=r"item_meta.csv: empty file, expected a header line"):
        convert_amazon_grocery(raw, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"nowhere/train.csv: no such file"):
        convert_amazon_grocery(tmp_path / "nowhere", tmp_path / "out")


def test_cli(tmp_path: Path, tiny, capsys) -> None:
    _, _, reviews, meta = tiny
    raw = write_raw(tmp_path / "raw", reviews, meta)
    assert main(["convert", "amazon_grocery", "--raw", str(raw), "--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["max_len"] == 100 and s["seed"] == 3, "amazon_grocery's defaults: max_len 100"
    assert all((tmp_path / "out" / f"{k}.parquet").is_file() for k in SPLITS)


# --------------------------------------------------------------------------- real data


def real_table_sizes() -> Dict[str, int]:
    """Max id + 1 of the real files (cat: i_category + 1, shifted for padding)."""
    opts = pacsv.ParseOptions(delimiter="\t")
    log = pacsv.read_csv(REAL / "train.csv", parse_options=opts)
    meta = pacsv.read_csv(REAL / "item_meta.csv", parse_options=opts,
                          convert_options=pacsv.ConvertOptions(include_columns=["item_id", "i_category"]))
    items = max(log.column("item_id").to_numpy().max(), meta.column("item_id").to_numpy().max())
    return {"user": int(log.column("user_id").to_numpy().max()) + 1, "item": int(items) + 1,
            "cat": int(meta.column("i_category").to_numpy().max()) + 2}


@needs_real
def test_table_sizes_match_the_real_log() -> None:
    assert real_table_sizes() == GROCERY_TABLES


def test_config_schema_matches_the_converter() -> None:
    """The YAML's tables are the converter's sizes (GROCERY_TABLES), checked without the
    log; every model's config has the same schema."""
    schema = load_config(ROOT / "configs" / "amazon_grocery.yaml").data.schema
    assert {t.name: t.num_embeddings for t in schema.tables} == GROCERY_TABLES
    assert {s.max_len for s in schema.sequence} == {100}
    for model in ("dlrm", "dlrm_dcn", "dlrm_projection", "bst", "din", "infnet", "onetrans"):
        cfg = load_config(ROOT / "configs" / f"amazon_grocery_{model}.yaml")
        assert cfg.data.schema == schema and cfg.model.name == model
        assert cfg.train.out_dir == f"runs/amazon_grocery_{model}"


@needs_real
def test_real_conversion(tmp_path: Path) -> None:
    s = convert_amazon_grocery(REAL, tmp_path)
    assert s["reviews"] == 121_892 and s["users"] == 14_681 and s["bad_rows"] == 0
    assert s["examples"] == 121_892 - 14_681 and s["tables"] == GROCERY_TABLES
    o = s["outputs"]
    assert sum(o[k]["rows"] for k in SPLITS) == 2 * s["examples"]
    assert all(o[k]["positive_rate"] == 0.5 for k in SPLITS)
    for k, want in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(o[k]["fraction"] - want) < 0.01, (k, o[k]["fraction"])
    assert o["train"]["last_day"] < o["valid"]["first_day"] and o["valid"]["last_day"] < o["test"]["first_day"]
    assert s["history"]["max"] == 100 and 0 < s["history"]["share_at_max_len"] < 0.05


def test_grocery_signals_count_on_the_training_split(tiny) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from grocery_signals import signals

    out, _, _, _ = tiny
    r = signals(out)
    assert set(r) == set(SPLITS)
    assert r["train"]["users_seen_in_train"] == 1.0 and r["train"]["positives_with_train_positive"] == 1.0
    for split in SPLITS:
        assert 0 <= r[split]["auc_item_ctr"] <= 1 and 0 <= r[split]["auc_popularity"] <= 1
    # in-sample, an item's training odds separate its positives from its negatives
    assert r["train"]["auc_item_ctr"] > 0.6
