"""One decode path for training and serving: Arrow columns (or values already parsed
from a request) to checked, policed :class:`Rows`, under one bad-input policy.

The training reader (``data/reader.py``) and the serving encoder
(``serving/features.py``) both call this module, so a row scores the same whether it
was read for training or sent to the server. Only numpy and pyarrow are imported (no
torch): conversion jobs and the predictor stay light.

Bad-input policy
----------------
Every error is a :class:`~interformer_rec.arrays.DataError` built by a :class:`Where`,
naming the source and, where it applies, the column and the row.

* Column types: labels and dense: integer or floating point, labels also boolean; pooled
  sparse: integer or ``list<integer>``; target sparse (sharing a table with a sequence):
  integer; sequences: ``list<integer>``; group key: integer. A missing column or another
  type is an error.
* Dense and label columns: a null, NaN or infinite (in float32) value is an error; a
  label outside {0, 1} is an error.
* Sparse columns: a null row is an empty bag for a pooled feature and an error for a
  target feature (it needs exactly one id). A null id inside a list is an error, and so
  is an id that does not fit in int64.
* Sequences: a null row is an empty sequence. The parallel sequences of one row must
  have equal lengths, else an error names the row and the columns. A sequence longer
  than ``max_len`` keeps its ``max_len`` most recent (last) steps.
* Sequence floats (``list<integer or floating>``, parallel to the sequences): a null
  row is an empty list (so beside a non-empty history it is a length mismatch); a null
  value inside a list, or a value that is NaN or infinite in float32, is an error naming
  the row; their lengths must equal the sequences' in every row (the same unequal
  lengths error); they are cut to the same ``max_len`` most recent steps.
* Ids, ``schema.id_policy == "reject"``: an id outside ``[0, num_embeddings)`` of its
  table is an error naming the table and its size (every id of a column is checked,
  including steps that truncation would drop). ``"hash"``: every id of every sparse and
  sequence column is mixed by splitmix64 (as a 64-bit unsigned integer) and taken modulo
  ``num_embeddings``, so collisions are by design and no id is silently wrapped.
  ``"managed_collision"`` (a table's own policy, or the schema's): any int64 id is
  accepted and mixed by splitmix64 into ``[0, input_hash_size)``; the model's
  managed-collision module gives it a row. The policy is each table's
  (``Schema.policy_of``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from interformer_rec.arrays import DataError, Jagged, _row_of, splitmix64
from interformer_rec.config import Schema
from interformer_rec.data.sources import open_input

if TYPE_CHECKING:
    import torch

Column = Union[pa.Array, pa.ChunkedArray]
Paths = Union[str, Path, Sequence[Union[str, Path]]]
INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- where


class Where(Protocol):
    """Where rows come from: builds the error for ``column`` (if any) at ``row`` (if
    any, counted from 0 within the rows being decoded)."""

    def error(self, msg: str, column: Optional[str] = None, row: Optional[int] = None) -> DataError: ...


@dataclass(frozen=True)
class InFile:
    """Rows ``row0..`` of a file or table ``source``: ``"<source>, column 'c', row r: msg"``
    with ``r`` counted from the file's first row. With ``rows``, the rows being decoded
    are a selection: decoded row ``i`` is the file's row ``row0 + rows[i]``."""

    source: str
    row0: int = 0
    rows: Optional[np.ndarray] = field(default=None, compare=False)

    def error(self, msg: str, column: Optional[str] = None, row: Optional[int] = None) -> DataError:
        where = [str(self.source)]
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {self.row0 + (row if self.rows is None else int(self.rows[row]))}")
        return DataError(f"{', '.join(where)}: {msg}")


@dataclass(frozen=True)
class InValues:
    """Rows given as Python values: ``"<label(r)>.<column>: msg"``, or
    ``"<label(r)>: msg"`` without a column (e.g. ``rows[3].item_id: ...``)."""

    label: Callable[[int], str]

    def error(self, msg: str, column: Optional[str] = None, row: Optional[int] = None) -> DataError:
        at = self.label(0 if row is None else row)
        return DataError(f"{at}.{column}: {msg}" if column is not None else f"{at}: {msg}")


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _first_null(arr: pa.Array) -> int:
    """Position of the first null of ``arr`` (which has one)."""
    return _first(arr.is_null().to_numpy(zero_copy_only=False))


def _no_nulls(arr: pa.Array, msg: str, column: str, where: Where) -> None:
    """An error ``msg`` at the first null row of ``arr``, if it has one."""
    if arr.null_count:
        raise where.error(msg, column, _first_null(arr))


# --------------------------------------------------------------------------- the one row container


