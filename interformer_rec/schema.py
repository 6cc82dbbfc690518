"""The data schema: each Parquet column's role (labels, dense floats, pooled and target
ids, history sequences and their per-step floats), the embedding tables and the id
policy. Part of a :class:`~interformer_rec.config.Config` (``data.schema``), and shipped
with an exported model (the serving feature spec is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from interformer_rec.typed_yaml import ConfigError, require


IdPolicy = Literal["hash", "reject", "managed_collision"]
EvictionPolicy = Literal["lfu", "lru", "distance_lfu"]


@dataclass
class ManagedCollisionConfig:
    """TorchRec's managed collision (``MCHManagedCollisionModule``) for one table: raw
    ids get rows of their own while rows are free; at every ``eviction_interval``
    training steps the ids seen since the last one are admitted, and when the table is
    full the ids with the lowest ``eviction_policy`` score give their rows up (row and
    optimizer state re-initialised). ``lru`` (default): longest unseen; ``lfu``: fewest
    occurrences since admission (keeps ids popular long ago: for id sets that do not
    drift); ``distance_lfu``: occurrences discounted by the steps since last seen
    (``decay_exponent``). An id without a row (not yet admitted, or evicted) reads the
    shared last row of its shard (docs/experiments/managed_collision.md measures them).

    Raw ids are first mixed by splitmix64 into ``[0, input_hash_size)`` (two ids
    collide there with probability about ``n² / (2·input_hash_size)``, ~1e-7 for 1e6
    ids at the default), which spreads them evenly over the ``buckets``: contiguous
    ranges of that space, each with an equal share of the rows. Row-wise sharding puts
    ``buckets / world_size`` buckets on each rank, so ``buckets`` must be a multiple of
    the world size.
    """

    eviction_policy: EvictionPolicy = "lru"
    eviction_interval: int = 1
    decay_exponent: float = 1.0
    input_hash_size: int = (1 << 63) - 1
    buckets: int = 1

    def check(self, where: str) -> None:
        require(self.eviction_interval >= 1, f"{where}.eviction_interval", self.eviction_interval, "must be >= 1")
        require(self.buckets >= 1, f"{where}.buckets", self.buckets, "must be >= 1")
        require(
            1 <= self.input_hash_size <= (1 << 63) - 1,
            f"{where}.input_hash_size", self.input_hash_size, "must be in [1, 2**63 - 1]",
        )
        require(self.decay_exponent > 0, f"{where}.decay_exponent", self.decay_exponent, "must be > 0")


@dataclass
class TableConfig:
    """One embedding table of ``num_embeddings`` rows. How ids become rows is its
    ``id_policy`` (default ``Schema.id_policy``): ``reject`` and ``hash`` as there;
    ``managed_collision`` takes raw int64 ids of any value and gives each its own row
    while rows last (:class:`ManagedCollisionConfig`, settings in ``managed_collision``).
    A managed-collision table is looked up in an EmbeddingCollection: its non-sequence
    features must be scalar ids (they become tokens like a target item)."""

    name: str
    num_embeddings: int
    # initial values instead of the random init: a float ``.npy`` of shape
    # ``[num_embeddings, model.embedding_dim]`` (e.g. co-rating item embeddings,
    # interformer_rec.data.corating); the table is trained from there like any other
    init: Optional[str] = None
    id_policy: Optional[IdPolicy] = None
    managed_collision: ManagedCollisionConfig = field(default_factory=ManagedCollisionConfig)

    def __post_init__(self) -> None:
        require(self.num_embeddings >= 1, f"schema.tables[{self.name}].num_embeddings", self.num_embeddings, "must be >= 1")
        if isinstance(self.managed_collision, dict):  # from schema.json
            self.managed_collision = ManagedCollisionConfig(**self.managed_collision)
        self.managed_collision.check(f"schema.tables[{self.name}].managed_collision")


@dataclass
class SparseFeature:
    """A categorical column: ``int64`` (one id per row) or ``list<int64>`` (multi-hot,
    pooled by sum). A feature whose table is also used by a sequence feature is a
    *target* feature: it is looked up in the EmbeddingCollection beside the history
    (shared table, as DIN/BST do) and must be a scalar column."""

    name: str
    table: str


@dataclass
class SequenceFeature:
    """A ``list<int64>`` column, most recent step last. All sequence features of a
    schema are parallel (one step = one event) and must have equal lengths per row;
    a row longer than ``max_len`` keeps its ``max_len`` most recent steps."""

    name: str
    table: str
    max_len: int


@dataclass
class SequenceFloatFeature:
    """A ``list<float>`` (or ``list<int>``) column of one number per history step,
    parallel to the id sequences (e.g. time since each event, dwell time, price): equal
    lengths per row, most recent last, cut to the same ``max_len`` most recent steps.

    Each value is first transformed (``transform``: ``none``, or ``log1p``:
    ``sign(f)·log(1 + |f|)``, for heavy-tailed durations and counts), then encoded
    (``encoder``): ``linear``, a per-feature linear map ``f·w + b``; or
    ``soft_one_hot`` (Transformers4Rec's soft one-hot embedding): ``num_bins`` learned
    bins, ``softmax(f·w_b + b_b)`` over the bins weighting ``num_bins`` learned
    embeddings. How the encoded values join each step is ``Schema.sequence_float_merge``."""

    name: str
    encoder: Literal["linear", "soft_one_hot"] = "linear"
    num_bins: int = 16
    transform: Literal["none", "log1p"] = "none"


@dataclass
class Schema:
    """Each column's role.

    ``id_policy`` (of every table without its own, :class:`TableConfig`): ``reject``
    (default): every id must lie in ``[0, num_embeddings)`` of its table, else an error
    names file, column and row. ``hash``: every id is passed through a fixed 64-bit mix
    and taken modulo ``num_embeddings`` (the hashing trick, for raw hashed categories
    such as Criteo's); collisions are then by design, never an accident of wrapping.
    ``managed_collision``: raw ids, remapped by TorchRec's managed collision
    (:class:`ManagedCollisionConfig`). ``group_key`` is the
    column whose values group rows for gAUC (usually the user id). ``oracle`` is an
    optional column with the true probability of the first label (synthetic data), used
    only for reporting the oracle AUC; ``task_oracles`` maps further labels to theirs.

    ``sequence_floats`` are numbers per history step beside the id sequences (see
    :class:`SequenceFloatFeature`); ``sequence_float_merge`` says how their encodings
    join each step ``x`` (the ``k`` sequences' embeddings, ``k·d`` wide): ``concat``
    (each feature encoded to ``d``, the step becomes ``(k + n_float)·d`` wide) or
    ``elementwise`` (each encoded to ``k·d``, ``m = x ⊙ (1 + Σ_f e_f)``, as
    Transformers4Rec's element-wise aggregation).
    """

    labels: List[str]
    dense: List[str] = field(default_factory=list)
    sparse: List[SparseFeature] = field(default_factory=list)
    sequence: List[SequenceFeature] = field(default_factory=list)
    sequence_floats: List[SequenceFloatFeature] = field(default_factory=list)
    sequence_float_merge: Literal["concat", "elementwise"] = "concat"
    tables: List[TableConfig] = field(default_factory=list)
    group_key: Optional[str] = None
    oracle: Optional[str] = None
    task_oracles: Dict[str, str] = field(default_factory=dict)
    id_policy: IdPolicy = "reject"

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ConfigError(f"schema.tables: duplicate table names in {names}")
        for f in [*self.sparse, *self.sequence]:
            if f.table not in names:
                raise ConfigError(
                    f"schema: feature {f.name!r} uses table {f.table!r}, "
                    f"which is not in schema.tables ({names})"
                )
        extra = sorted(set(self.task_oracles) - set(self.labels[1:]))
        if extra:
            raise ConfigError(f"schema.task_oracles: {extra} are not labels after the first ({self.labels[1:]})")
        if self.task_oracles and self.oracle is None:
            raise ConfigError("schema.task_oracles needs schema.oracle (the first label's)")
        cols = self.all_columns()
        if len(set(cols)) != len(cols):
            raise ConfigError(f"schema: a column is named twice in {cols}")
        if self.sequence_floats and not self.sequence:
            raise ConfigError("schema.sequence_floats: needs at least one schema.sequence (they are parallel to it)")
        for f in self.sequence_floats:
            if f.num_bins < 2:
                raise ConfigError(f"schema.sequence_floats: {f.name!r} num_bins={f.num_bins}: must be >= 2")
        for name in self.managed_tables:
            if self.table(name).init is not None:
                raise ConfigError(
                    f"schema.tables[{name}].init: a managed_collision table gives rows to ids at run "
                    "time, so initial values per row cannot be given"
                )
        lens = {s.max_len for s in self.sequence}
        if len(lens) > 1:
            raise ConfigError(
                f"schema.sequence: parallel sequences need one max_len, got {sorted(lens)}"
            )

    def table(self, name: str) -> TableConfig:
        return next(t for t in self.tables if t.name == name)

    def policy_of(self, table: str) -> IdPolicy:
        """The id policy of ``table``: its own, else the schema's."""
        return self.table(table).id_policy or self.id_policy

    @property
    def managed_tables(self) -> List[str]:
        """Tables with ``id_policy: managed_collision``, in schema order."""
        return [t.name for t in self.tables if self.policy_of(t.name) == "managed_collision"]

    @property
    def sequence_tables(self) -> List[str]:
        return sorted({s.table for s in self.sequence})

    @property
    def unpooled_tables(self) -> List[str]:
        """Tables of the EmbeddingCollections: the sequence tables and the used
        managed-collision tables (row-wise sharding, all TorchRec offers managed
        collision, is offered for pooled tables on CUDA only)."""
        used = {f.table for f in self.sparse}
        return sorted(set(self.sequence_tables) | (set(self.managed_tables) & used))

    @property
    def pooled_features(self) -> List[SparseFeature]:
        """Features of ``Batch.sparse`` (EmbeddingBagCollection), in schema order."""
        unpooled = set(self.unpooled_tables)
        return [f for f in self.sparse if f.table not in unpooled]

    @property
    def target_features(self) -> List[SparseFeature]:
        """Scalar features looked up in an EmbeddingCollection: those that share a table
        with a sequence (a target item), and those of a managed-collision table."""
        unpooled = set(self.unpooled_tables)
        return [f for f in self.sparse if f.table in unpooled]

    @property
    def unpooled_keys(self) -> List[str]:
        """Keys of ``Batch.sequence``: the target features, then the sequences."""
        return [f.name for f in self.target_features] + [s.name for s in self.sequence]

    @property
    def max_len(self) -> int:
        return self.sequence[0].max_len if self.sequence else 0

    def all_columns(self) -> List[str]:
        cols = [*self.labels, *self.dense, *(f.name for f in self.sparse)]
        cols += [s.name for s in self.sequence]
        cols += [f.name for f in self.sequence_floats]
        return cols
