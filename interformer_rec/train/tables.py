"""Embedding tables: which state entries are tables, and their initial values.

TorchRec initialises each shard from the local RNG, so a table's initial values would
depend on the sharding plan and the world size; :func:`init_embedding_tables` draws
them from generators seeded by ``(seed, table, block of rows)`` instead (or copies a
table's ``init`` file), so every plan and world size starts from the same tables.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from interformer_rec.config import ConfigError, TableConfig
from interformer_rec.modules.embeddings import init_range


def is_table_weight(name: str) -> bool:
    """``name`` (a parameter or state-dict key) is an embedding table's weight."""
    parts = name.split(".")
    return len(parts) >= 3 and parts[-1] == "weight" and parts[-3] in ("embedding_bags", "embeddings")


INIT_BLOCK_ROWS = 4096


def table_weights(model: nn.Module) -> Iterator[Tuple[str, str, torch.Tensor]]:
    """(table name, state-dict key, tensor) for each embedding table weight of a
    (sharded or not) model; the tensor is a ShardedTensor or a plain (replicated) one."""
    for key, value in model.state_dict().items():
        if is_table_weight(key):
            yield key.split(".")[-2], key, value


def _block(seed: int, table: str, block: int, rows: int, cols: int, bound: float) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(table.encode())) * 1_000_003 + block)
    return (torch.rand(rows, cols, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).float()


def table_init_values(
    seed: int, table: str, num_rows: int, dim: int, rows: Tuple[int, int], cols: Tuple[int, int]
) -> torch.Tensor:
    """Initial values of rows ``[r0, r1)`` and columns ``[c0, c1)`` of ``table``
    (``[num_rows, dim]``): uniform in ``±init_range(dim)``, the range every model of
    the project builds its tables with (``modules.embeddings.init_range``), drawn in blocks of :data:`INIT_BLOCK_ROWS` rows from a generator seeded by
    ``(seed, table, block)``, so a shard's values do not depend on how the table is
    sharded. Returns ``[r1 - r0, c1 - c0]`` float32."""
    (r0, r1), (c0, c1) = rows, cols
    bound = init_range(dim)
    parts = []
    for b in range(r0 // INIT_BLOCK_ROWS, (max(r1, r0 + 1) - 1) // INIT_BLOCK_ROWS + 1):
        lo = b * INIT_BLOCK_ROWS
        n = min(INIT_BLOCK_ROWS, num_rows - lo)
        block = _block(seed, table, b, n, dim, bound)
        parts.append(block[max(r0 - lo, 0) : min(r1 - lo, n), c0:c1])
    return torch.cat(parts) if parts else torch.empty(0, c1 - c0)


def pretrained_tables(tables: Sequence[TableConfig], dim: int) -> Dict[str, torch.Tensor]:
    """The initial values of the tables that name an ``init`` file, by table name.

    Raises:
        FileNotFoundError: a missing file (named with its table).
        ConfigError: an array that is not ``[num_embeddings, dim]`` or has a non-finite
            value (the file, the table and the first bad row are named).
    """
    out = {}
    for t in tables:
        if t.init is None:
            continue
        path = Path(t.init)
        if not path.is_file():
            raise FileNotFoundError(f"schema.tables[{t.name}].init: {path} does not exist")
        w = np.load(path)
        if w.shape != (t.num_embeddings, dim) or not np.issubdtype(w.dtype, np.floating):
            raise ConfigError(
                f"{path}: table {t.name!r} needs a float array of shape ({t.num_embeddings}, {dim}) "
                f"(num_embeddings, model.embedding_dim), got {w.dtype} {w.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(w).all(axis=1))
        if bad.size:
            raise ConfigError(f"{path}: table {t.name!r} has a non-finite value in row {bad[0]}")
        out[t.name] = torch.from_numpy(w.astype(np.float32))
    return out


@torch.no_grad()
def init_embedding_tables(model: nn.Module, seed: int, pretrained: Optional[Dict[str, torch.Tensor]] = None) -> int:
    """Overwrite every embedding table of ``model`` (sharded by DMP or not) with
    :func:`table_init_values`, or with its rows of ``pretrained[table]``: the same
    initial tables whatever the plan and world size (TorchRec initialises each shard
    from the local RNG, which differs between plans). Returns the number of tables
    written."""
    pretrained = pretrained or {}

    def values(table: str, num_rows: int, dim: int, rows: Tuple[int, int], cols: Tuple[int, int]) -> torch.Tensor:
        if table in pretrained:
            return pretrained[table][rows[0] : rows[1], cols[0] : cols[1]]
        return table_init_values(seed, table, num_rows, dim, rows, cols)

    n = 0
    for table, _, w in table_weights(model):
        num_rows, dim = w.size()
        if hasattr(w, "local_shards"):  # ShardedTensor
            for shard in w.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(values(table, num_rows, dim, (r0, r0 + nr), (c0, c0 + nc)).to(shard.tensor.device))
        else:
            w.copy_(values(table, num_rows, dim, (0, num_rows), (0, dim)).to(w.device))
        n += 1
    return n