@dataclass
class Rows:
    """``n`` checked rows: numpy counterparts of a training ``Batch`` and of the exported
    model's inputs.

    Attributes:
        dense: ``[n, n_dense]`` float32.
        pooled: one :class:`Jagged` per ``Schema.pooled_features`` (ids policed).
        unpooled: one :class:`Jagged` per ``Schema.unpooled_keys`` (sequences truncated).
        labels: ``[n, tasks]`` float32, or ``None`` when not decoded (serving).
        groups: ``[n]`` int64 group keys, or ``None`` when not decoded (serving).
        floats: one float32 :class:`Jagged` per ``Schema.sequence_floats`` (lengths
            equal to the sequences', truncated like them).
    """

    dense: np.ndarray
    pooled: List[Jagged]
    unpooled: List[Jagged]
    labels: Optional[np.ndarray] = None
    groups: Optional[np.ndarray] = None
    floats: List[Jagged] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, idx: np.ndarray) -> "Rows":
        """Rows ``idx`` (``[m]`` int64), in that order."""
        return Rows(
            self.dense[idx],
            [j.take(idx) for j in self.pooled],
            [j.take(idx) for j in self.unpooled],
            None if self.labels is None else self.labels[idx],
            None if self.groups is None else self.groups[idx],
            [j.take(idx) for j in self.floats],
        )

    def slice(self, start: int, stop: int) -> "Rows":
        return Rows(
            self.dense[start:stop],
            [j.slice(start, stop) for j in self.pooled],
            [j.slice(start, stop) for j in self.unpooled],
            None if self.labels is None else self.labels[start:stop],
            None if self.groups is None else self.groups[start:stop],
            [j.slice(start, stop) for j in self.floats],
        )

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if len(parts) == 1:
            return parts[0]

        def cat(arrays: List[Optional[np.ndarray]]) -> Optional[np.ndarray]:
            return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

        return Rows(
            np.concatenate([p.dense for p in parts]),
            [Jagged.concat(js) for js in zip(*(p.pooled for p in parts))],
            [Jagged.concat(js) for js in zip(*(p.unpooled for p in parts))],
            cat([p.labels for p in parts]),
            cat([p.groups for p in parts]),
            [Jagged.concat(js) for js in zip(*(p.floats for p in parts))],
        )

    def model_inputs(self) -> Tuple[np.ndarray, ...]:
        """The model inputs as new arrays (no view of these rows)::

            dense             [n, n_dense]        float32
            sparse_values     [V_s]               int64   pooled ids, key-major
            sparse_lengths    [n_pooled, n]       int32
            sequence_values   [V_q]               int64   targets then sequences, key-major
            sequence_lengths  [n_unpooled, n]     int32
            sequence_floats   [V_f, n_float]      float32 only with sequence floats: one
                                                          row per history step (the
                                                          sequences' lengths), a column
                                                          per feature
        """
        n = len(self)

        def kjt(parts: List[Jagged]) -> Tuple[np.ndarray, np.ndarray]:
            if not parts:
                return np.zeros(0, np.int64), np.zeros((0, n), np.int32)
            values = np.concatenate([p.values for p in parts]).astype(np.int64, copy=False)
            return values, np.stack([p.lengths for p in parts]).astype(np.int32)

        out = (np.array(self.dense, np.float32, order="C"), *kjt(self.pooled), *kjt(self.unpooled))
        if self.floats:
            out += (np.stack([f.values for f in self.floats], axis=1).astype(np.float32),)
        return out

    def to_tensors(self) -> Tuple["torch.Tensor", ...]:
        """:meth:`model_inputs` as torch tensors (torch is imported here, on first use)."""
        import torch

        return tuple(torch.from_numpy(a) for a in self.model_inputs())


# --------------------------------------------------------------------------- columns


def open_parquet(path: Union[str, Path]) -> pq.ParquetFile:
    """``path`` (a local path or a URI, :mod:`~interformer_rec.data.sources`) opened as
    Parquet; an unreadable file is a :class:`DataError`."""
    try:
        return pq.ParquetFile(open_input(path))
    except (pa.ArrowException, OSError) as e:
        raise InFile(str(path)).error(f"not a readable Parquet file ({e})") from None


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_int(t.value_type)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_number_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_number(t.value_type)


_Check = Tuple[str, Callable[[pa.DataType], bool]]
_NUMBER: _Check = ("integer or floating point", _is_number)
_LABEL: _Check = ("integer, floating point or boolean", lambda t: _is_number(t) or pa.types.is_boolean(t))
_INT: _Check = ("integer (int64)", _is_int)
_INT_OR_LIST: _Check = ("integer (int64) or list<int64>", lambda t: _is_int(t) or _is_int_list(t))
_ONE_MANAGED: _Check = (
    "integer (int64): a feature of a managed_collision table is looked up one id per row, as a "
    "target item (TorchRec's row-wise pooled sharding, which managed collision needs, is CUDA-only)",
    _is_int,
)
_LIST: _Check = ("list<int64>", _is_int_list)
_FLOAT_LIST: _Check = ("list<float> (or list<integer>)", _is_number_list)


