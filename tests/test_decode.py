"""The one decode path (interformer_rec/data/decode.py): the training reader and the
serving encoder give the same rows and the same errors for the same input."""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from interformer_rec.arrays import DataError, Jagged, splitmix64
from interformer_rec.data.decode import InFile, InValues, Rows, apply_id_policy, decode_table
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.serving.features import FeatureSpec, InputError, encode_rows, encode_table
from interformer_rec.schema import Schema, SparseFeature, TableConfig
from test_bad_input import N, SCHEMA, columns

GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_stream(seed: int, n: int) -> list:
    """The first ``n`` outputs of the splitmix64 generator seeded with ``seed``: state
    ``+= GOLDEN`` then mix, so output ``k`` is our finaliser of ``seed + k * GOLDEN``."""
    state = np.array([(seed + k * GOLDEN) % 2**64 for k in range(n)], np.uint64).view(np.int64)
    return [int(v) for v in splitmix64(state)]


def test_splitmix64_matches_the_published_sequences() -> None:
    # Vigna's splitmix64.c seeded with 0 (also java.util.SplittableRandom's mix64), and
    # the Rosetta Code "Pseudo-random numbers/Splitmix64" task, seed 1234567
    assert splitmix64_stream(0, 3) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert splitmix64_stream(1234567, 5) == [
        6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821,
    ]


def test_negative_ids_hash_as_their_uint64_bits() -> None:
    assert int(splitmix64(np.array([-1]))[0]) == splitmix64_stream(2**64 - 1, 1)[0]


def write(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(columns(**overrides)), path)
    return path


def reader_error(path: Path, schema=SCHEMA) -> str:
    with pytest.raises(DataError) as e:
        list(ParquetBatchReader(path, schema, batch_size=100))
    return str(e.value)


def server_error(path: Path, schema=SCHEMA) -> str:
    with pytest.raises(InputError) as e:
        encode_table(FeatureSpec(schema), pq.read_table(path), str(path))
    return str(e.value)


def _list(rows: list) -> pa.Array:
    return pa.array(rows, pa.list_(pa.int64()))


@pytest.mark.parametrize(
    "column,array,message",
    [
        ("d0", pa.array([0.0, 1.0, float("nan"), 0.0, 0.0, 0.0]), "row 2: value nan is not finite (float32)"),
        ("d1", pa.array([0, 1, 2, None, 4, 5], pa.int64()), "row 3: null value"),
        ("user", pa.array([1, 2, 3, 4, 10, 6]), "row 4: id 10 outside [0, 10) of table 'user'"),
        ("item", pa.array([1, None, 3, 4, 5, 6], pa.int64()), "row 1: null, but a target feature needs exactly one id"),
        ("tags", _list([[1], [2], [3], [4, None], [5], [6]]), "row 3: null id inside a list"),
        ("tags", pa.array([[1], [2], [3], [4], [2**63], [6]], pa.list_(pa.uint64())), "row 4: id 9223372036854775808 does not fit"),
        ("hist_item", _list([[99, 1], [2, 3], [], [4, 5, 6], [7], [8, 9]]), "row 0: id 99 outside [0, 20)"),
        ("hist_cat", _list([[0], [1, 2], [], [3, 0], [2], [3, 3]]), "row 3: parallel sequences have unequal lengths"),
        ("item", pa.array([[1]] * N), "expected integer (int64), got list<element: int64>"),
    ],
)
def test_reader_and_server_fail_alike(tmp_path: Path, column: str, array: pa.Array, message: str) -> None:
    path = write(tmp_path, **{column: array})
    msg = reader_error(path)
    assert msg == server_error(path)
    assert msg.startswith(f"{path}, ") and message in msg
    if "parallel" not in message:  # a row of several columns names no single column
        assert f"column {column!r}" in msg


def test_hashed_rows_are_the_same_from_file_rows_and_request(tmp_path: Path) -> None:
    schema = dataclasses.replace(SCHEMA, id_policy="hash")
    raw = columns(user=pa.array([10**12, -1, 3, 4, 5, 6]), item=pa.array([2**40, -5, 7, 10**15, 3, 19]))
    table = pa.table(raw)
    train = decode_table(table, schema, InFile("t"))
    served = encode_table(FeatureSpec(schema), table)
    by_rows = encode_rows(FeatureSpec(schema), table.to_pylist())
    for a, b in ((train, served), (train, by_rows)):
        for x, y in zip(a.model_inputs(), b.model_inputs()):
            np.testing.assert_array_equal(x, y)
    item = train.unpooled[0].values
    assert item.tolist() == (splitmix64(np.array([2**40, -5, 7, 10**15, 3, 19])) % np.uint64(20)).astype(np.int64).tolist()
    assert served.labels is None and train.labels is not None and train.groups.tolist()[:2] == [10**12, -1]


def test_where_formats() -> None:
    assert str(InFile("f.parquet", row0=10).error("bad", "c", 2)) == "f.parquet, column 'c', row 12: bad"
    assert str(InFile("f.parquet").error("bad")) == "f.parquet: bad"
    rows = InValues(lambda i: f"rows[{i}]")
    assert str(rows.error("bad", "c", 3)) == "rows[3].c: bad" and str(rows.error("bad", row=3)) == "rows[3]: bad"
    with pytest.raises(DataError, match=r"^rows\[1\]\.x: id 7 outside \[0, 5\) of table 't'"):
        apply_id_policy(Jagged(np.array([1, 1]), np.array([0, 7])), "x", _one_table("reject"), "t", rows)


def _one_table(policy: str) -> Schema:
    return Schema(labels=["y"], sparse=[SparseFeature("x", "t")], tables=[TableConfig("t", 5)], id_policy=policy)


def test_rows_take_slice_concat_and_model_inputs() -> None:
    j = Jagged(np.array([2, 0, 1]), np.array([5, 6, 7]))
    rows = Rows(np.arange(6, dtype=np.float32).reshape(3, 2), [j], [j.tail(1)], np.ones((3, 1), np.float32), np.arange(3))
    back = Rows.concat([rows.slice(0, 1), rows.slice(1, 3)]).take(np.array([2, 0]))
    assert back.pooled[0].values.tolist() == [7, 5, 6] and back.unpooled[0].values.tolist() == [7, 6]
    assert back.groups.tolist() == [2, 0] and back.labels.shape == (2, 1)
    dense, sv, sl, qv, ql = back.model_inputs()
    assert dense.tolist() == [[4, 5], [0, 1]] and sl.tolist() == [[1, 2]] and ql.dtype == np.int32
    assert not np.shares_memory(dense, rows.dense)
    served = Rows(rows.dense, [], rows.unpooled)  # no pooled features, no labels
    assert served.model_inputs()[2].shape == (0, 3) and Rows.concat([served, served]).labels is None
