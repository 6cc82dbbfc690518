"""Stream Parquet row groups into :class:`~interformer_rec.data.batch.Batch` objects.

Each file is read row group by row group (``pyarrow.parquet.ParquetFile.read_row_group``,
only the schema's columns), checked, decoded into flat numpy arrays and cut into
batches; a file is never read whole into memory. KJTs are built from the Arrow buffers
with ``pyarrow.compute`` and numpy, without per-row Python loops.

Bad-input policy
----------------
The rules are those of :mod:`interformer_rec.data.decode` (shared with serving). Every
error is a :class:`DataError` naming the file and, where it applies, the column and the
row (0-based within the file, whatever the row group). A file that is not readable
Parquet, a missing column or a column of the wrong Arrow type is an error when the
reader is built, before any step runs.

Each rank checks and decodes only its own rows: it reads the Parquet row groups of the
windows its slices touch (a shuffled window's rows are spread over all its row groups, so
every rank reads them) and decodes the rows of its slices, so the per-row work of a
rank (checks, id policy, jagged arrays, tensors) falls as ``1 / world_size``. A bad row
is found by the rank that owns it; with ``group`` (the trainer passes a gloo group when
it runs several ranks) all ranks agree after every batch (one all-reduce of an error
flag; on an error, the messages gathered), so every rank raises the same
:class:`DataError`, the lowest failing rank's, naming file, column and row, at the same
step. Rows that no batch uses (a dropped last partial batch) are not checked.

Distribution
------------
The row stream is the files in sorted order, row groups in order. With ``shuffle`` the
row groups are permuted and grouped into consecutive windows of at least
``shuffle_window`` rows, and the rows within each window are permuted, all from one
generator seeded with ``(seed, epoch)`` (see ``set_epoch``) and drawn in stream order
(the plan records its state at each window, so a worker can start anywhere). The stream
does not depend on the rank, the world size or the number of DataLoader workers. It is
cut into global batches of ``batch_size * world_size`` rows, and rank ``r`` takes rows
``[r * batch_size, (r + 1) * batch_size)`` of each, so one rank with batch ``2B`` sees
exactly the union of what two ranks with batch ``B`` see, in the same order. The last
partial global batch of ``R`` rows is dropped if ``drop_last``; else it is split as
evenly as possible in rank order (rank ``r`` gets ``R // W`` rows, one more if
``r < R % W``). If ``0 < R < world_size`` it is dropped on every rank, because a rank
would get zero rows and TorchRec cannot run a zero-row KJT: so no rank ever gets an
empty batch, every rank runs ``len(reader)`` steps, and at most ``world_size - 1`` rows
of a split go unseen (none with one rank).

Length buckets (``length_buckets``, ``data.length_buckets``): within each window, the
rows are regrouped into global batches of similar history length (sorted by length, cut
into global batches, the batches permuted when shuffling), so that a batch padded to its
own longest history (the models do) pays for few padded steps. Only the rows between the
window's first and last global-batch boundaries are regrouped; the batch a window shares
with its neighbour stays mixed. The regrouping depends on the global batch, the seed and
the epoch, not on the rank or the workers: every guarantee above holds with it.

DataLoader workers: ``reader.loader(num_workers=N)`` (``data.num_workers`` in the
trainer; or, slower and without the ranks' agreement on errors,
``DataLoader(reader, batch_size=None, num_workers=N)``) splits the epoch's global
batches into ``N`` contiguous ranges of nearly equal length (the first ``T % N`` workers
get one more), worker ``w`` yields its range, and the DataLoader
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
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.arrays import DataError, splitmix64  # noqa: F401 - re-exported
from interformer_rec.data.sources import Filters, resolve_paths
from interformer_rec.config import Schema
from interformer_rec.data.batch import Batch
from interformer_rec.data.decode import InFile, Paths, Rows, check_columns, decode_table, open_parquet


# --------------------------------------------------------------------------- files


def validate_file(path: Union[str, Path], schema: Schema) -> pq.ParquetFile:
    """Open ``path`` and check that it has every column of ``schema`` with an accepted
    Arrow type (values are checked as they are read). Returns the open file."""
    pf = open_parquet(path)
    check_columns(pf.schema_arrow, schema, InFile(str(path)))
    return pf


def count_rows(paths: Paths, filters: Optional[Filters] = None) -> int:
    """Number of rows of ``paths``, from the Parquet metadata only."""
    return sum(open_parquet(p).metadata.num_rows for p in resolve_paths(paths, filters))


def oracle_auc(paths: Paths, schema: Schema, filters: Optional[Filters] = None) -> Dict[str, float]:
    """AUC of each oracle column (the true probability: ``schema.oracle`` for the first
    label, ``schema.task_oracles`` for others) against its label: the ceiling no model
    can beat on this data. ``{label: AUC}``, the first label first."""
    from torchmetrics.functional.classification import binary_auroc

    if schema.oracle is None:
        raise DataError("oracle_auc: the schema names no oracle column")
    pairs = {schema.labels[0]: schema.oracle, **schema.task_oracles}
    columns = [*pairs, *pairs.values()]
    parts: Dict[str, list] = {c: [] for c in columns}
    for path in resolve_paths(paths, filters):
        pf = open_parquet(path)
        for name in columns:
            if name not in pf.schema_arrow.names:
                raise InFile(str(path)).error("missing column", column=name)
        for rb in pf.iter_batches(columns=columns):
            for c in columns:
                parts[c].append(rb.column(c).to_numpy(zero_copy_only=False))
    out = {}
    for label, oracle in pairs.items():
        y = torch.from_numpy(np.concatenate(parts[label]).astype(np.int64))
        p = torch.from_numpy(np.concatenate(parts[oracle]).astype(np.float64))
        out[label] = float(binary_auroc(p, y))
    return out


def columns_of(schema: Schema) -> List[str]:
    """Columns the reader reads: the schema's, and the group key."""
    cols = schema.all_columns()
    if schema.group_key is not None and schema.group_key not in cols:
        cols.append(schema.group_key)
    return cols