def expected_types(schema: Schema, training: bool = True) -> Dict[str, _Check]:
    """Column name -> (description, predicate) of the accepted Arrow types: the feature
    columns and, if ``training``, the labels and the group key."""
    expected: Dict[str, _Check] = {c: _LABEL for c in schema.labels} if training else {}
    expected.update({c: _NUMBER for c in schema.dense})
    expected.update({f.name: _INT_OR_LIST for f in schema.pooled_features})
    managed = set(schema.managed_tables) - set(schema.sequence_tables)
    expected.update({f.name: _ONE_MANAGED if f.table in managed else _INT for f in schema.target_features})
    expected.update({s.name: _LIST for s in schema.sequence})
    expected.update({f.name: _FLOAT_LIST for f in schema.sequence_floats})
    if training and schema.group_key is not None:
        expected[schema.group_key] = _INT  # one group per row, even if also a pooled feature
    return expected


def check_columns(arrow: pa.Schema, schema: Schema, where: Where, training: bool = True) -> None:
    """Every column of :func:`expected_types` is in ``arrow`` with an accepted type."""
    for name, (expected, ok) in expected_types(schema, training).items():
        if name not in arrow.names:
            raise where.error(f"missing column (has {arrow.names})", column=name)
        actual = arrow.field(name).type
        if not ok(actual):
            raise where.error(f"expected {expected}, got {actual}", column=name)


# --------------------------------------------------------------------------- values


def _array(col: Column) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def finite(x: np.ndarray, column: str, where: Where) -> np.ndarray:
    """``x`` (``[n]`` float32) if every value is finite, else an error at the first."""
    bad = ~np.isfinite(x)
    if bad.any():
        i = _first(bad)
        raise where.error(f"value {x[i]} is not finite (float32)", column, i)
    return x


def numbers(col: Column, column: str, where: Where) -> np.ndarray:
    """A dense or label column as ``[n]`` float32; nulls and non-finite values fail."""
    arr = _array(col)
    _no_nulls(arr, "null value", column, where)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, then fails
        x = arr.to_numpy(zero_copy_only=False).astype(np.float32)
    return finite(x, column, where)


def binary_labels(col: Column, column: str, where: Where) -> np.ndarray:
    """A label column as ``[n]`` float32 in {0, 1}."""
    y = numbers(col, column, where)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first(bad)
        raise where.error(f"label {y[i]} is not 0 or 1", column, i)
    return y


def group_keys(col: Column, column: str, where: Where) -> np.ndarray:
    """The group key column as ``[n]`` int64 (raw values, never hashed); nulls fail."""
    arr = _array(col)
    _no_nulls(arr, "null group key", column, where)
    return arr.to_numpy().astype(np.int64)


def ids(col: Column, column: str, where: Where, target: bool = False) -> Jagged:
    """An integer or ``list<integer>`` column as raw int64 ids (not yet policed). A null
    row is an empty row, or an error for a ``target`` (exactly one id); a null id
    inside a list, or an id that does not fit in int64, is an error."""
    arr = _array(col)
    if target:
        _no_nulls(arr, "null, but a target feature needs exactly one id", column, where)
    if _is_int_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(arr)  # respects slicing and skips null rows (unlike .values)
        if flat.null_count:
            raise where.error("null id inside a list", column, _row_of(lengths, _first_null(flat)))
        values = flat.to_numpy()
    else:
        lengths = arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.drop_null(arr).to_numpy()
    if values.dtype == np.uint64 and len(values) and values.max() > np.uint64(INT64_MAX):
        pos = _first(values > np.uint64(INT64_MAX))
        raise where.error(f"id {values[pos]} does not fit in int64", column, _row_of(lengths, pos))
    return Jagged(lengths, values.astype(np.int64))


