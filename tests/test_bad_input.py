"""The reader's bad-input policy (module docstring of interformer_rec/data/decode.py)."""

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from interformer_rec.config import Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.data.batch import Batch
from interformer_rec.data.reader import DataError, ParquetBatchReader, splitmix64, validate_file

N = 6
SCHEMA = Schema(
    labels=["y"],
    dense=["d0", "d1"],
    sparse=[
        SparseFeature("user", "user"),
        SparseFeature("tags", "tag"),  # multi-hot, pooled
        SparseFeature("item", "item"),  # target
    ],
    sequence=[SequenceFeature("hist_item", "item", 3), SequenceFeature("hist_cat", "cat", 3)],
    tables=[
        TableConfig("user", 10),
        TableConfig("tag", 8),
        TableConfig("item", 20),
        TableConfig("cat", 4),
    ],
    group_key="user",
)


def columns(**overrides: Any) -> Dict[str, Any]:
    """A valid table of N rows as {column: pyarrow array or Python list}, overridden."""
    cols: Dict[str, Any] = {
        "y": pa.array([0, 1, 0, 1, 1, 0], pa.int8()),
        "d0": pa.array(np.linspace(-1, 1, N), pa.float32()),
        "d1": pa.array(np.arange(N), pa.int64()),
        "user": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        "tags": pa.array([[1, 2], [3], [], [7, 0, 1], [5], [6]], pa.list_(pa.int64())),
        "item": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
        "hist_item": pa.array([[1], [2, 3], [], [4, 5, 6], [7], [8, 9]], pa.list_(pa.int64())),
        "hist_cat": pa.array([[0], [1, 2], [], [3, 0, 1], [2], [3, 3]], pa.list_(pa.int64())),
    }
    cols.update(overrides)
    return cols


def write(
    tmp_path: Path, name: str = "x.parquet", row_group_size: int = 1 << 20, **overrides: Any
) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns(**overrides)), path, row_group_size=row_group_size)
    return path


def read(path: Path, schema: Schema = SCHEMA, batch_size: int = 100) -> List[Batch]:
    return list(ParquetBatchReader(path, schema, batch_size))


def raises(path: Path, *parts: str, schema: Schema = SCHEMA) -> str:
    """Reading ``path`` fails with a DataError whose message holds every one of ``parts``."""
    with pytest.raises(DataError) as e:
        read(path, schema)
    msg = str(e.value)
    for p in (str(path), *parts):
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def test_valid_file_reads(tmp_path: Path) -> None:
    (b,) = read(write(tmp_path))
    assert b.batch_size == N
    assert b.sparse.to_dict()["tags"].to_dense()[3].tolist() == [7, 0, 1]
    assert b.groups.tolist() == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- opening


def test_missing_column(tmp_path: Path) -> None:
    cols = columns()
    del cols["d1"]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(cols), path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, column 'd1': missing column"):
        validate_file(path, SCHEMA)
    raises(path, "'d1'", "missing")


@pytest.mark.parametrize(
    "column,array,expected,actual",
    [
        ("d0", pa.array(["a"] * N), "integer or floating point", "string"),
        ("y", pa.array(["1"] * N), "integer, floating point or boolean", "string"),
        ("user", pa.array([1.0] * N), "integer (int64)", "double"),
        ("tags", pa.array([["a"]] * N), "integer (int64) or list<int64>", "list<element: string>"),
        # a target feature must be a scalar column
        ("item", pa.array([[1]] * N), "integer (int64)", "list<element: int64>"),
        ("hist_item", pa.array([1] * N), "list<int64>", "int64"),
    ],
)
def test_wrong_type(
    tmp_path: Path, column: str, array: pa.Array, expected: str, actual: str
) -> None:
    path = write(tmp_path, **{column: array})
    raises(path, f"column {column!r}", f"expected {expected}, got {actual}")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"this is not parquet" * 10)
    msg = raises(path, "not a readable Parquet file")
    assert "Traceback" not in msg


def test_corrupt_file_in_directory(tmp_path: Path) -> None:
    write(tmp_path, "a.parquet")
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        ParquetBatchReader(tmp_path, SCHEMA, 4)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        ParquetBatchReader(tmp_path / "nope.parquet", SCHEMA, 4)


# --------------------------------------------------------------------------- dense and labels


@pytest.mark.parametrize(
    "value,what", [(float("nan"), "not finite"), (float("inf"), "not finite"), (None, "null")]
)
def test_bad_dense_value(tmp_path: Path, value: Any, what: str) -> None:
    d0 = [0.0] * N
    d0[4] = value
    raises(write(tmp_path, d0=pa.array(d0, pa.float64())), "column 'd0'", "row 4", what)


@pytest.mark.parametrize("value,what", [(None, "null"), (2, "not 0 or 1"), (-1, "not 0 or 1")])
def test_bad_label(tmp_path: Path, value: Any, what: str) -> None:
    path = write(tmp_path, y=pa.array([0, 1, value, 0, 1, 0], pa.int64()))
    raises(path, "column 'y'", "row 2", what)


def test_row_numbers_are_file_relative_across_row_groups(tmp_path: Path) -> None:
    d0 = [0.0] * N
    d0[5] = float("nan")
    raises(write(tmp_path, row_group_size=2, d0=pa.array(d0)), "column 'd0'", "row 5")


# --------------------------------------------------------------------------- sparse and sequences


def test_null_pooled_is_an_empty_bag(tmp_path: Path) -> None:
    tags = pa.array([[1], None, [2], None, [], [3]], pa.list_(pa.int64()))
    (b,) = read(write(tmp_path, tags=tags))
    assert b.sparse["tags"].lengths().tolist() == [1, 0, 1, 0, 0, 1]
    assert b.sparse["tags"].values().tolist() == [1, 2, 3]