# --------------------------------------------------------------------------- batches


class Packed(NamedTuple):
    """A batch as numpy arrays: what DataLoader workers send to the training
    process (pickled through the pipe, far cheaper than a :class:`Batch`'s tensors,
    each of which would travel as its own shared-memory segment).

    Attributes:
        dense: ``[B, n_dense]`` float32. labels: ``[B, tasks]`` float32. groups: ``[B]``.
        sparse_values, sparse_lengths: the pooled KJT's (key-major; lengths
            ``[n_pooled, B]`` int32).
        sequence_values, sequence_lengths: the unpooled KJT's.
        sequence_floats: ``[V_f, n_float]`` float32, or ``None`` without sequence floats.
    """

    dense: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sparse_values: np.ndarray
    sparse_lengths: np.ndarray
    sequence_values: np.ndarray
    sequence_lengths: np.ndarray
    sequence_floats: Optional[np.ndarray] = None

    @staticmethod
    def of(rows: Rows) -> "Packed":
        """Copies of decoded training ``rows`` (so no window buffer is kept)."""
        dense, sv, sl, qv, ql, *floats = rows.model_inputs()
        assert rows.labels is not None and rows.groups is not None, "training rows carry labels and groups"
        return Packed(dense, rows.labels.copy(), rows.groups.copy(), sv, sl, qv, ql, *floats)

    def to_batch(self, schema: Schema) -> Batch:
        b = len(self.labels)

        def kjt(keys: List[str], values: np.ndarray, lengths: np.ndarray) -> KeyedJaggedTensor:
            return KeyedJaggedTensor(keys=keys, values=torch.from_numpy(values),
                                     lengths=torch.from_numpy(lengths.reshape(-1)), stride=b)

        return Batch(
            dense=torch.from_numpy(self.dense),
            sparse=kjt([f.name for f in schema.pooled_features], self.sparse_values, self.sparse_lengths),
            sequence=kjt(schema.unpooled_keys, self.sequence_values, self.sequence_lengths),
            labels=torch.from_numpy(self.labels),
            groups=torch.from_numpy(self.groups),
            sequence_floats=None if self.sequence_floats is None else torch.from_numpy(self.sequence_floats),
        )


def to_batch(rows: Rows, schema: Schema) -> Batch:
    """A :class:`Batch` owning copies of decoded training ``rows``."""
    return Packed.of(rows).to_batch(schema)


class BadRows(NamedTuple):
    """What a rank's stream yields in place of a batch whose rows broke the bad-input
    policy (the stream ends after it): the :class:`DataError`'s message."""

    message: str


def agree(bad: Optional[BadRows], group: Optional[dist.ProcessGroup]) -> None:
    """Raise the same :class:`DataError` on every rank if any rank's batch was bad.

    Collective over ``group`` (every rank calls it once per batch, in the same order):
    an all-reduce of an error flag and, on an error, the messages gathered; the lowest
    failing rank's message is raised. Without ``group``, this rank's own error only."""
    if group is None:
        if bad is not None:
            raise DataError(bad.message)
        return
    flag = torch.tensor([int(bad is not None)], dtype=torch.int32)
    dist.all_reduce(flag, group=group)
    if flag.item():
        messages: List[Optional[str]] = [None] * dist.get_world_size(group)
        dist.all_gather_object(messages, None if bad is None else bad.message, group=group)
        raise DataError(next(m for m in messages if m is not None))


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


