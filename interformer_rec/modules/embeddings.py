"""Embedding lookups: from a :class:`~interformer_rec.data.batch.Batch`'s dense floats and
KJTs to InterFormer's inputs, the non-sequence tokens ``X¹`` and the padded per-step
sequence embeddings (``JaggedTensor.to_padded_dense``, left-aligned).

The TorchRec embedding modules themselves (``EmbeddingBagCollection`` for pooled
features, ``EmbeddingCollection`` for the target features and the sequences, which share
tables, and TorchRec's ``ManagedCollisionEmbeddingCollection`` for the tables with
``id_policy: managed_collision``) are built here but owned by the model as
``model.ebc`` / ``model.ec`` / ``model.mc_ec`` so that the sharding planner sees them at
stable paths. Their outputs are always read **by name**:
a sharded EBC returns its keys in a different order than the unsharded one.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    ManagedCollisionModule,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from interformer_rec.config import Schema


def init_range(dim: int) -> float:
    """Embedding rows are drawn from ``U(-a, a)`` with ``a = sqrt(3 / d)``: std ``1/sqrt(d)``,
    so a token has expected squared norm 1 whatever the table size.

    TorchRec's default ``a = sqrt(1 / num_embeddings)`` shrinks with the table (±0.03 for
    1000 rows, ±0.001 for 1M): dot products between target and history embeddings then
    start near zero and a target-in-history signal was not learned in 1000 Adam steps on
    a 60-row table, while this scale learned it in ~600 (see tests/test_interformer.py).
    Set through ``weight_init_min/max`` so that DMP's sharded kernels use it too.
    """
    return math.sqrt(3.0 / dim)


class DenseTokens(nn.Module):
    """One token per dense field: ``x_i -> x_i * w_i + b_i`` (a per-field linear map from a
    scalar to ``R^d``), so dense floats join the embeddings as tokens of ``X¹``.

    Args:
        num_dense: number of dense fields ``n_dense`` (may be 0).
        dim: token dimension ``d``.
    """

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.num_dense = num_dense
        self.weight = nn.Parameter(torch.randn(num_dense, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(num_dense, dim))

    def forward(self, dense: Tensor) -> Tensor:
        """
        Args:
            dense: ``[B, n_dense]`` float.

        Returns:
            ``[B, n_dense, d]`` tokens.
        """
        return dense.unsqueeze(-1) * self.weight + self.bias


class ProjectedDenseToken(nn.Module):
    """All dense fields projected to one token (InterFormer §4.1): ``Linear(n_dense -> d)``.

    Args:
        num_dense: ``n_dense`` (at least 1).
        dim: ``d``.
    """

    def __init__(self, num_dense: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_dense, dim)

    def forward(self, dense: Tensor) -> Tensor:
        """
        Args:
            dense: ``[B, n_dense]`` float.

        Returns:
            ``[B, 1, d]``.
        """
        return self.proj(dense).unsqueeze(1)


def pooled_table_configs(schema: Schema, dim: int) -> List[EmbeddingBagConfig]:
    """SUM-pooled table configs (init :func:`init_range`), one per table used by a pooled
    feature, in schema order."""
    pooled = schema.pooled_features
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=dim,
            num_embeddings=schema.table(name).num_embeddings,
            feature_names=[f.name for f in pooled if f.table == name],
            pooling=PoolingType.SUM,
            weight_init_min=-init_range(dim),
            weight_init_max=init_range(dim),
        )
        for name in dict.fromkeys(f.table for f in pooled)
    ]


def build_ebc(
    schema: Schema, dim: int, device: Optional[torch.device] = None
) -> Optional[EmbeddingBagCollection]:
    """The ``EmbeddingBagCollection`` of :func:`pooled_table_configs`, or ``None`` if the
    schema has no pooled features."""
    tables = pooled_table_configs(schema, dim)
    return EmbeddingBagCollection(tables=tables, device=device) if tables else None


def table_rows(schema: Schema, name: str) -> int:
    """Rows of table ``name``: ``num_embeddings``, plus for a managed-collision table one
    row per bucket for the ids that have no row of their own (so that ``num_embeddings``
    distinct ids always fit)."""
    t = schema.table(name)
    if schema.policy_of(name) == "managed_collision":
        return t.num_embeddings + t.managed_collision.buckets
    return t.num_embeddings


def unpooled_table_configs(schema: Schema, dim: int, names: List[str]) -> List[EmbeddingConfig]:
    """One ``EmbeddingConfig`` per table of ``names``; each table's features are the
    target features and the sequences that use it (a target item id and the history item
    ids are two feature names of one table). Init :func:`init_range`."""
    tables = []
    for name in names:
        feats = [f.name for f in schema.target_features if f.table == name]
        feats += [s.name for s in schema.sequence if s.table == name]
        tables.append(
            EmbeddingConfig(
                name=name,
                embedding_dim=dim,
                num_embeddings=table_rows(schema, name),
                feature_names=feats,
                weight_init_min=-init_range(dim),
                weight_init_max=init_range(dim),
            )
        )
    return tables


def build_ec(schema: Schema, dim: int, device: Optional[torch.device] = None) -> Optional[EmbeddingCollection]:
    """The ``EmbeddingCollection`` of the unpooled tables (``schema.unpooled_tables``)
    whose ids are not managed (``None`` if there is none)."""
    managed = set(schema.managed_tables)
    names = [n for n in schema.unpooled_tables if n not in managed]
    return EmbeddingCollection(tables=unpooled_table_configs(schema, dim, names), device=device) if names else None


_EVICTION = {"lfu": LFU_EvictionPolicy, "lru": LRU_EvictionPolicy, "distance_lfu": DistanceLFU_EvictionPolicy}


def build_mc_ec(
    schema: Schema, dim: int, device: Optional[torch.device] = None
) -> Optional[ManagedCollisionEmbeddingCollection]:
    """TorchRec's ``ManagedCollisionEmbeddingCollection`` over the managed-collision
    tables (``None`` if there is none): one ``MCHManagedCollisionModule`` per table, so
    a target item and its history share one remapping as they share one table. Its
    ``zch_size`` is :func:`table_rows`; ids reach it already mixed into
    ``[0, input_hash_size)`` by the reader (``interformer_rec.data.decode``)."""
    managed = set(schema.managed_tables)
    names = [n for n in schema.unpooled_tables if n in managed]
    if not names:
        return None
    configs = unpooled_table_configs(schema, dim, names)
    modules: Dict[str, ManagedCollisionModule] = {}
    for c in configs:
        mc = schema.table(c.name).managed_collision
        policy = _EVICTION[mc.eviction_policy]
        modules[c.name] = MCHManagedCollisionModule(
            zch_size=c.num_embeddings,
            device=device or torch.device("cpu"),
            eviction_policy=policy() if mc.eviction_policy == "lfu" else policy(decay_exponent=mc.decay_exponent),
            eviction_interval=mc.eviction_interval,
            input_hash_size=mc.input_hash_size,
            name=c.name,
            buckets=mc.buckets,
        )
    return ManagedCollisionEmbeddingCollection(
        EmbeddingCollection(tables=configs, device=device),
        ManagedCollisionCollection(modules, embedding_configs=configs),
        # allow_in_place_embed_weight_update: rows of evicted ids are re-initialised
        # through .data, outside the step's autograd graph
        allow_in_place_embed_weight_update=True,
    )


@torch.fx.wrap
def _merged(a: Dict[str, JaggedTensor], b: Dict[str, JaggedTensor]) -> Dict[str, JaggedTensor]:
    """Two lookups' outputs as one dict (a leaf of an fx trace: TorchRec's train
    pipeline traces the model, and a traced dict cannot be iterated)."""
    return {**a, **b}


def unpooled_lookup(
    ec: Optional[EmbeddingCollection], mc_ec: Optional[ManagedCollisionEmbeddingCollection], features: KeyedJaggedTensor
) -> Dict[str, JaggedTensor]:
    """The embeddings of every unpooled feature by name: ``features`` (keys
    ``Schema.unpooled_keys``) looked up in the plain and in the managed-collision
    EmbeddingCollection; each reads its own keys."""
    if mc_ec is None:
        return ec(features)  # type: ignore[misc]
    managed = mc_ec(features)[0]
    return managed if ec is None else _merged(ec(features), managed)


def pooled_tokens(pooled: KeyedTensor, names: List[str]) -> Tensor:
    """Stack the pooled embeddings of ``names`` (read by name) as tokens.

    Args:
        pooled: EBC output, each key ``[B, d]``.
        names: feature names in the order wanted.

    Returns:
        ``[B, len(names), d]``.
    """
    by_name = pooled.to_dict()
    return torch.stack([by_name[n] for n in names], dim=1)


def padded_length(lengths: Tensor, max_len: int) -> int:
    """``T`` of a batch: its longest real history (at least 1, at most ``max_len``), so
    that sequence work follows the real steps, not ``max_len``. Under ``torch.export``
    or an fx trace (TorchRec's train pipeline traces the model) it is ``max_len``: a
    static size. Padded steps never change an output, so both give the same logits.

    Args:
        lengths: ``[B]`` real steps per row.
        max_len: the schema's cap.
    """
    if torch.compiler.is_exporting() or is_fx_symbolic_tracing() or lengths.numel() == 0:
        return max_len
    return max(1, min(max_len, int(lengths.max())))


def step_values(jts: Dict[str, JaggedTensor], sequence_names: List[str]) -> Tuple[Tensor, Tensor]:
    """The ``k`` parallel sequences' embeddings concatenated per real step, jagged.

    Args:
        jts: EC output by feature name (values ``[sum(lengths), d]``; the ``k``
            sequences have equal lengths per row).
        sequence_names: the ``k`` sequences.

    Returns:
        ``values [V, k·d]`` (every real step of every row, row-major; steps of a row
        beyond ``max_len`` included, :func:`pad_steps` drops them) and ``lengths [B]``
        (int64, not clamped).
    """
    values = torch.cat([jts[n].values() for n in sequence_names], dim=-1)
    return values, jts[sequence_names[0]].lengths().to(torch.int64)


def pad_steps(values: Tensor, lengths: Tensor, T: int) -> Tensor:
    """Jagged steps to a left-aligned padded tensor (fbgemm's ``jagged_to_padded_dense``;
    ATen in an exported graph, :mod:`interformer_rec.ops.jagged`).

    Args:
        values: ``[V, D]``.
        lengths: ``[B]`` int64, ``sum = V``.
        T: padded length (rows longer keep their first ``T`` steps).

    Returns:
        ``[B, T, D]``, zeros after each row's steps.
    """
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [T], 0.0)


def target_tokens(jts: Dict[str, JaggedTensor], target_names: List[str]) -> Tensor:
    """The target features' embeddings as tokens.

    Args:
        jts: EC output by feature name (one id per row for a target feature).
        target_names: target features (non-empty).

    Returns:
        ``[B, n_target, d]`` (a zero token where a row has no id:
        ``to_padded_dense`` with length 1).
    """
    return torch.cat([jts[n].to_padded_dense(desired_length=1) for n in target_names], dim=1)


def unpooled_tokens(
    jts: Dict[str, JaggedTensor],
    target_names: List[str],
    sequence_names: List[str],
    max_len: int,
    batch_len: bool = True,
) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """Split the EmbeddingCollection output into target tokens and sequence steps.

    Args:
        jts: EC output by feature name (values ``[sum(lengths), d]``).
        target_names: target features (one id per row each).
        sequence_names: the ``k`` parallel sequences (equal lengths per row).
        max_len: the cap on ``T``.
        batch_len: pad to the batch's longest history (:func:`padded_length`); else to
            ``max_len`` (models whose sizes depend on ``T``).

    Returns:
        ``targets [B, n_target, d]`` (``None`` without target features),
        ``steps [B, T, k*d]`` (the k sequences' embeddings concatenated per step,
        left-aligned, zeros at padded steps; a row longer than ``max_len`` breaks the
        Batch contract and is cut to its first ``max_len`` steps) and ``lengths [B]``
        (int64, clamped to ``T``).
    """
    targets = target_tokens(jts, target_names) if target_names else None
    lengths = jts[sequence_names[0]].lengths().to(torch.int64)
    T = padded_length(lengths, max_len) if batch_len else max_len
    # each sequence padded on its own offsets (one cat of the jagged values would make
    # torch.export equate the sequences' unbacked value counts and guard the batch)
    steps = torch.cat([jts[n].to_padded_dense(desired_length=T) for n in sequence_names], dim=-1)
    return targets, steps, lengths.clamp(max=T)