def test_null_target_fails(tmp_path: Path) -> None:
    item = pa.array([1, 2, None, 4, 5, 6], pa.int64())
    raises(write(tmp_path, item=item), "column 'item'", "row 2", "exactly one id")


def test_null_group_key_fails(tmp_path: Path) -> None:
    user = pa.array([1, None, 3, 4, 5, 6], pa.int64())
    raises(write(tmp_path, user=user), "column 'user'", "row 1", "null group key")


def test_null_id_inside_a_list(tmp_path: Path) -> None:
    tags = pa.array([[1], [2], [3], [4, None], [5], [6]], pa.list_(pa.int64()))
    raises(write(tmp_path, tags=tags), "column 'tags'", "row 3", "null id")


def test_empty_and_null_sequences(tmp_path: Path) -> None:
    hist_item = pa.array([[], None, [1], [], [2, 3], None], pa.list_(pa.int64()))
    hist_cat = pa.array([[], None, [0], None, [1, 1], []], pa.list_(pa.int64()))
    (b,) = read(write(tmp_path, hist_item=hist_item, hist_cat=hist_cat))
    seq = b.sequence.to_dict()
    assert seq["hist_item"].lengths().tolist() == [0, 0, 1, 0, 2, 0]
    assert seq["hist_cat"].lengths().tolist() == [0, 0, 1, 0, 2, 0]
    assert seq["item"].lengths().tolist() == [1] * N


def test_over_long_sequence_keeps_most_recent(tmp_path: Path) -> None:
    hist_item = pa.array([[1, 2, 3, 4, 5], [6], [], [7, 8, 9], [10, 11, 12, 13], [1]])
    hist_cat = pa.array([[0, 1, 2, 3, 0], [1], [], [2, 3, 0], [1, 2, 3, 0], [1]])
    (b,) = read(write(tmp_path, row_group_size=4, hist_item=hist_item, hist_cat=hist_cat))
    seq = b.sequence.to_dict()
    items = [x.tolist() for x in seq["hist_item"].to_dense()]
    assert items == [[3, 4, 5], [6], [], [7, 8, 9], [11, 12, 13], [1]]
    assert [x.tolist() for x in seq["hist_cat"].to_dense()][0] == [2, 3, 0]


def test_unequal_parallel_sequence_lengths(tmp_path: Path) -> None:
    hist_cat = pa.array([[0], [1, 2], [], [3, 0], [2], [3, 3]], pa.list_(pa.int64()))
    path = write(tmp_path, hist_cat=hist_cat)
    raises(path, "row 3", "'hist_item'", "'hist_cat'", "unequal lengths")


# --------------------------------------------------------------------------- id policy


@pytest.mark.parametrize(
    "column,array,row,bad,table,size",
    [
        ("user", pa.array([1, 2, 3, 10, 5, 6]), 3, 10, "user", 10),
        ("user", pa.array([1, 2, 3, 4, -1, 6]), 4, -1, "user", 10),
        ("tags", pa.array([[1], [2], [3], [4], [5], [0, 8]], pa.list_(pa.int64())), 5, 8, "tag", 8),
        ("item", pa.array([1, 2, 30, 4, 5, 6]), 2, 30, "item", 20),
        ("hist_item", pa.array([[1], [2, 20], [], [4, 5, 6], [7], [8, 9]]), 1, 20, "item", 20),
    ],
)
def test_reject_out_of_range_id(
    tmp_path: Path, column: str, array: pa.Array, row: int, bad: int, table: str, size: int
) -> None:
    path = write(tmp_path, **{column: array})
    raises(path, f"column {column!r}", f"row {row}", f"id {bad}", f"[0, {size}) of table {table!r}")


def test_reject_checks_steps_that_truncation_drops(tmp_path: Path) -> None:
    hist_item = pa.array([[99, 1, 2, 3], [2], [], [4, 5, 6], [7], [8, 9]], pa.list_(pa.int64()))
    hist_cat = pa.array([[0, 0, 0, 0], [1], [], [3, 0, 1], [2], [3, 3]], pa.list_(pa.int64()))
    raises(write(tmp_path, hist_item=hist_item, hist_cat=hist_cat), "'hist_item'", "row 0", "id 99")


def test_hash_policy_maps_ids_into_range_deterministically(tmp_path: Path) -> None:
    schema = dataclasses.replace(SCHEMA, id_policy="hash")
    big = [2**40, -5, 7, 10**15, 3, 19]
    path = write(
        tmp_path,
        user=pa.array([10**12, -1, 3, 4, 5, 6]),
        item=pa.array(big),
        hist_item=pa.array([[1], [2, 3], [], [4, 5, 2**62], [7], [8, 9]], pa.list_(pa.int64())),
    )
    (a,) = read(path, schema)
    (b,) = read(path, schema)
    for kjt_a, kjt_b in ((a.sparse, b.sparse), (a.sequence, b.sequence)):
        assert kjt_a.values().tolist() == kjt_b.values().tolist()
    for key, size in [("user", 10), ("tags", 8)]:
        v = a.sparse[key].values()
        assert ((v >= 0) & (v < size)).all()
    item = a.sequence["item"].values()
    assert ((item >= 0) & (item < 20)).all()
    want = (splitmix64(np.array(big)) % np.uint64(20)).astype(np.int64)
    assert item.tolist() == want.tolist()
    assert a.groups.tolist()[:2] == [10**12, -1], "the group key keeps its raw values"


def test_splitmix64_reference_value() -> None:
    # first output of the reference splitmix64 generator seeded with 0
    assert int(splitmix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF
