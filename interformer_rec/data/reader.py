"""Stream Parquet row groups into :class:`~interformer_rec.data.batch.Batch` objects.

Each file is read row group by row group (``pyarrow.parquet.ParquetFile.read_row_group``,
only the schema's columns), checked, decoded into flat numpy arrays and cut into
batches; a file is never read whole into memory. KJTs are built from the Arrow buffers
with ``pyarrow.compute`` and numpy, without per-row Python loops.

Bad-input policy
----------------
Every error is a :class:`DataError` naming the file and, where it applies, the column and
the row (0-based within the file, whatever the row group).

* Opening: a file that is not readable Parquet, a missing column, or a column of the
  wrong Arrow type (labels and dense: integer or floating point, labels also boolean;
  pooled sparse: integer or ``list<integer>``; target sparse, i.e. sharing a table with
  a sequence: integer; sequences: ``list<integer>``; group key: integer) is an error
  when the reader is built, before any step runs.
* Dense and label columns: a null, NaN or infinite value is an error; a label outside
  {0, 1} is an error.
* Sparse columns: a null row is an empty bag for a pooled feature and an error for a
  target feature (it needs exactly one id). A null id inside a list is an error.
* Sequences: a null row is an empty sequence. The parallel sequences of one row must
  have equal lengths, else an error names the row and the columns. A sequence longer
  than ``max_len`` keeps its ``max_len`` most recent (last) steps.
* Ids, ``schema.id_policy == "reject"``: an id outside ``[0, num_embeddings)`` of its
  table is an error naming the table and its size (every id of a column is checked,
  including steps that truncation would drop). ``"hash"``: every id of every sparse and
  sequence column is mixed by splitmix64 (as a 64-bit unsigned integer) and taken modulo
  ``num_embeddings``, so collisions are by design and no id is silently wrapped.

Every rank decodes and checks every row group that the epoch's global batches use (the
whole global batch, not only its own slice), so a bad row stops all ranks alike, at the
same step.

Distribution
------------
The row stream is the files in sorted order, row groups in order. With ``shuffle`` the
row groups are permuted and grouped into consecutive windows of at least
``shuffle_window`` rows, and the rows within each window are permuted, all from one
generator seeded with ``(seed, epoch)`` (see ``set_epoch``) and drawn in stream order
(the plan records its state at each window, so a worker can start anywhere). The stream does not depend on the rank, the
world size or the number of DataLoader workers. It is cut into global
batches of ``batch_size * world_size`` rows, and rank ``r`` takes rows
``[r * batch_size, (r + 1) * batch_size)`` of each, so one rank with batch ``2B`` sees
exactly the union of what two ranks with batch ``B`` see, in the same order. The last
partial global batch of ``R`` rows is dropped if ``drop_last``; else it is split as
evenly as possible in rank order (rank ``r`` gets ``R // W`` rows, one more if
``r < R % W``). If ``0 < R < world_size`` it is dropped on every rank, because a rank
would get zero rows and TorchRec cannot run a zero-row KJT: so no rank ever gets an
empty batch, every rank runs ``len(reader)`` steps, and at most ``world_size - 1`` rows
of a split go unseen (none with one rank).

DataLoader workers: ``reader.loader(num_workers=N)`` (or, slower,
``DataLoader(reader, batch_size=None, num_workers=N)``) splits the epoch's global batches into ``N`` contiguous ranges of nearly equal length (the first
``T % N`` workers get one more), worker ``w`` yields its range, and the DataLoader
interleaves the workers round robin. Every batch of the epoch is yielded exactly once,
on every rank alike (the split does not depend on the rank), and a worker decodes only
the row groups its range touches (plus at most one window at its range's boundary).
Without workers the order is the stream order; with workers it is that round-robin
interleaving ("the epoch order" below).

Resuming: ``start_batch=k`` skips the first ``k`` global batches of the epoch order
(the rows a resumed job already trained on), on every rank alike; ``len(reader)`` then
counts only the batches still to come. Skipped batches are never read nor built into
tensors. With ``N`` workers the first ``k`` batches of the epoch order are the first
``k // N + (w < k % N)`` of each worker ``w``'s range, which is what worker ``w``
skips; a resumed DataLoader yields exactly the remaining batches (its round robin
restarts at worker 0, so their order within one round may differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import Schema
from interformer_rec.arrays import (  # noqa: F401 - re-exported, part of this module's API
    DataError,
    Jagged,
    _offsets,
    _row_of,
    gather,
    resolve_paths,
    splitmix64,
)
from interformer_rec.data.batch import Batch

PathLike = Union[str, Path]
Paths = Union[PathLike, Sequence[PathLike]]


def _error(path: Path, msg: str, column: str | None = None, row: int | None = None) -> DataError:
    where = [str(path)]
    if column is not None:
        where.append(f"column {column!r}")
    if row is not None:
        where.append(f"row {row}")
    return DataError(f"{', '.join(where)}: {msg}")


# --------------------------------------------------------------------------- files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise _error(path, f"not a readable Parquet file ({e})") from None


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_int(t.value_type)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


_Check = Tuple[str, Callable[[pa.DataType], bool]]
_NUMBER: _Check = ("integer or floating point", _is_number)
_LABEL: _Check = (
    "integer, floating point or boolean",
    lambda t: _is_number(t) or pa.types.is_boolean(t),
)
_INT: _Check = ("integer (int64)", _is_int)
_INT_OR_LIST: _Check = ("integer (int64) or list<int64>", lambda t: _is_int(t) or _is_int_list(t))
_LIST: _Check = ("list<int64>", _is_int_list)


def _expected_types(schema: Schema) -> Dict[str, _Check]:
    """Column name -> (description, predicate) of the Arrow types the reader accepts."""
    expected: Dict[str, _Check] = {c: _LABEL for c in schema.labels}
    expected.update({c: _NUMBER for c in schema.dense})
    expected.update({f.name: _INT_OR_LIST for f in schema.pooled_features})
    expected.update({f.name: _INT for f in schema.target_features})
    expected.update({s.name: _LIST for s in schema.sequence})
    if schema.group_key is not None:
        expected[schema.group_key] = _INT  # one group per row, even if also a pooled feature
    return expected


def validate_file(path: PathLike, schema: Schema) -> pq.ParquetFile:
    """Open ``path`` and check that it has every column of ``schema`` with an accepted
    Arrow type (values are checked as they are read). Returns the open file."""
    path = Path(path)
    pf = _open(path)
    arrow = pf.schema_arrow
    for name, (expected, ok) in _expected_types(schema).items():
        if name not in arrow.names:
            raise _error(path, f"missing column (file has {arrow.names})", column=name)
        actual = arrow.field(name).type
        if not ok(actual):
            raise _error(path, f"expected {expected}, got {actual}", column=name)
    return pf


def count_rows(paths: Paths) -> int:
    """Number of rows of ``paths``, from the Parquet metadata only."""
    return sum(_open(p).metadata.num_rows for p in resolve_paths(paths))


def oracle_auc(paths: Paths, schema: Schema) -> float:
    """AUC of the ``schema.oracle`` column (the true click probability) against the
    first label: the ceiling no model can beat on this data."""
    from torchmetrics.functional.classification import binary_auroc

    if schema.oracle is None:
        raise DataError("oracle_auc: the schema names no oracle column")
    label, oracle = schema.labels[0], schema.oracle
    ys, ps = [], []
    for path in resolve_paths(paths):
        pf = _open(path)
        for name in (label, oracle):
            if name not in pf.schema_arrow.names:
                raise _error(path, "missing column", column=name)
        for rb in pf.iter_batches(columns=[label, oracle]):
            ys.append(rb.column(label).to_numpy(zero_copy_only=False))
            ps.append(rb.column(oracle).to_numpy(zero_copy_only=False))
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    p = torch.from_numpy(np.concatenate(ps).astype(np.float64))
    return float(binary_auroc(p, y))


# --------------------------------------------------------------------------- jagged rows


@dataclass
class Rows:
    """Decoded rows, before batching: numpy counterparts of :class:`Batch`.

    Attributes:
        dense: ``[n, n_dense]`` float32.
        labels: ``[n, tasks]`` float32.
        groups: ``[n]`` int64.
        sparse: one :class:`Jagged` per ``Schema.pooled_features``.
        sequence: one :class:`Jagged` per ``Schema.unpooled_keys``.
    """

    dense: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sparse: List[Jagged]
    sequence: List[Jagged]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> "Rows":
        return Rows(
            self.dense[idx],
            self.labels[idx],
            self.groups[idx],
            [j.take(idx) for j in self.sparse],
            [j.take(idx) for j in self.sequence],
        )

    def slice(self, start: int, stop: int) -> "Rows":
        return Rows(
            self.dense[start:stop],
            self.labels[start:stop],
            self.groups[start:stop],
            [j.slice(start, stop) for j in self.sparse],
            [j.slice(start, stop) for j in self.sequence],
        )

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if len(parts) == 1:
            return parts[0]
        return Rows(
            np.concatenate([p.dense for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.groups for p in parts]),
            [Jagged.concat(js) for js in zip(*(p.sparse for p in parts))],
            [Jagged.concat(js) for js in zip(*(p.sequence for p in parts))],
        )

    def to_batch(self, schema: Schema) -> Batch:
        """A :class:`Batch` owning copies of these rows (so no window buffer is kept)."""
        return self.pack(schema).to_batch(schema)

    def pack(self, schema: Schema) -> "Packed":
        """These rows as a :class:`Packed` batch (copies, in ``Batch`` layout)."""

        def flat(features: List[Jagged]) -> Tuple[np.ndarray, np.ndarray]:
            if not features:
                return np.zeros(0, np.int64), np.zeros(0, np.int32)
            return (np.concatenate([f.values for f in features]).astype(np.int64, copy=False),
                    np.concatenate([f.lengths for f in features]).astype(np.int32))

        sv, sl = flat(self.sparse)
        qv, ql = flat(self.sequence)
        return Packed(self.dense.copy(), self.labels.copy(), self.groups.copy(), sv, sl, qv, ql)


class Packed(NamedTuple):
    """A batch as seven numpy arrays: what DataLoader workers send to the training
    process (pickled through the pipe, far cheaper than a :class:`Batch`'s tensors,
    each of which would travel as its own shared-memory segment).

    Attributes:
        dense: ``[B, n_dense]`` float32. labels: ``[B, tasks]`` float32. groups: ``[B]``.
        sparse_values, sparse_lengths: the pooled KJT's (key-major, lengths int32).
        sequence_values, sequence_lengths: the unpooled KJT's.
    """

    dense: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sparse_values: np.ndarray
    sparse_lengths: np.ndarray
    sequence_values: np.ndarray
    sequence_lengths: np.ndarray

    def to_batch(self, schema: Schema) -> Batch:
        b = len(self.labels)

        def kjt(keys: List[str], values: np.ndarray, lengths: np.ndarray) -> KeyedJaggedTensor:
            return KeyedJaggedTensor(keys=keys, values=torch.from_numpy(values),
                                     lengths=torch.from_numpy(lengths), stride=b)

        return Batch(
            dense=torch.from_numpy(self.dense),
            sparse=kjt([f.name for f in schema.pooled_features], self.sparse_values, self.sparse_lengths),
            sequence=kjt(schema.unpooled_keys, self.sequence_values, self.sequence_lengths),
            labels=torch.from_numpy(self.labels),
            groups=torch.from_numpy(self.groups),
        )


# --------------------------------------------------------------------------- decoding


@dataclass
class _Ctx:
    """Where a row group comes from, for error messages."""

    path: Path
    row0: int  # file-relative index of the row group's first row

    def error(self, msg: str, column: str | None = None, row: int | None = None) -> DataError:
        return _error(self.path, msg, column, None if row is None else self.row0 + row)


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _numeric(col: pa.ChunkedArray, name: str, ctx: _Ctx) -> np.ndarray:
    """A dense or label column as ``[n]`` float32; nulls and non-finite values fail."""
    arr = col.combine_chunks()
    if arr.null_count:
        raise ctx.error("null value", name, _first(arr.is_null().to_numpy(zero_copy_only=False)))
    x = arr.to_numpy(zero_copy_only=False).astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        i = _first(bad)
        raise ctx.error(f"value {x[i]} is not finite (float32)", name, i)
    return x


def _labels(col: pa.ChunkedArray, name: str, ctx: _Ctx) -> np.ndarray:
    y = _numeric(col, name, ctx)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = _first(bad)
        raise ctx.error(f"label {y[i]} is not 0 or 1", name, i)
    return y


def _jagged(col: pa.ChunkedArray, name: str, ctx: _Ctx, null_ok: bool) -> Jagged:
    """An integer or ``list<integer>`` column as a :class:`Jagged` (null row -> empty
    row if ``null_ok``, else an error; null ids inside a list are an error)."""
    arr = col.combine_chunks()
    if not null_ok and arr.null_count:
        row = _first(arr.is_null().to_numpy(zero_copy_only=False))
        raise ctx.error("null value (a target feature needs exactly one id)", name, row)
    if _is_int_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(arr)  # respects slicing and skips null rows (unlike .values)
        if flat.null_count:
            pos = _first(flat.is_null().to_numpy(zero_copy_only=False))
            raise ctx.error("null id inside a list", name, _row_of(lengths, pos))
        values = flat.to_numpy()
    else:
        lengths = arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.drop_null(arr).to_numpy()
    return Jagged(lengths, values.astype(np.int64))


def _apply_id_policy(j: Jagged, name: str, table: str, size: int, policy: str, ctx: _Ctx) -> Jagged:
    if policy == "hash":
        return Jagged(j.lengths, (splitmix64(j.values) % np.uint64(size)).astype(np.int64))
    bad = (j.values < 0) | (j.values >= size)
    if bad.any():
        pos = _first(bad)
        raise ctx.error(
            f"id {j.values[pos]} outside [0, {size}) of table {table!r} "
            f"(num_embeddings {size}; id_policy 'reject')",
            name,
            _row_of(j.lengths, pos),
        )
    return j


def _check_parallel(seqs: Dict[str, Jagged], ctx: _Ctx) -> None:
    """Parallel sequences must have equal lengths in every row."""
    names = list(seqs)
    for other in names[1:]:
        diff = seqs[names[0]].lengths != seqs[other].lengths
        if diff.any():
            i = _first(diff)
            lens = {n: int(seqs[n].lengths[i]) for n in names}
            raise ctx.error(f"parallel sequences {names} have unequal lengths {lens}", row=i)


def columns_of(schema: Schema) -> List[str]:
    """Columns the reader reads: the schema's, and the group key."""
    cols = schema.all_columns()
    if schema.group_key is not None and schema.group_key not in cols:
        cols.append(schema.group_key)
    return cols


