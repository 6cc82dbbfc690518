"""Embedding tables: which state entries are tables, and their initial values.

TorchRec initialises each shard from the local RNG, so a table's initial values would
depend on the sharding plan and the world size; :func:`init_embedding_tables` draws
them from generators seeded by ``(seed, table, block of rows)`` instead (or copies a
table's ``init`` file), so every plan and world size starts from the same tables.

A managed-collision table assigns rows to ids at run time; a row is re-initialised when
an id is admitted to it. :func:`prepare_managed_tables` makes that value a function of
``(seed, table, id)`` (:func:`id_init_values`), so an id starts from the same embedding
whatever row, rank or world size holds it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from interformer_rec.arrays import splitmix64
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


def id_init_values(seed: int, table: str, ids: np.ndarray, dim: int) -> torch.Tensor:
    """Initial embeddings of ``ids`` (``[n]`` int64, as the reader gives them) of a
    managed-collision ``table``: uniform in ``±init_range(dim)`` like every table, each
    value a splitmix64 hash of ``(seed, table, id, column)``. Returns ``[n, dim]``
    float32."""
    salt = np.uint64((seed * 1_000_003 + zlib.crc32(table.encode())) & 0xFFFFFFFFFFFFFFFF)
    cols = np.arange(dim, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        keys = splitmix64(ids.astype(np.int64).view(np.uint64) ^ salt)[:, None] + cols[None, :]
        h = splitmix64(keys.reshape(-1)).reshape(len(ids), dim)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    return torch.from_numpy(((u * 2 - 1) * init_range(dim)).astype(np.float32))


UNSEEN_ID = np.iinfo(np.int64).max  # the id whose init values a shard's row for ids without one gets


@torch.no_grad()
def prepare_managed_tables(model: nn.Module, seed: int) -> int:
    """Two changes to TorchRec's managed collision in ``model`` (DMP or not):

    * every ``MCHManagedCollisionModule`` grows its history buffer (the ids it counts
      between admissions) when a step brings more ids than it has room for
      (:func:`_growing_profile`); TorchRec sizes it once, from the first batch, and
      silently drops what does not fit, so a log whose first batch has short
      histories would leave most later ids unadmitted;
    * every sharded managed-collision collection initialises the row of a newly
      admitted id with :func:`id_init_values` (TorchRec's own reset draws from the
      local RNG, after resetting the row's optimizer state, which it still does), and
      gives each shard's row of ids without a row (its last) the values of
      :data:`UNSEEN_ID`, so that it too is the same on every world size.

    Returns the number of sharded collections hooked."""
    from torchrec.distributed.mc_embedding_modules import BaseShardedManagedCollisionEmbeddingCollection
    from torchrec.modules.mc_modules import MCHManagedCollisionModule

    for mch in model.modules():
        if isinstance(mch, MCHManagedCollisionModule):
            mch.profile = _growing_profile(mch, mch.profile)  # type: ignore[method-assign]
    n = 0
    for m in model.modules():
        if isinstance(m, BaseShardedManagedCollisionEmbeddingCollection):
            m._evict = _id_seeded_evict(m, m._evict, seed)  # type: ignore[method-assign]
            for table, mch in m._managed_collision_collection._managed_collision_modules.items():
                weight = m._embedding_module.embeddings.get_parameter(f"{table}.weight")
                unseen = id_init_values(seed, table, np.array([UNSEEN_ID]), weight.size(1))
                weight.data[mch._zch_size - 1] = unseen[0].to(weight)
            n += 1
    return n


def _id_seeded_evict(m: nn.Module, evict, seed: int):  # type: ignore[no-untyped-def]
    @torch.no_grad()
    def run(evictions: Dict[str, Optional[torch.Tensor]]) -> None:
        evict(evictions)  # TorchRec: optimizer state and weights of the rows reset
        for table, rows in evictions.items():
            if rows is None or rows.numel() == 0:
                continue
            mch = m._managed_collision_collection._managed_collision_modules[table]
            # evicted rows are local to the shard; the mapping holds global rows
            row_ids = torch.full((mch._zch_size,), -1, dtype=torch.int64, device=rows.device)
            row_ids[mch._mch_remapped_ids_mapping - mch._output_global_offset] = mch._mch_sorted_raw_ids
            weight = m._embedding_module.embeddings.get_parameter(f"{table}.weight")
            ids = row_ids[rows.long()].cpu().numpy()
            weight.data[rows.long()] = id_init_values(seed, table, ids, weight.size(1)).to(weight)

    return run


def _growing_profile(mch: nn.Module, profile):  # type: ignore[no-untyped-def]
    """``mch.profile`` that first makes room for the step's ids in the history buffer
    (doubling it, the ids already counted kept)."""

    def run(features: Dict[str, Any]) -> Dict[str, Any]:
        size = mch._input_history_buffer_size
        if mch.training and size != -1:
            need = mch._current_history_buffer_offset + sum(int(f.values().numel()) for f in features.values())
            if need > size:
                _grow_history(mch, max(need, 2 * size))
        return profile(features)

    return run


@torch.no_grad()
def _grow_history(mch: nn.Module, size: int) -> None:
    used = mch._current_history_buffer_offset
    acc = mch._history_accumulator.new_empty(size)
    acc[:used] = mch._history_accumulator[:used]
    mch._history_accumulator = acc
    for name, old in list(mch._history_metadata.items()):
        new = old.new_zeros(size)
        new[:used] = old[:used]
        setattr(mch, f"_history_{name}", new)  # a registered (non-persistent) buffer
        mch._history_metadata[name] = new
    mch._input_history_buffer_size = size
