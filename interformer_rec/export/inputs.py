"""Inputs of an export: rows to trace with, random valid rows, and held-out rows read
from Parquet, all as :class:`~interformer_rec.serving.features.Encoded` (or its five
plain tensors, :data:`Inputs`)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor

from interformer_rec.data.sources import open_input
from interformer_rec.serving.manifest import ExportError
from interformer_rec.serving.features import Encoded, FeatureSpec, Jagged, encode_table

# dense [B, n_dense], sparse_values [V_s], sparse_lengths [n_pooled, B],
# sequence_values [V_q], sequence_lengths [n_unpooled, B] (, sequence_floats [V_f, n_float])
Inputs = Tuple[Tensor, ...]


def _random_ids(rng: np.random.Generator, lengths: np.ndarray, size: int) -> Jagged:
    """Rows of ``lengths[i]`` ids in ``[0, size)``."""
    return Jagged(lengths.astype(np.int64), rng.integers(0, size, int(lengths.sum())).astype(np.int64))


def _random_floats(rng: np.random.Generator, spec: FeatureSpec, lengths: np.ndarray) -> List[Jagged]:
    """One float :class:`Jagged` of ``lengths`` per sequence float (log-normal values:
    positive and spread over decades, like durations)."""
    return [Jagged(lengths.astype(np.int64), rng.lognormal(0.0, 2.0, int(lengths.sum())).astype(np.float32))
            for _ in spec.floats]


def random_encoded(
    spec: FeatureSpec, n: int, rng: np.random.Generator, sequences: str = "random", bags: str = "random"
) -> Encoded:
    """``n`` random valid rows.

    Args:
        sequences: ``random`` (lengths 0..max_len), ``empty`` or ``full`` (max_len).
        bags: ``random`` (pooled bags of 0..3 ids, at least one in row 0) or ``empty``.
    """
    dense = rng.standard_normal((n, len(spec.dense))).astype(np.float32)
    if bags == "empty":
        pooled = [_random_ids(rng, np.zeros(n, np.int64), f.num_embeddings) for f in spec.pooled]
    else:
        pooled = []
        for f in spec.pooled:
            lengths = rng.integers(0, 4, n)
            lengths[0] = max(lengths[0], 1)
            pooled.append(_random_ids(rng, lengths, f.num_embeddings))
    T = spec.max_len
    if sequences == "empty":
        seq_len = np.zeros(n, np.int64)
    elif sequences == "full":
        seq_len = np.full(n, T, np.int64)
    else:
        seq_len = rng.integers(0, T + 1, n)
    unpooled = [_random_ids(rng, np.ones(n, np.int64), f.num_embeddings) for f in spec.targets]
    unpooled += [_random_ids(rng, seq_len, f.num_embeddings) for f in spec.sequences]
    return Encoded(dense, pooled, unpooled, floats=_random_floats(rng, spec, seq_len))


def with_sequences(enc: Encoded, spec: FeatureSpec, mode: str, rng: np.random.Generator) -> Encoded:
    """``enc`` with its sequences (and sequence floats) replaced: ``empty`` or ``full``
    (max_len random ids and values)."""
    n, nt = len(enc), len(spec.targets)
    lengths = np.zeros(n, np.int64) if mode == "empty" else np.full(n, spec.max_len, np.int64)
    seqs = [_random_ids(rng, lengths, f.num_embeddings) for f in spec.sequences]
    return Encoded(enc.dense, enc.pooled, enc.unpooled[:nt] + seqs, floats=_random_floats(rng, spec, lengths))


def example_inputs(spec: FeatureSpec, n: int = 8, seed: int = 0) -> Inputs:
    """Inputs to trace with: ``n`` rows whose batch and value counts are all distinct and
    at least 2 (so that none is specialised to a constant or tied to another)."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        t = random_encoded(spec, n, rng).to_tensors()
        sizes = [n] + ([t[1].numel()] if spec.pooled else []) + [t[3].numel()]
        if spec.floats and (spec.targets or len(spec.sequences) > 1):  # else V_f = V_q always
            sizes.append(t[5].size(0))
        if len(set(sizes)) == len(sizes) and min(sizes) >= 2:
            return t
    raise ExportError("could not draw example inputs with distinct sizes")


def read_encoded(spec: FeatureSpec, paths: Sequence[str], max_rows: int) -> Tuple[Encoded, Optional[np.ndarray]]:
    """Up to ``max_rows`` rows of Parquet ``paths`` (row group by row group) and their
    labels (``[n, tasks]``, ``None`` if a label column is missing)."""
    import pyarrow.parquet as pq

    parts: List[Encoded] = []
    labels: List[np.ndarray] = []
    have_labels = True
    rows = 0
    for path in paths:
        pf = pq.ParquetFile(open_input(path))
        row0 = 0
        for g in range(pf.num_row_groups):
            if rows >= max_rows:
                break
            cols = [c for c in spec.feature_names + spec.labels if c in pf.schema_arrow.names]
            table = pf.read_row_group(g, columns=cols).slice(0, max_rows - rows)
            parts.append(encode_table(spec, table, str(path), row0))
            if have_labels and all(c in table.column_names for c in spec.labels):
                labels.append(np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in spec.labels], 1))
            else:
                have_labels = False
            row0 += pf.metadata.row_group(g).num_rows
            rows += table.num_rows
    if not parts:
        raise ExportError(f"no rows in {[str(p) for p in paths]}")
    return Encoded.concat(parts), (np.concatenate(labels).astype(np.float32) if have_labels else None)
