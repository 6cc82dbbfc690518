"""Torch-free array helpers shared by the reader, the converters and the serving-side
encoder: jagged rows (and their ``list<int64>`` Arrow form), run gathering, the
splitmix64 id hash, Parquet path resolution, :class:`DataError` and
:class:`ConversionError`. (Kept apart from ``data/reader.py`` so that conversion jobs
and the predictor import neither torchrec nor the training stack: about 300 MB of RSS.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa


class DataError(ValueError):
    """Input data that breaks the schema or the bad-input policy of the reader
    (``data/decode.py``) or of a converter (``data/converters/convert.py``)."""


class ConversionError(DataError):
    """A conversion that cannot finish: too many bad rows, an unreadable input, a full
    disk. No output file is left behind."""


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """``[n] -> [n + 1]`` exclusive cumulative sum."""
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate the runs ``values[starts[i] : starts[i] + lengths[i]]`` over rows ``i``.

    Args:
        values: ``[V]`` flat ids.
        starts: ``[n]`` first position of each row's run in ``values``.
        lengths: ``[n]`` run lengths.
    Returns:
        ``[sum(lengths)]`` ids.
    """
    out_starts = _offsets(lengths)[:-1]
    pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - out_starts, lengths)
    return values[pos]


def _row_of(lengths: np.ndarray, position: int) -> int:
    """Row holding flat position ``position`` of a jagged column with ``lengths``."""
    return int(np.searchsorted(np.cumsum(lengths), position, side="right"))


@dataclass
class Jagged:
    """One jagged feature of ``n`` rows: ``lengths [n]`` int64, ``values [sum]`` (int64
    ids, or float32 sequence floats); ``offsets [n + 1]`` is derived."""

    lengths: np.ndarray
    values: np.ndarray
    offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.offsets = _offsets(self.lengths)

    def repeat(self, n: int) -> "Jagged":
        """This one-row feature repeated ``n`` times."""
        assert len(self.lengths) == 1
        return Jagged(np.repeat(self.lengths, n), np.tile(self.values, n))

    def take(self, idx: np.ndarray) -> "Jagged":
        """Rows ``idx`` (``[m]`` int64), in that order."""
        lengths = self.lengths[idx]
        return Jagged(lengths, gather(self.values, self.offsets[:-1][idx], lengths))

    def slice(self, start: int, stop: int) -> "Jagged":
        lo, hi = self.offsets[start], self.offsets[stop]
        return Jagged(self.lengths[start:stop], self.values[lo:hi])

    def tail(self, max_len: int) -> "Jagged":
        """Keep the last ``max_len`` values of each row (the most recent steps)."""
        keep = np.minimum(self.lengths, max_len)
        starts = self.offsets[:-1] + self.lengths - keep
        return Jagged(keep, gather(self.values, starts, keep))

    @staticmethod
    def concat(parts: Sequence["Jagged"]) -> "Jagged":
        return Jagged(
            np.concatenate([p.lengths for p in parts]), np.concatenate([p.values for p in parts])
        )


def list_array(j: Jagged, value_type: pa.DataType = pa.int64()) -> pa.Array:
    """A ``list<value_type>`` Arrow array of a :class:`Jagged` (the converters' and the
    generator's list columns: ``list<int64>`` ids, ``list<float>`` sequence floats)."""
    return pa.ListArray.from_arrays(pa.array(j.offsets.astype(np.int32)), pa.array(j.values, value_type))


def ages_in_days(now: np.ndarray, then: Jagged) -> Jagged:
    """Days from each history event to its example (float32): the sequence float
    ``hist_age_days`` of the converters.

    Args:
        now: ``[m]`` unix seconds of the examples.
        then: ``m`` rows of the unix seconds of each example's history events.

    Returns:
        ``then``'s rows of ages (``now - then``, in days).
    """
    return Jagged(then.lengths, ((np.repeat(now, then.lengths) - then.values) / 86400.0).astype(np.float32))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of ``x`` viewed as uint64, vectorised: ``[N] -> [N]`` uint64."""
    z = x.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
