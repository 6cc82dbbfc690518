"""ParquetBatchReader: Parquet -> Batch round trip, shuffling, rank split, __len__."""

import dataclasses
from pathlib import Path
from typing import Dict, List, Tuple

import pyarrow.parquet as pq
import pytest
import torch

from interformer_rec.config import Schema, SyntheticConfig
from interformer_rec.data.batch import Batch
from interformer_rec.data.reader import ParquetBatchReader, count_rows, oracle_auc
from interformer_rec.data.synthetic import generate, synthetic_schema

Row = Tuple  # (dense, labels, group, sparse lists, sequence lists), all hashable

CFG = SyntheticConfig(
    num_users=50, num_items=60, num_categories=6, max_len=8, min_len=0,
    rows={"train": 301, "valid": 40}, row_group_size=32, seed=3,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(CFG, out)
    return out


def truncated_schema(max_len: int) -> Schema:
    """The synthetic schema with a shorter max_len than the data holds."""
    s = synthetic_schema(CFG)
    return dataclasses.replace(
        s, sequence=[dataclasses.replace(f, max_len=max_len) for f in s.sequence]
    )


def expected_rows(path: Path, schema: Schema) -> List[Row]:
    """Reference: each row read directly with pyarrow, one Python row at a time."""
    t = pq.read_table(path).to_pylist()

    def ids(v) -> Tuple[int, ...]:
        return tuple(v) if isinstance(v, list) else (v,)

    return [
        (
            tuple(float(r[c]) for c in schema.dense),
            tuple(float(r[c]) for c in schema.labels),
            r[schema.group_key],
            tuple(ids(r[f.name]) for f in schema.pooled_features),
            tuple(ids(r[f.name]) for f in schema.target_features)
            + tuple(tuple(r[s.name][-s.max_len :]) for s in schema.sequence),
        )
        for r in t
    ]


def batch_rows(batch: Batch, schema: Schema) -> List[Row]:
    sparse = batch.sparse.to_dict()
    seq = batch.sequence.to_dict()

    def lists(d: Dict, keys: List[str]) -> List[List[Tuple[int, ...]]]:
        return [[tuple(x.tolist()) for x in d[k].to_dense()] for k in keys]

    sp = lists(sparse, [f.name for f in schema.pooled_features])
    sq = lists(seq, schema.unpooled_keys)
    return [
        (
            tuple(batch.dense[i].tolist()),
            tuple(batch.labels[i].tolist()),
            int(batch.groups[i]),
            tuple(col[i] for col in sp),
            tuple(col[i] for col in sq),
        )
        for i in range(batch.batch_size)
    ]


def read_all(reader: ParquetBatchReader) -> List[List[Row]]:
    return [batch_rows(b, reader.schema) for b in reader]


def test_round_trip_matches_pyarrow(data: Path) -> None:
    schema = synthetic_schema(CFG)
    reader = ParquetBatchReader(data / "train.parquet", schema, batch_size=20)
    batches = list(reader)
    assert [b.batch_size for b in batches] == [20] * 15 + [1]
    b = batches[0]
    assert b.dense.dtype == b.labels.dtype == torch.float32 and b.groups.dtype == torch.int64
    assert b.dense.shape == (20, CFG.num_dense) and b.labels.shape == (20, 1)
    assert b.sparse.keys() == [f.name for f in schema.pooled_features]
    assert b.sequence.keys() == schema.unpooled_keys == [
        "item_id", "item_category", "hist_item_ids", "hist_cat_ids"
    ]
    got = [r for b in batches for r in batch_rows(b, schema)]
    want = expected_rows(data / "train.parquet", schema)
    assert got == want
    assert any(len(r[3][2]) > 1 for r in got), "multi-hot rows present"
    assert any(len(r[4][2]) == 0 for r in got), "empty histories present"


def test_truncation_keeps_most_recent_steps(data: Path) -> None:
    schema = truncated_schema(3)
    reader = ParquetBatchReader(data / "train.parquet", schema, 64)
    got = [r for b in reader for r in batch_rows(b, schema)]
    raw = pq.read_table(data / "train.parquet").column("hist_item_ids").to_pylist()
    assert any(len(h) > 3 for h in raw)
    assert [r[4][2] for r in got] == [tuple(h[-3:]) for h in raw]
    assert got == expected_rows(data / "train.parquet", schema)


def test_directory_reads_files_in_sorted_order(data: Path) -> None:
    schema = synthetic_schema(CFG)
    rows = [r for b in ParquetBatchReader(data, schema, 50) for r in batch_rows(b, schema)]
    want = [r for s in ("train", "valid") for r in expected_rows(data / f"{s}.parquet", schema)]
    assert rows == want
    assert count_rows(data) == 341


def test_shuffle_is_deterministic_and_a_permutation(data: Path) -> None:
    schema = synthetic_schema(CFG)
    path = data / "train.parquet"

    def epoch(e: int, seed: int = 0) -> List[List[Row]]:
        r = ParquetBatchReader(path, schema, 16, shuffle=True, seed=seed, shuffle_window=100)
        r.set_epoch(e)
        return read_all(r)

    first = epoch(0)
    assert first == epoch(0)
    assert first != epoch(1) and first != epoch(0, seed=1)
    flat = [r for b in first for r in b]
    want = expected_rows(path, schema)
    assert flat != want
    assert sorted(flat) == sorted(want)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("length_buckets", [False, True])
def test_two_ranks_see_what_one_rank_with_double_batch_sees(
    data: Path, shuffle: bool, drop_last: bool, length_buckets: bool
) -> None:
    schema = synthetic_schema(CFG)
    kw = dict(shuffle=shuffle, seed=7, drop_last=drop_last, shuffle_window=64, length_buckets=length_buckets)
    path = data / "train.parquet"  # 301 rows: 21 global batches of 14, then 7 rows
    one = read_all(ParquetBatchReader(path, schema, 14, **kw))
    ranks = [
        read_all(ParquetBatchReader(path, schema, 7, rank=r, world_size=2, **kw)) for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == (21 if drop_last else 22)
    assert [a + b for a, b in zip(*ranks)] == one
    if not drop_last:
        assert [len(ranks[0][-1]), len(ranks[1][-1])] == [4, 3]


@pytest.mark.parametrize(
    "batch_size,world_size,drop_last,steps",
    [
        (10, 3, False, 10),  # 301 = 30 * 10 + 1: one row for 3 ranks is dropped
        (100, 3, False, 1),  # 301 = 300 + 1: same
        (40, 3, False, 3),  # 301 = 240 + 61: 21 + 20 + 20
        (50, 2, True, 3),
        (7, 1, False, 43),
        (400, 2, False, 1),  # a single partial global batch: 151 + 150
    ],
)
def test_len_matches_iteration(
    data: Path, batch_size: int, world_size: int, drop_last: bool, steps: int
) -> None:
    schema = synthetic_schema(CFG)
    for rank in range(world_size):
        r = ParquetBatchReader(
            data / "train.parquet", schema, batch_size,
            drop_last=drop_last, rank=rank, world_size=world_size,
        )
        got = [b.batch_size for b in r]
        assert len(got) == len(r) == steps, "every rank runs the same number of steps"
        assert all(n > 0 for n in got)


def test_oracle_auc(data: Path) -> None:
    auc = oracle_auc(data / "train.parquet", synthetic_schema(CFG))["click"]
    assert 0.6 < auc < 1.0


def _history_lengths(batches: List[List[Row]]) -> List[List[int]]:
    return [[len(r[4][-1]) for r in b] for b in batches]


@pytest.mark.parametrize("shuffle", [False, True])
def test_length_buckets_group_similar_lengths_and_keep_every_row_once(data: Path, shuffle: bool) -> None:
    schema = synthetic_schema(CFG)
    path = data / "train.parquet"  # 301 rows of 0..8 steps, row groups of 32

    def epoch(buckets: bool, e: int = 0) -> List[List[Row]]:
        r = ParquetBatchReader(path, schema, 8, shuffle=shuffle, seed=5, shuffle_window=96, length_buckets=buckets)
        r.set_epoch(e)
        return read_all(r)

    plain, bucketed = epoch(False), epoch(True)
    assert sorted(r for b in bucketed for r in b) == sorted(r for b in plain for r in b)
    assert [len(b) for b in bucketed] == [len(b) for b in plain]
    assert bucketed == epoch(True), "deterministic"
    if shuffle:
        assert bucketed != epoch(True, e=1)

    def padded(batches: List[List[Row]]) -> int:  # steps paid when each batch pads to its longest
        return sum(len(ls) * max(ls) for ls in _history_lengths(batches))

    real = sum(map(sum, _history_lengths(plain)))
    assert padded(bucketed) - real < 0.35 * (padded(plain) - real)


def test_length_buckets_resume_mid_epoch(data: Path) -> None:
    """start_batch=k yields exactly the batches after the first k, bucketed alike."""
    schema = synthetic_schema(CFG)
    kw = dict(shuffle=True, seed=2, shuffle_window=64, length_buckets=True, drop_last=True)
    path = data / "train.parquet"
    full = read_all(ParquetBatchReader(path, schema, 10, **kw))
    for k in (0, 7, 20):
        assert read_all(ParquetBatchReader(path, schema, 10, start_batch=k, **kw)) == full[k:]