def decode(table: pa.Table, schema: Schema, path: Path, row0: int = 0) -> Rows:
    """Check and decode one row group (``table``, rows ``row0..`` of ``path``) under the
    bad-input policy of this module."""
    ctx = _Ctx(path, row0)
    n = table.num_rows
    col = table.column
    dense = np.zeros((n, 0), np.float32)
    if schema.dense:
        dense = np.stack([_numeric(col(c), c, ctx) for c in schema.dense], axis=1)
    labels = np.stack([_labels(col(c), c, ctx) for c in schema.labels], axis=1)
    groups = np.zeros(n, dtype=np.int64)
    if schema.group_key is not None:
        g = col(schema.group_key).combine_chunks()
        if g.null_count:
            row = _first(g.is_null().to_numpy(zero_copy_only=False))
            raise ctx.error("null group key", schema.group_key, row)
        groups = g.to_numpy().astype(np.int64)

    def ids(name: str, table_name: str, null_ok: bool) -> Jagged:
        j = _jagged(col(name), name, ctx, null_ok)
        size = schema.table(table_name).num_embeddings
        return _apply_id_policy(j, name, table_name, size, schema.id_policy, ctx)

    sparse = [ids(f.name, f.table, null_ok=True) for f in schema.pooled_features]
    targets = [ids(f.name, f.table, null_ok=False) for f in schema.target_features]
    seqs = {s.name: ids(s.name, s.table, null_ok=True) for s in schema.sequence}
    _check_parallel(seqs, ctx)
    history = [seqs[s.name].tail(s.max_len) for s in schema.sequence]
    return Rows(dense, labels, groups, sparse, targets + history)


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class _RowGroup:
    file: int
    index: int
    row0: int  # file-relative first row
    num_rows: int


