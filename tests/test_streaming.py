"""Streaming: every row exactly once per epoch across ranks x DataLoader workers; resume
with workers; bounded memory of conversion and reading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from interformer_rec.config import Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.data.reader import DataError, ParquetBatchReader

SCHEMA = Schema(
    labels=["y"],
    dense=["d"],
    sparse=[SparseFeature("item", "item")],
    sequence=[SequenceFeature("hist", "item", 4)],
    tables=[TableConfig("item", 50)],
    group_key="rid",  # the row id travels in Batch.groups
)


def write_rows(path: Path, start: int, n: int, row_group_size: int) -> None:
    rid = np.arange(start, start + n)
    lengths = rid % 5
    hist = [list((r + np.arange(k)) % 50) for r, k in zip(rid, lengths)]
    table = pa.table(
        {
            "y": pa.array(rid % 2, pa.int8()),
            "d": pa.array(rid.astype(np.float32)),
            "item": pa.array(rid % 50),
            "hist": pa.array(hist, pa.list_(pa.int64())),
            "rid": pa.array(rid),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two files, 1003 rows (ids 0..1002), ragged row groups."""
    d = tmp_path_factory.mktemp("stream")
    write_rows(d / "a.parquet", 0, 611, row_group_size=97)
    write_rows(d / "b.parquet", 611, 392, row_group_size=50)
    return d


def rows_of(batches) -> List[List[int]]:
    return [b.groups.tolist() for b in batches]


def check_batch_consistency(batch) -> None:
    """The row id is carried consistently by every column of the row."""
    rid = batch.groups.numpy()
    assert (batch.dense[:, 0].numpy() == rid).all()
    assert (batch.sequence["item"].values().numpy() == rid % 50).all()
    assert (batch.sequence["hist"].lengths().numpy() == np.minimum(rid % 5, 4)).all()


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_across_2_ranks_x_2_workers(data: Path, shuffle: bool) -> None:
    seen: Counter = Counter()
    steps = []
    prev_orders = None
    for epoch in (0, 1):
        epoch_rows: Counter = Counter()
        orders = []
        for rank in (0, 1):
            reader = ParquetBatchReader(
                data, SCHEMA, 16, rank=rank, world_size=2, shuffle=shuffle, seed=5,
                shuffle_window=150,
            )
            reader.set_epoch(epoch)
            loader = reader.loader(num_workers=2)  # workers send numpy, tensors built here
            batches = list(loader)
            for b in batches:
                check_batch_consistency(b)
            assert len(batches) == len(reader), "len(reader) counts the batches of all workers"
            steps.append(len(batches))
            rows = [r for b in rows_of(batches) for r in b]
            epoch_rows.update(rows)
            orders.append(rows)
        # 1003 rows = 31 global batches of 32 + 11 rows split 6/5: nothing dropped
        assert sorted(epoch_rows) == list(range(1003))
        assert set(epoch_rows.values()) == {1}, "no row twice within an epoch"
        seen.update(epoch_rows)
        if shuffle and epoch == 1:
            assert orders != prev_orders, "a new epoch reshuffles"
        prev_orders = orders
    assert len(set(steps)) == 1, "every rank runs the same number of steps"
    assert set(seen.values()) == {2}


def test_workers_yield_the_same_batches_as_one_process(data: Path) -> None:
    """Workers change only the order in which whole batches arrive, not the batches."""
    for rank in (0, 1):
        kw = dict(rank=rank, world_size=2, shuffle=True, seed=1, shuffle_window=200)
        single = rows_of(ParquetBatchReader(data, SCHEMA, 10, **kw))
        multi = rows_of(DataLoader(ParquetBatchReader(data, SCHEMA, 10, **kw), batch_size=None, num_workers=3))
        assert sorted(map(tuple, multi)) == sorted(map(tuple, single))


def test_loader_equals_a_dataloader_over_the_reader(data: Path) -> None:
    """reader.loader(N): the batches and order of DataLoader(reader, num_workers=N)."""
    reader = ParquetBatchReader(data, SCHEMA, 24, shuffle=True, seed=3, shuffle_window=100)
    plain = list(DataLoader(reader, batch_size=None, num_workers=2))
    packed = list(reader.loader(num_workers=2))
    assert len(packed) == len(reader.loader(2)) == len(plain)
    for a, b in zip(plain, packed):
        assert a.dense.equal(b.dense) and a.labels.equal(b.labels) and a.groups.equal(b.groups)
        for x, y in ((a.sparse, b.sparse), (a.sequence, b.sequence)):
            assert x.keys() == y.keys() and x.values().equal(y.values()) and x.lengths().equal(y.lengths())
            assert y.lengths().dtype == torch.int32 and y.values().dtype == torch.int64


