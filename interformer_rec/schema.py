"""The data schema: each Parquet column's role (labels, dense floats, pooled and target
ids, history sequences and their per-step floats), the embedding tables and the id
policy. Part of a :class:`~interformer_rec.config.Config` (``data.schema``), and shipped
with an exported model (the serving feature spec is built from it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from interformer_rec.typed_yaml import ConfigError, require


@dataclass
class TableConfig:
    """One embedding table. ``num_embeddings`` is the hash size: ids must lie in
    ``[0, num_embeddings)`` or are treated by ``Schema.id_policy``."""

    name: str
    num_embeddings: int
    # initial values instead of the random init: a float ``.npy`` of shape
    # ``[num_embeddings, model.embedding_dim]`` (e.g. co-rating item embeddings,
    # interformer_rec.data.corating); the table is trained from there like any other
    init: Optional[str] = None

    def __post_init__(self) -> None:
        require(self.num_embeddings >= 1, f"schema.tables[{self.name}].num_embeddings", self.num_embeddings, "must be >= 1")


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


IdPolicy = Literal["hash", "reject"]


@dataclass
class Schema:
    """Each column's role.

    ``id_policy``: ``reject`` (default): every id must lie in ``[0, num_embeddings)``
    of its table, else an error names file, column and row. ``hash``: every id of every
    sparse/sequence column is passed through a fixed 64-bit mix and taken modulo
    ``num_embeddings`` (the hashing trick, for raw hashed categories such as Criteo's);
    collisions are then by design, never an accident of wrapping. ``group_key`` is the
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
        lens = {s.max_len for s in self.sequence}
        if len(lens) > 1:
            raise ConfigError(
                f"schema.sequence: parallel sequences need one max_len, got {sorted(lens)}"
            )

    def table(self, name: str) -> TableConfig:
        return next(t for t in self.tables if t.name == name)

    @property
    def sequence_tables(self) -> List[str]:
        return sorted({s.table for s in self.sequence})

    @property
    def pooled_features(self) -> List[SparseFeature]:
        """Features of ``Batch.sparse`` (EmbeddingBagCollection), in schema order."""
        return [f for f in self.sparse if f.table not in self.sequence_tables]

    @property
    def target_features(self) -> List[SparseFeature]:
        """Scalar features that share a table with a sequence (EmbeddingCollection)."""
        return [f for f in self.sparse if f.table in self.sequence_tables]

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