def finite_lists(lengths: np.ndarray, values: np.ndarray, column: str, where: Where) -> Jagged:
    """Rows of ``lengths`` numbers (``values``, any float or int dtype) as float32
    :class:`Jagged`, if every value is finite in float32; else an error naming the row
    of the first that is not."""
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: inf, which then fails
        values = values.astype(np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        pos = _first(bad)
        raise where.error(f"value {values[pos]} is not finite (float32)", column, _row_of(lengths, pos))
    return Jagged(lengths, values)


def float_lists(col: Column, column: str, where: Where) -> Jagged:
    """A ``list<number>`` column (a sequence float) as float32 :class:`Jagged`: a null row
    is empty; a null value, or one not finite in float32, is an error naming the row."""
    arr = _array(col)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(arr)
    if flat.null_count:
        raise where.error("null value inside a list", column, _row_of(lengths, _first_null(flat)))
    return finite_lists(lengths, flat.to_numpy(zero_copy_only=False), column, where)


def apply_id_policy(j: Jagged, column: str, schema: Schema, table: str, where: Where) -> Jagged:
    """The ids of ``column``, a feature of ``table``, under the table's id policy:
    checked (``reject``), hashed modulo its rows (``hash``) or mixed into
    ``[0, input_hash_size)`` for TorchRec's managed collision (``managed_collision``,
    which gives them rows in the model)."""
    policy = schema.policy_of(table)
    t = schema.table(table)
    if policy == "hash":
        return Jagged(j.lengths, (splitmix64(j.values) % np.uint64(t.num_embeddings)).astype(np.int64))
    if policy == "managed_collision":
        space = np.uint64(t.managed_collision.input_hash_size)
        return Jagged(j.lengths, (splitmix64(j.values) % space).astype(np.int64))
    size = t.num_embeddings
    bad = (j.values < 0) | (j.values >= size)
    if bad.any():
        pos = _first(bad)
        raise where.error(
            f"id {int(j.values[pos])} outside [0, {size}) of table {table!r} (id_policy 'reject')",
            column,
            _row_of(j.lengths, pos),
        )
    return j


def check_parallel(seqs: Mapping[str, Jagged], where: Where) -> None:
    """Parallel sequences (ids and floats) must have equal lengths in every row."""
    names = list(seqs)
    for other in names[1:]:
        diff = seqs[names[0]].lengths != seqs[other].lengths
        if diff.any():
            i = _first(diff)
            lens = {n: int(seqs[n].lengths[i]) for n in names}
            raise where.error(f"parallel sequences have unequal lengths {lens}", row=i)


# --------------------------------------------------------------------------- rows


def assemble(
    schema: Schema,
    dense: np.ndarray,
    policed: Mapping[str, Jagged],
    where: Where,
    labels: Optional[np.ndarray] = None,
    groups: Optional[np.ndarray] = None,
    floats: Optional[Mapping[str, Jagged]] = None,
) -> Rows:
    """:class:`Rows` from checked columns: parallel sequences (and sequence floats) must
    have equal lengths; they are cut to their most recent ``max_len`` steps.

    Args:
        dense: ``[n, n_dense]`` float32, already checked finite.
        policed: every id feature's :class:`Jagged` (``n`` rows, targets with one id
            each), through :func:`apply_id_policy`.
        labels, groups: ``[n, tasks]`` and ``[n]``, if decoded.
        floats: every sequence float's :class:`Jagged` (:func:`float_lists`).
    """
    floats = floats or {}
    parallel = {s.name: policed[s.name] for s in schema.sequence}
    parallel.update({f.name: floats[f.name] for f in schema.sequence_floats})
    check_parallel(parallel, where)
    unpooled = [policed[f.name] for f in schema.target_features]
    unpooled += [policed[s.name].tail(s.max_len) for s in schema.sequence]
    tails = [floats[f.name].tail(schema.max_len) for f in schema.sequence_floats]
    return Rows(dense, [policed[f.name] for f in schema.pooled_features], unpooled, labels, groups, tails)


def decode_table(table: pa.Table, schema: Schema, where: Where, training: bool = True) -> Rows:
    """Check and decode ``table`` (e.g. one row group) under the bad-input policy of this
    module: the feature columns and, if ``training``, the labels and group keys."""
    check_columns(table.schema, schema, where, training)
    n = table.num_rows
    col = table.column
    dense = np.zeros((n, len(schema.dense)), np.float32)
    for k, c in enumerate(schema.dense):
        dense[:, k] = numbers(col(c), c, where)
    labels = groups = None
    if training:
        labels = np.stack([binary_labels(col(c), c, where) for c in schema.labels], axis=1)
        groups = np.zeros(n, np.int64)
        if schema.group_key is not None:
            groups = group_keys(col(schema.group_key), schema.group_key, where)
    targets = {f.name for f in schema.target_features}
    policed: Dict[str, Jagged] = {}
    for name, table_name in id_columns(schema):
        raw = ids(col(name), name, where, target=name in targets)
        policed[name] = apply_id_policy(raw, name, schema, table_name, where)
    floats = {f.name: float_lists(col(f.name), f.name, where) for f in schema.sequence_floats}
    return assemble(schema, dense, policed, where, labels, groups, floats)


def id_columns(schema: Schema) -> List[Tuple[str, str]]:
    """``(column, table)`` of every id feature: pooled, targets, then sequences."""
    features = [*schema.pooled_features, *schema.target_features]
    return [(f.name, f.table) for f in features] + [(s.name, s.table) for s in schema.sequence]