def test_worker_ranges_partition_the_epoch(data: Path) -> None:
    reader = ParquetBatchReader(data, SCHEMA, 7)
    total = len(reader)
    for n in (1, 2, 3, 5):
        ranges = [reader.worker_range(w, n) for w in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), "contiguous, disjoint"
        sizes = [hi - lo for lo, hi in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_with_start_batch_sees_the_rest_exactly_once(data: Path, num_workers: int) -> None:
    """Consume k batches of an epoch, 'crash', resume with start_batch=k: the two runs
    together see every row of every rank exactly once."""
    k = 13
    for rank in (0, 1):
        kw = dict(rank=rank, world_size=2, shuffle=True, seed=9, shuffle_window=120)
        loader = DataLoader(ParquetBatchReader(data, SCHEMA, 8, **kw), batch_size=None, num_workers=num_workers)
        full = rows_of(loader)
        first = full[:k]
        resumed_reader = ParquetBatchReader(data, SCHEMA, 8, start_batch=k, **kw)
        rest = rows_of(DataLoader(resumed_reader, batch_size=None, num_workers=num_workers))
        assert len(rest) == len(resumed_reader) == len(full) - k
        assert sorted(map(tuple, first + rest)) == sorted(map(tuple, full))
        if num_workers == 0:
            assert rest == full[k:], "without workers the resumed run continues the stream"


# --------------------------------------------------------------------------- per-rank decoding


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_rank_decodes_only_the_rows_of_its_slices(data: Path, world: int, monkeypatch) -> None:
    """Decoding (checks, id policy, jagged arrays) runs once per row a rank trains on:
    the rows decoded per rank fall as 1 / world_size (shuffled, length buckets on)."""
    from interformer_rec.data import reader as reader_mod

    real = reader_mod.decode_table

    def counting(table, schema, where, training=True):
        counting.rows += table.num_rows
        return real(table, schema, where, training)

    counting.rows = 0
    monkeypatch.setattr(reader_mod, "decode_table", counting)
    per_rank = []
    for rank in range(world):
        counting.rows = 0
        r = ParquetBatchReader(data, SCHEMA, 40 // world, rank=rank, world_size=world, shuffle=True, seed=2,
                               shuffle_window=200, length_buckets=True, drop_last=True)
        yielded = sum(len(b.labels) for b in r)
        assert counting.rows == yielded, "every decoded row is one this rank trains on"
        per_rank.append(counting.rows)
    assert sum(per_rank) == 1003 // 40 * 40 and max(per_rank) - min(per_rank) == 0


def _write_with_bad_label(path: Path, bad_row: int) -> None:
    write_rows(path, 0, 200, row_group_size=97)
    table = pq.read_table(path)
    y = table.column("y").to_numpy().copy()
    y[bad_row] = 2
    pq.write_table(table.set_column(0, "y", pa.array(y, pa.int8())), path, row_group_size=97)


def test_a_rank_alone_does_not_decode_another_ranks_bad_row(tmp_path: Path) -> None:
    # 2 ranks, batch 8, no shuffle: rows 56..63 (global batch 3) are rank 1's
    _write_with_bad_label(tmp_path / "a.parquet", 60)
    kw = dict(batch_size=8, world_size=2, length_buckets=False)
    assert len(list(ParquetBatchReader(tmp_path / "a.parquet", SCHEMA, rank=0, **kw))) == 13
    with pytest.raises(DataError, match=r"a.parquet, column 'y', row 60: "):
        list(ParquetBatchReader(tmp_path / "a.parquet", SCHEMA, rank=1, **kw))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_bad_row_on_rank_1_stops_rank_0_at_the_same_step(tmp_path: Path, num_workers: int) -> None:
    """With the trainer's data group the ranks agree after each batch: rank 0, which
    never decodes row 60, raises rank 1's error, naming the row, at the same step."""
    from dist_helpers import _free_port, reader_ranks, run_ranks

    _write_with_bad_label(tmp_path / "a.parquet", 60)
    run_ranks(reader_ranks, (2, _free_port(), str(tmp_path / "a.parquet"), str(tmp_path / "out"), num_workers), 2)
    got = [json.loads((tmp_path / f"out.{rank}").read_text()) for rank in (0, 1)]
    assert got[0] == got[1], got
    assert got[0]["error"].startswith(f"{tmp_path / 'a.parquet'}, column 'y', row 60: ")
    assert got[0]["step"] == 0  # rank 1 decodes row group 0 (rows 0..96) for its first batch


# --------------------------------------------------------------------------- memory

# Peak RSS from /proc/self/status VmHWM: ru_maxrss would carry pytest's high-water
# mark into the child across fork + exec.
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import re, sys
    from pathlib import Path
    from interformer_rec.data.converters.criteo import convert_criteo
    from config_schemas import config_schema
    from interformer_rec.data.reader import ParquetBatchReader

    def vm(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    raw, out = Path(sys.argv[1]), Path(sys.argv[2])
    base = vm("VmRSS")
    convert_criteo(raw, out, row_group_size=2048, block_bytes=1 << 18)
    conv = vm("VmHWM")
    n = 0
    for b in ParquetBatchReader(out / "raw.parquet", config_schema("criteo", all=1000), 256, shuffle=True,
                                shuffle_window=4096):
        n += b.batch_size
    read = vm("VmHWM")
    print(base, conv, read, n)
    """
)


def _memory_run(tmp_path: Path, n: int) -> List[int]:
    """``[base, conversion peak, reading peak, rows]`` (kB) of converting and reading an
    ``n``-row random Criteo file in a fresh process."""
    rng = np.random.default_rng(0)
    pool = 4096  # lines resampled from a pool of random ones
    ints = rng.integers(0, 1000, (pool, 13)).astype(str)
    cats = np.char.mod("%08x", rng.integers(0, 2**32, (pool, 26)))
    labels = rng.integers(0, 2, pool).astype(str)
    lines = ["\t".join([y, *i, *c]).encode() for y, i, c in zip(labels, ints, cats)]
    d = tmp_path / str(n)
    d.mkdir()
    (d / "raw.txt").write_bytes(b"\n".join([lines[i] for i in rng.integers(0, pool, n)]) + b"\n")
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(d / "raw.txt"), str(d / "out")],
                         capture_output=True, text=True, timeout=240, cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stderr
    out = list(map(int, res.stdout.split()))
    assert out[3] == n
    return out


def test_conversion_and_reading_memory_do_not_grow_with_the_input(tmp_path: Path) -> None:
    """A small proxy of benchmarks/data.py's larger-than-budget run: converting and
    reading 4x more rows (15 -> 60 MB of text) takes (nearly) the same peak memory."""
    small, big = _memory_run(tmp_path, 60_000), _memory_run(tmp_path, 240_000)
    size_kb = (tmp_path / "240000" / "raw.txt").stat().st_size / 1024
    for name, k in (("conversion", 1), ("reading", 2)):
        grow_small, grow_big = small[k] - small[0], big[k] - big[0]
        assert grow_big - grow_small < 12_000, f"{name} peak grew {grow_small} -> {grow_big} kB with 4x input"
        assert grow_big < size_kb, f"{name} held {grow_big} kB for a {size_kb:.0f} kB file"


# --------------------------------------------------------------------------- reader property

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DEFECTS = ["nan", "inf", "null_dense", "label_2", "null_label", "item_out", "item_neg", "null_item",
           "hist_out", "null_in_hist"]


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_reader_never_returns_a_bad_row(tmp_path_factory, data) -> None:
    """Random defects in random rows: the reader either fails with a DataError naming the
    file and a defective row of the first defective row group, or (no defect) returns
    every row exactly as written. Never a silently wrong batch."""
    from interformer_rec.data.reader import DataError

    n = data.draw(st.integers(1, 40))
    rg = data.draw(st.integers(1, 16))
    rid = np.arange(n)
    y = [int(v) for v in rid % 2]
    d: list = [float(v) for v in rid]
    item: list = [int(v) for v in rid % 50]
    hist: list = [list(map(int, (r + np.arange(r % 5)) % 50)) for r in rid]
    bad = set()
    for row, kind in data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(DEFECTS)), max_size=3)):
        bad.add(row)
        if kind == "nan":
            d[row] = float("nan")
        elif kind == "inf":
            d[row] = float("-inf")
        elif kind == "null_dense":
            d[row] = None
        elif kind == "label_2":
            y[row] = 2
        elif kind == "null_label":
            y[row] = None
        elif kind == "item_out":
            item[row] = 50
        elif kind == "item_neg":
            item[row] = -1
        elif kind == "null_item":
            item[row] = None
        elif kind == "hist_out":
            hist[row] = hist[row] + [99]
        else:
            hist[row] = hist[row] + [None]
    path = tmp_path_factory.mktemp("prop") / "p.parquet"
    pq.write_table(pa.table({"y": pa.array(y, pa.int64()), "d": pa.array(d, pa.float64()),
                             "item": pa.array(item, pa.int64()), "hist": pa.array(hist, pa.list_(pa.int64())),
                             "rid": pa.array(rid)}), path, row_group_size=rg)
    reader = ParquetBatchReader(path, SCHEMA, data.draw(st.integers(1, 12)))
    if bad:
        with pytest.raises(DataError) as e:
            list(reader)
        msg = str(e.value)
        assert str(path) in msg
        row = int(re.search(r"row (\d+)", msg).group(1))
        assert row in bad and row // rg == min(bad) // rg, msg
    else:
        batches = list(reader)
        for b in batches:
            check_batch_consistency(b)
            assert (b.labels[:, 0].numpy() == b.groups.numpy() % 2).all()
        assert [r for b in batches for r in b.groups.tolist()] == rid.tolist()