@dataclass(frozen=True)
class _Decoded:
    """This rank's rows of a window, in the order it takes them: ``rows[i]`` is the row
    at stream position ``start + positions[i]`` (``positions`` ascending: the rank's
    slices of the window's global batches, each a run of consecutive positions)."""

    start: int
    positions: np.ndarray
    rows: Rows

    def take(self, a: int, z: int) -> Rows:
        """The rows at stream positions ``[a, z)`` (one slice, within the window)."""
        i = int(np.searchsorted(self.positions, a - self.start))
        return self.rows.slice(i, i + z - a)


class ParquetBatchReader(IterableDataset):
    """Iterable of :class:`Batch` over Parquet files; see the module docstring for the
    bad-input policy and how rows are shared between ranks.

    Args:
        paths: a Parquet file, a folder, a glob or a URI, or a list of them
            (:mod:`~interformer_rec.data.sources`).
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
        length_buckets: group the rows of each window into global batches of similar
            history length (see the module docstring), so that a batch padded to its
            longest history holds few padded steps.
        group: the process group on which the ranks agree about bad rows (a CPU
            group, e.g. gloo); ``None``: a rank raises only the errors of its own rows.
        filters: the hive partitions of folders to read (``[[column, op, value], ...]``,
            :mod:`~interformer_rec.data.sources`).

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
        length_buckets: bool = False,
        group: Optional[dist.ProcessGroup] = None,
        filters: Optional[Filters] = None,
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
        self.length_buckets = length_buckets and bool(schema.sequence)
        self.group = group
        self.epoch = 0
        self.files = resolve_paths(paths, filters)
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

    def __getstate__(self) -> Dict[str, Any]:
        # what a DataLoader worker started by spawn / forkserver receives: workers run no
        # collective, and a process group cannot be pickled
        return {**self.__dict__, "group": None}

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches this rank gets in an epoch (over all DataLoader workers together)."""
        return max(self._num_global_batches() - self.start_batch, 0)

    def _read(self, files: Dict[int, pq.ParquetFile], g: _RowGroup) -> pa.Table:
        path = self.files[g.file]
        if g.file not in files:
            files[g.file] = open_parquet(path)
        try:
            return files[g.file].read_row_group(g.index, columns=self.columns)
        except (pa.ArrowException, OSError) as e:
            raise InFile(str(path)).error(f"row group {g.index} is unreadable ({e})") from None

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

    def _decode_window(self, files: Dict[int, pq.ParquetFile], w: _Window, lo: int, hi: int) -> _Decoded:
        """Read window ``w``'s row groups and decode the rows of this rank's slices of
        global batches ``[lo, hi)`` in it."""
        tables = [self._read(files, self.row_groups[i]) for i in w.groups]
        order = np.arange(w.num_rows)
        if self.shuffle:
            rng = np.random.default_rng()
            rng.bit_generator.state = w.rng_state
            order = rng.permutation(w.num_rows)
        if self.length_buckets:  # from the Arrow offsets: the lengths decoding will give
            first = self.schema.sequence[0]
            lengths = np.concatenate([
                pc.list_value_length(t.column(first.name)).fill_null(0).to_numpy(zero_copy_only=False)
                for t in tables
            ]).astype(np.int64)
            order = self._bucket(order, np.minimum(lengths, first.max_len)[order], w)
        step = self.batch_size * self.world_size
        end = w.start + w.num_rows
        spans = [self._span(k) for k in range(max(w.start // step, lo), min((end - 1) // step + 1, hi))]
        positions = np.concatenate([np.arange(max(a, w.start), min(z, end)) - w.start for a, z in spans])
        wanted = np.zeros(w.num_rows, bool)
        wanted[order[positions]] = True
        need = np.flatnonzero(wanted)  # window rows to decode, ascending
        parts, offset = [], 0
        for i, table in zip(w.groups, tables):
            g = self.row_groups[i]
            sel = need[(need >= offset) & (need < offset + table.num_rows)] - offset
            if len(sel) == table.num_rows:  # the whole row group (one rank): no copy
                parts.append(decode_table(table, self.schema, InFile(str(self.files[g.file]), g.row0)))
            elif len(sel):
                parts.append(decode_table(table.take(sel), self.schema, InFile(str(self.files[g.file]), g.row0, sel)))
            offset += table.num_rows
        rank = np.cumsum(wanted) - 1  # window row -> its index in `need`
        return _Decoded(w.start, positions, Rows.concat(parts).take(rank[order[positions]]))

    def _bucket(self, order: np.ndarray, lengths: np.ndarray, w: _Window) -> np.ndarray:
        """``order`` (a window's rows in stream order) regrouped so that each global
        batch that lies inside the window holds rows of similar history length: the
        rows between the window's first and last global-batch boundaries are sorted by
        length (stably: equal lengths keep their order), cut into global batches, each
        batch's rows permuted (so that every rank's slice is alike) and, when
        shuffling, the batches permuted. The rows before the first boundary and after
        the last (the batches shared with the neighbouring windows) stay as they are.

        Args:
            order: ``[n]`` row indices of the window.
            lengths: ``[n]`` their history lengths.
            w: the window (its stream position fixes the batch boundaries).
        """
        step = self.batch_size * self.world_size
        head = (-w.start) % step
        full = max(len(order) - head, 0) // step
        if full == 0:
            return order
        mid = slice(head, head + full * step)
        batches = order[mid][np.argsort(lengths[mid], kind="stable")].reshape(full, step)
        rng = np.random.default_rng([self.seed, self.epoch, w.index, 1])  # not the stream's generator
        batches = rng.permuted(batches, axis=1)
        if self.shuffle:
            batches = batches[rng.permutation(full)]
        out = order.copy()
        out[mid] = batches.reshape(-1)
        return out

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
        # in a DataLoader worker no collective can run: errors are raised there
        group = self.group if get_worker_info() is None else None
        for rows in self._rows():
            agree(rows if isinstance(rows, BadRows) else None, group)
            assert isinstance(rows, Rows)
            yield to_batch(rows, self.schema)

    def loader(self, num_workers: int = 0, **kwargs: Any) -> "WorkerLoader":
        """An iterable of this reader's batches decoded by ``num_workers`` DataLoader
        worker processes (``kwargs`` go to ``DataLoader``, e.g. ``prefetch_factor``).
        The workers send :class:`Packed` numpy batches and this process builds the
        tensors, which is several times faster than a ``DataLoader`` over the reader
        itself. Same batches, same order, same ``len`` as that DataLoader."""
        return WorkerLoader(self, num_workers, kwargs)

    def _rows(self) -> Iterator[Union[Rows, BadRows]]:
        """This rank's (and DataLoader worker's) batches as decoded rows; a
        :class:`BadRows` in place of the first batch whose window held a bad row."""
        info = get_worker_info()
        lo, hi = self.worker_range(*((0, 1) if info is None else (info.id, info.num_workers)))
        if lo >= hi:
            return
        windows = self._plan()
        starts = np.array([w.start for w in windows], np.int64)
        files: Dict[int, pq.ParquetFile] = {}
        cache: Dict[int, _Decoded] = {}  # decoded windows the next span may still need
        step = self.batch_size * self.world_size

        def overlapping(a: int, z: int) -> Iterator[int]:
            i = max(int(np.searchsorted(starts, a, side="right")) - 1, 0)
            while i < len(windows) and windows[i].start < z:
                if windows[i].start + windows[i].num_rows > a:
                    yield i
                i += 1

        for k in range(lo, hi):
            a, z = self._span(k)
            parts = []
            for i in overlapping(a, z):
                w = windows[i]
                if i not in cache:
                    try:
                        cache[i] = self._decode_window(files, w, lo, hi)
                    except DataError as e:
                        yield BadRows(str(e))
                        return
                parts.append(cache[i].take(max(a, w.start), min(z, w.start + w.num_rows)))
            g1 = min((k + 1) * step, self.num_rows)
            for j in [j for j in cache if windows[j].start + windows[j].num_rows <= g1]:
                del cache[j]
            yield Rows.concat(parts)


class _PackedStream(IterableDataset):
    def __init__(self, reader: ParquetBatchReader) -> None:
        super().__init__()
        self.reader = reader

    def __iter__(self) -> Iterator[Union[Packed, BadRows]]:
        for rows in self.reader._rows():
            yield rows if isinstance(rows, BadRows) else Packed.of(rows)


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
            agree(packed if isinstance(packed, BadRows) else None, self.reader.group)
            assert isinstance(packed, Packed)
            yield packed.to_batch(self.reader.schema)