@dataclass(frozen=True)
class _Window:
    """Consecutive rows of an epoch's stream: whole row groups (one when not shuffling),
    permuted together when shuffling."""

    index: int
    groups: Tuple[int, ...]  # indices into ParquetBatchReader.row_groups, in stream order
    start: int  # first row in the stream
    num_rows: int
    rng_state: Any = None  # the epoch generator's state before this window's permutation


class ParquetBatchReader(IterableDataset):
    """Iterable of :class:`Batch` over Parquet files; see the module docstring for the
    bad-input policy and how rows are shared between ranks.

    Args:
        paths: a Parquet file, a directory of ``*.parquet`` (sorted), or a list of them.
        schema: the columns' roles.
        batch_size: rows per batch on this rank.
        shuffle: permute row groups and rows within windows, from ``(seed, epoch)``.
        seed: shuffling seed.
        drop_last: drop the last partial global batch.
        rank, world_size: this rank's slice of each global batch.
        shuffle_window: rows (at least) permuted together when shuffling; the memory
            the reader holds is about one window.
        start_batch: skip the first ``start_batch`` global batches of each epoch's
            order (resuming mid-epoch); ``len`` counts the batches after them.

    Use it directly or through ``DataLoader(reader, batch_size=None, num_workers=N)``
    (the workers share the epoch's batches, see the module docstring).
    """

    def __init__(
        self,
        paths: Paths,
        schema: Schema,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shuffle_window: int = 65536,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.start_batch = start_batch
        self.schema = schema
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.shuffle_window = shuffle_window
        self.epoch = 0
        self.files = resolve_paths(paths)
        self.columns = columns_of(schema)
        self.row_groups: List[_RowGroup] = []
        for i, path in enumerate(self.files):
            meta = validate_file(path, schema).metadata
            row0 = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                self.row_groups.append(_RowGroup(i, g, row0, n))
                row0 += n
        self.num_rows = sum(g.num_rows for g in self.row_groups)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank gets in an epoch (over all DataLoader workers together)."""
        return max(self._num_global_batches() - self.start_batch, 0)

    def _read(self, files: Dict[int, pq.ParquetFile], g: _RowGroup) -> Rows:
        path = self.files[g.file]
        if g.file not in files:
            files[g.file] = _open(path)
        try:
            table = files[g.file].read_row_group(g.index, columns=self.columns)
        except (pa.ArrowException, OSError) as e:
            raise _error(path, f"row group {g.index} is unreadable ({e})") from None
        return decode(table, self.schema, path, g.row0)

    def _plan(self) -> List[_Window]:
        """The epoch's windows, from the metadata alone (nothing is read)."""
        n = len(self.row_groups)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        windows: List[_Window] = []
        group: List[int] = []
        rows = start = 0
        for k, i in enumerate(order.tolist()):
            group.append(i)
            rows += self.row_groups[i].num_rows
            if not self.shuffle or rows >= self.shuffle_window or k == n - 1:
                state = None
                if self.shuffle:  # one generator for the epoch, drawn window after window
                    state = rng.bit_generator.state
                    rng.permutation(rows)  # advance past this window's permutation
                windows.append(_Window(len(windows), tuple(group), start, rows, state))
                start += rows
                group, rows = [], 0
        return windows

    def _read_window(self, files: Dict[int, pq.ParquetFile], w: _Window) -> Rows:
        rows = Rows.concat([self._read(files, self.row_groups[i]) for i in w.groups])
        if self.shuffle:
            rng = np.random.default_rng()
            rng.bit_generator.state = w.rng_state
            rows = rows.take(rng.permutation(len(rows)))
        return rows

    def _num_global_batches(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size * self.world_size)
        return full + int(not self.drop_last and rest >= self.world_size)

    def _span(self, k: int) -> Tuple[int, int]:
        """Stream rows ``[start, stop)`` of this rank's part of global batch ``k``."""
        b, w, r = self.batch_size, self.world_size, self.rank
        step = b * w
        full = self.num_rows // step
        if k < full:
            return k * step + r * b, k * step + (r + 1) * b
        base, extra = divmod(self.num_rows - full * step, w)  # the last, partial batch
        start = full * step + r * base + min(r, extra)
        return start, start + base + int(r < extra)

    def worker_range(self, worker: int, num_workers: int) -> Tuple[int, int]:
        """Global batches ``[lo, hi)`` of the epoch that DataLoader worker ``worker`` of
        ``num_workers`` yields, after ``start_batch`` (see the module docstring)."""
        total, n = self._num_global_batches(), num_workers
        lo = worker * (total // n) + min(worker, total % n)
        hi = lo + total // n + int(worker < total % n)
        skip = self.start_batch // n + int(worker < self.start_batch % n)
        return min(lo + skip, hi), hi

    def __iter__(self) -> Iterator[Batch]:
        for rows in self._rows():
            yield rows.to_batch(self.schema)

    def loader(self, num_workers: int = 0, **kwargs: Any) -> "WorkerLoader":
        """An iterable of this reader's batches decoded by ``num_workers`` DataLoader
        worker processes (``kwargs`` go to ``DataLoader``, e.g. ``prefetch_factor``).
        The workers send :class:`Packed` numpy batches and this process builds the
        tensors, which is several times faster than a ``DataLoader`` over the reader
        itself. Same batches, same order, same ``len`` as that DataLoader."""
        return WorkerLoader(self, num_workers, kwargs)

    def _rows(self) -> Iterator[Rows]:
        info = get_worker_info()
        lo, hi = self.worker_range(*((0, 1) if info is None else (info.id, info.num_workers)))
        if lo >= hi:
            return
        windows = self._plan()
        starts = np.array([w.start for w in windows], np.int64)
        files: Dict[int, pq.ParquetFile] = {}
        cache: Dict[int, Rows] = {}  # decoded windows the next span may still need
        step = self.batch_size * self.world_size

        def overlapping(a: int, z: int) -> Iterator[int]:
            i = max(int(np.searchsorted(starts, a, side="right")) - 1, 0)
            while i < len(windows) and windows[i].start < z:
                if windows[i].start + windows[i].num_rows > a:
                    yield i
                i += 1

        for k in range(lo, hi):
            # decode every window of the whole global batch, not only this rank's slice,
            # so that a bad row stops every rank at the same step
            g0, g1 = k * step, min((k + 1) * step, self.num_rows)
            for i in overlapping(g0, g1):
                if i not in cache:
                    cache[i] = self._read_window(files, windows[i])
            a, z = self._span(k)
            parts = []
            for i in overlapping(a, z):
                w = windows[i]
                parts.append(cache[i].slice(max(a, w.start) - w.start, min(z, w.start + w.num_rows) - w.start))
            for j in [j for j in cache if windows[j].start + windows[j].num_rows <= g1]:
                del cache[j]
            yield Rows.concat(parts)


class _PackedStream(IterableDataset):
    def __init__(self, reader: ParquetBatchReader) -> None:
        super().__init__()
        self.reader = reader

    def __iter__(self) -> Iterator[Packed]:
        for rows in self.reader._rows():
            yield rows.pack(self.reader.schema)


def _identity(x: Any) -> Any:
    return x


class WorkerLoader:
    """See :meth:`ParquetBatchReader.loader`."""

    def __init__(self, reader: ParquetBatchReader, num_workers: int, kwargs: Dict[str, Any]) -> None:
        self.reader = reader
        self.num_workers = num_workers
        self.kwargs = kwargs

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers == 0:
            yield from self.reader
            return
        dl = DataLoader(_PackedStream(self.reader), batch_size=None, num_workers=self.num_workers,
                        collate_fn=_identity, **self.kwargs)
        for packed in dl:
            yield packed.to_batch(self.reader.schema)
