"""``interformer-rec inspect``: null rates, distinct estimates, list-length histograms,
label rates and schema problems, from one streaming pass over row groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from interformer_rec.cli import main
from interformer_rec.config import Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.data.inspect import KMV, format_report, inspect_data

SCHEMA = Schema(
    labels=["y"],
    dense=["d"],
    sparse=[SparseFeature("user", "user"), SparseFeature("item", "item")],
    sequence=[SequenceFeature("hist", "item", 3), SequenceFeature("hist_cat", "cat", 3)],
    tables=[TableConfig("user", 100), TableConfig("item", 10), TableConfig("cat", 5)],
    group_key="user",
)


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    n = 1000
    rng = np.random.default_rng(0)
    d = rng.normal(size=n)
    d[[5, 7]] = np.nan
    lengths = np.arange(n) % 6  # 0..5: rows with 4, 5 steps exceed max_len 3
    hist = [list(rng.integers(0, 10, k)) for k in lengths]
    hist_cat = [list(rng.integers(0, 5, k)) for k in lengths]
    hist_cat[11] = hist_cat[11][:-1]  # unequal parallel lengths in row 11 (length 5)
    item = rng.integers(0, 10, n)
    item[[1, 2, 3]] = 10  # outside the item table
    user = pa.array(np.arange(n) % 100, mask=np.arange(n) % 10 == 0)  # 10% null
    table = pa.table({
        "y": pa.array((np.arange(n) % 4 == 0).astype(np.int8)),  # label rate 0.25
        "d": pa.array(d),
        "user": user,
        "item": pa.array(item),
        "hist": pa.array(hist, pa.list_(pa.int64())),
        "hist_cat": pa.array(hist_cat, pa.list_(pa.int64())),
        "const": pa.array(np.ones(n)),
    })
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, row_group_size=128)
    return path


def test_kmv_exact_below_k_and_close_above() -> None:
    s = KMV(k=256)
    s.add(np.arange(200))
    s.add(np.arange(100))
    assert s.estimate() == 200
    big = KMV(k=4096)
    rng = np.random.default_rng(1)
    for chunk in np.array_split(rng.permutation(10**6)[:200_000], 37):  # 200k distinct, streamed
        big.add(np.concatenate([chunk, chunk[:100]]))  # duplicates do not count
    assert abs(big.estimate() / 200_000 - 1) < 0.05


def test_report_columns(data: Path) -> None:
    r = inspect_data(data)
    assert r["rows"] == 1000 and r["row_groups"] == 8
    c = r["columns"]
    assert c["user"]["null_rate"] == pytest.approx(0.1)
    assert c["user"]["distinct_estimate"] == 90  # ids 1..99 except multiples of 10
    assert c["item"]["distinct_estimate"] == 11
    assert c["d"]["non_finite"] == 2
    hist = c["hist"]["length_histogram"]
    assert hist["0"] == hist["1"] == 167 and hist["2-4"] == 500 and hist["5-9"] == 166
    assert c["hist"]["max_length"] == 5
    assert c["y"]["mean"] == pytest.approx(0.25)
    assert any("'const' is constant" in p for p in r["problems"])
    assert any("'d' has 2 NaN/infinite" in p for p in r["problems"])


def test_report_schema_checks(data: Path) -> None:
    r = inspect_data(data, SCHEMA)
    assert r["labels"] == {"y": 0.25}
    checks = r["schema_checks"]
    assert checks["out_of_range_ids"]["item"] == 3
    assert checks["truncated_sequences"]["hist"] == 332  # lengths 4 and 5: 166 rows each
    assert checks["unequal_parallel_sequences"]["hist/hist_cat"] == 1
    text = "\n".join(r["problems"])
    assert "'item': 3 ids outside its table" in text
    assert "'hist': 332 rows (33.2%) longer than max_len" in text
    assert "hist/hist_cat: 1 rows with unequal parallel" in text
    out = format_report(r)
    assert "label rate: y 0.2500" in out and "list lengths" in out and "problems:" in out


def test_missing_schema_column_is_a_problem(data: Path) -> None:
    schema = Schema(labels=["y"], dense=["nope"], tables=[])
    r = inspect_data(data, schema)
    assert any("schema column 'nope' is missing" in p for p in r["problems"])


def test_reads_row_group_by_row_group(data: Path, monkeypatch) -> None:
    """Streaming: never reads a whole file."""
    def whole(*a, **k):
        raise AssertionError("read the whole file")

    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    assert inspect_data(data)["rows"] == 1000


def test_cli(data: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.yaml"
    schema = {
        "labels": ["y"], "dense": ["d"],
        "sparse": [{"name": "user", "table": "user"}, {"name": "item", "table": "item"}],
        "sequence": [{"name": "hist", "table": "item", "max_len": 3},
                     {"name": "hist_cat", "table": "cat", "max_len": 3}],
        "tables": [{"name": "user", "num_embeddings": 100}, {"name": "item", "num_embeddings": 10},
                   {"name": "cat", "num_embeddings": 5}],
        "group_key": "user",
    }
    cfg.write_text(yaml.safe_dump({"data": {"train": str(data), "valid": str(data), "schema": schema}}))
    assert main(["inspect", str(data), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "1000 rows in 1 file(s), 8 row groups" in out and "label rate: y 0.2500" in out
    assert main(["inspect", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["columns"]["user"]["null_rate"] == pytest.approx(0.1)
    assert main(["inspect", str(data), "--config", str(cfg), "--strict"]) == 1
    assert main(["inspect", str(tmp_path / "nope.parquet")]) == 2


# --------------------------------------------------------------------------- --strict = the reader's rules


def _float_data(tmp_path: Path, **overrides) -> Path:
    from test_sequence_floats import write

    return write(tmp_path, **overrides)


@pytest.mark.parametrize(
    "overrides,policy,message",
    [
        ({"dwell": pa.array([["1"], ["2", "3"], [], ["4", "5", "6", "7"], ["8"]])}, "reject", "column 'dwell': expected"),
        ({"dwell": pa.array([[1.5], [2.0, None], [], [4.0, 5.0, 6.0, 7.0], [8.0]])}, "reject", "row 1: null value inside a list"),
        ({"dwell": pa.array([[1.5], [2.0, 3.0], [], [4.0, 1e300, 6.0, 7.0], [8.0]])}, "reject", "row 3: value inf is not finite"),
        ({"d0": pa.array(["a", "b", "c", "d", "e"])}, "reject", "column 'd0': expected integer or floating point"),
        ({"y": pa.array([0, 0.5, 0, 1, 1])}, "reject", "column 'y', row 1: label 0.5 is not 0 or 1"),
        ({"y": pa.array(["0", "1", "0", "1", "1"])}, "reject", "column 'y': expected integer, floating point or boolean"),
        ({"user": pa.array([1, 2, 2**64 - 1, 4, 5], pa.uint64())}, "hash", "row 2: id 18446744073709551615 does not fit in int64"),
        ({"user": pa.array([1, 2, 3, 4, 10])}, "reject", "row 4: id 10 outside [0, 10) of table 'user'"),
    ],
    ids=["floats-as-strings", "null-float", "float-1e300", "dense-strings", "label-0.5", "labels-as-strings",
         "uint64-id", "id-outside-table"],
)
def test_strict_fails_every_file_the_reader_rejects(tmp_path: Path, overrides, policy: str, message: str) -> None:
    """Issue 33, item 7: inspect decodes with the reader's own code, so whatever the
    reader rejects is a problem carrying the reader's message."""
    import dataclasses

    from test_sequence_floats import float_schema

    from interformer_rec.arrays import DataError
    from interformer_rec.data.reader import ParquetBatchReader

    schema = dataclasses.replace(float_schema(), id_policy=policy)
    path = _float_data(tmp_path, **overrides)
    with pytest.raises(DataError) as reader_error:
        list(ParquetBatchReader(path, schema, 100))
    assert message in str(reader_error.value)
    problems = inspect_data(path, schema)["problems"]
    assert any("the reader rejects" in p and str(reader_error.value) in p for p in problems), problems


def test_strict_passes_what_the_reader_accepts(tmp_path: Path) -> None:
    from test_sequence_floats import float_schema

    path = _float_data(tmp_path)
    assert not [p for p in inspect_data(path, float_schema())["problems"] if "reader rejects" in p]
