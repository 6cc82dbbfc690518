"""Typed configs, loaded from YAML files in ``configs/``.

Every knob of the data schema, the models, the trainer and the distributed setup is a
field of one of these dataclasses. ``load_config(path)`` reads a YAML file into a
:class:`Config`; an unknown key or a value of the wrong type is an error that names the
file and the dotted key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, TypeVar

import yaml

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A config file that cannot be turned into a :class:`Config`."""


# --------------------------------------------------------------------------- schema


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


IdPolicy = Literal["hash", "reject"]


@dataclass
class Schema:
    """Each column's role.

    ``id_policy``: ``reject`` (default): every id must lie in ``[0, num_embeddings)``
    of its table, else an error names file, column and row. ``hash``: every id of every
    sparse/sequence column is passed through a fixed 64-bit mix and taken modulo
    ``num_embeddings`` (the hashing trick, for raw hashed categories such as Criteo's);
    collisions are then by design, never an accident of wrapping. ``group_key`` is the column whose values group rows for gAUC (usually
    the user id). ``oracle`` is an optional column with the true click probability
    (synthetic data), used only for reporting the oracle AUC.
    """

    labels: List[str]
    dense: List[str] = field(default_factory=list)
    sparse: List[SparseFeature] = field(default_factory=list)
    sequence: List[SequenceFeature] = field(default_factory=list)
    tables: List[TableConfig] = field(default_factory=list)
    group_key: Optional[str] = None
    oracle: Optional[str] = None
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
        cols = self.all_columns()
        if len(set(cols)) != len(cols):
            raise ConfigError(f"schema: a column is named twice in {cols}")
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
        return cols


# --------------------------------------------------------------------------- data


@dataclass
class SyntheticConfig:
    """The planted click model of ``interformer-rec generate`` (see data/synthetic.py)."""

    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    num_contexts: int = 8
    num_segments: int = 8
    num_dense: int = 4
    positive_rate: float = 0.25  # the intercept is calibrated to this click rate
    max_len: int = 20
    min_len: int = 0
    rows: Dict[str, int] = field(
        default_factory=lambda: {"train": 40000, "valid": 8000, "test": 8000}
    )
    row_group_size: int = 4096
    seed: int = 0


@dataclass
class DataConfig:
    """Where the Parquet data lives (a file or a directory of ``*.parquet`` files for
    each split) and what its columns mean."""

    schema: Schema
    train: str
    valid: str
    test: Optional[str] = None
    synthetic: Optional[SyntheticConfig] = None
    shuffle_row_groups: bool = True


# --------------------------------------------------------------------------- models

Interaction = Literal["dot", "dcn", "projection", "dhen", "dhen_flat"]


@dataclass
class InterFormerConfig:
    """Sizes of InterFormer (arXiv 2411.09852). Defaults follow the paper where it says:
    4 CLS tokens, 2 PMA seeds, 2 most-recent tokens, DHEN interaction (§3.2), RoPE.
    Depth, heads and widths are sized for a CPU; ``configs/paper/`` holds the paper's
    settings. What each choice measured is in ``docs/experiments/``."""

    num_layers: int = 1
    num_heads: int = 1
    num_cls: int = 4
    num_pma: int = 2
    pma_context: bool = True  # target-aware PMA seeds, conditioned on X (paper: learned seeds only)
    num_recent: int = 2
    # target-history match tokens in X (see models.interformer.match_tokens); not in the paper
    match_tokens: bool = False
    # target-history similarity tokens in X (see models.interformer.SimilarityTokens);
    # not in the paper
    similarity_tokens: bool = False
    interaction: Interaction = "dhen"
    # DHEN (§3.2): each layer is LayerNorm(Ensemble(DOT(X), DCN(X)) + ShortCut(X));
    # Ensemble "concat" (concatenation, then a linear map back to the token width) or "sum"
    # (the default: ahead on AUC on all three benchmark data sets, 3 seeds each)
    dhen_layers: int = 1
    dhen_ensemble: Literal["concat", "sum"] = "sum"
    # LayerNorm on the Interaction Arch's residual stream: X^{l+1} = LN(X^l + MLP(...))
    interaction_norm: bool = True
    interaction_mlp: List[int] = field(default_factory=lambda: [64])
    dcn_num_layers: int = 2
    dcn_low_rank: int = 16
    projection_branch1: List[int] = field(default_factory=lambda: [64, 64])
    projection_branch2: List[int] = field(default_factory=lambda: [64, 64])
    masknet_hidden: int = 64
    # dense floats as tokens: one per field (x_i · w_i + b_i) or one projected token
    # (§4.1: Linear(n_dense -> d))
    dense_tokens: Literal["per_field", "projected"] = "per_field"
    # PFFN weight generator: "full" W_PFFN = reshape(flatten(X_sum) · W), W ∈ R^{m·d × d²};
    # "paper" (appendix A.2.2) W_PFFN = X_sumᵀ · W, W ∈ R^{m × d}
    pffn_generator: Literal["full", "paper"] = "full"
    ffn_hidden: int = 0
    attention_window: int = 64
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.1  # on the Sequence Arch's residual branches
    attention_dropout: float = 0.0  # on its attention weights: on CPU SDPA then has no fused kernel
    rope: bool = True


@dataclass
class DLRMConfig:
    """TorchRec DLRM baselines (``dlrm``, ``dlrm_dcn``, ``dlrm_projection``)."""

    dense_arch: List[int] = field(default_factory=lambda: [64])
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dcn_num_layers: int = 3
    dcn_low_rank: int = 16
    projection_branch1: List[int] = field(default_factory=lambda: [64, 64])
    projection_branch2: List[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.0  # after each hidden layer of the over arch


@dataclass
class BSTConfig:
    """Behaviour Sequence Transformer baseline: transformer over [history ; target]."""

    num_layers: int = 1
    num_heads: int = 2
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0


@dataclass
class DINConfig:
    """Deep Interest Network baseline (Zhou et al., 2018): target attention over the
    history with a local activation unit, then an MLP."""

    attention_mlp: List[int] = field(default_factory=lambda: [80, 40])
    over_arch: List[int] = field(default_factory=lambda: [200, 80])
    dropout: float = 0.0


ModelName = Literal["interformer", "dlrm", "dlrm_dcn", "dlrm_projection", "bst", "din"]


@dataclass
class ModelConfig:
    name: ModelName = "interformer"
    embedding_dim: int = 16
    interformer: InterFormerConfig = field(default_factory=InterFormerConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    bst: BSTConfig = field(default_factory=BSTConfig)
    din: DINConfig = field(default_factory=DINConfig)


_MODEL_SECTIONS = ("interformer", "dlrm", "bst", "din")


def model_in_use(model: Dict[str, Any]) -> Dict[str, Any]:
    """``model`` (a :meth:`Config.to_dict` section) without the sub-configs of the models
    it does not build: a DLRM does not change when ``model.interformer`` does."""
    name = model.get("name", "")
    own = "dlrm" if str(name).startswith("dlrm") else name
    return {k: v for k, v in model.items() if k not in _MODEL_SECTIONS or k == own}


# --------------------------------------------------------------------------- training


@dataclass
class OptimizerConfig:
    name: Literal["adam", "adagrad", "sgd", "rowwise_adagrad"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    eps: float = 1e-8


@dataclass
class TableSharding:
    """Per-table overrides for the planner (names as in torchrec's ShardingType and
    EmbeddingComputeKernel values, e.g. ``table_wise``, ``row_wise``, ``fused``)."""

    sharding_types: List[str] = field(default_factory=list)
    compute_kernels: List[str] = field(default_factory=list)
    # column-wise shards: smallest shard width (the planner's default is 128 columns,
    # so a narrower table is not split at all unless this is set)
    min_partition: Optional[int] = None


@dataclass
class DistConfig:
    backend: Optional[Literal["gloo", "nccl"]] = None  # None: nccl on CUDA, else gloo
    tables: Dict[str, TableSharding] = field(default_factory=dict)
    # offer row_wise / table_row_wise for EmbeddingBagCollection tables on CPU too:
    # TorchRec's sharder offers them on CUDA only, but they run on gloo (tested)
    cpu_row_wise: bool = False
    # every collective (and joining the group) fails after this long: a hung or stopped
    # peer ends the job with an error instead of blocking it (torch's default: 30 min)
    timeout_s: float = 600.0


Monitor = Literal["auc", "gauc", "logloss"]


@dataclass
class LRScheduleConfig:
    """Learning-rate schedule of every optimizer (dense and fused embedding ones), as a
    multiplier of each one's configured ``lr``.

    * ``constant``: no change.
    * ``plateau`` (BARS / FuxiCTR ``ReduceLROnPlateau``): after ``patience`` validations
      without an improvement of ``train.monitor``, multiply by ``factor`` (at least
      ``min_scale``).
    * ``cosine``: linear warm-up over ``warmup_steps`` steps, then a cosine decay to
      ``min_scale`` at the last step of ``train.epochs``.
    """

    name: Literal["constant", "plateau", "cosine"] = "constant"
    factor: float = 0.1
    patience: int = 0
    warmup_steps: int = 0
    min_scale: float = 1e-3


@dataclass
class TrainConfig:
    batch_size: int = 256
    eval_batch_size: int = 1024
    epochs: int = 3  # the most epochs trained (early stopping may end sooner)
    # the validation metric that picks the best epoch, drives the plateau schedule and
    # early stopping (auc, gauc: higher is better; logloss: lower is better)
    monitor: Monitor = "auc"
    # stop after this many validations without an improvement of `monitor` (None: never);
    # the test split is always scored with the best epoch's checkpoint
    early_stopping_patience: Optional[int] = None
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    # FuxiCTR's embedding_regularizer: λ · Σ ||e||² / B added to the loss, over the
    # embedding vectors the batch looks up (see train.trainer.EmbeddingRegularizer)
    embedding_regularizer: float = 0.0
    seed: int = 0
    max_steps_per_epoch: Optional[int] = None
    dense_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="adagrad", lr=0.05)
    )
    out_dir: str = "runs/default"
    log_every: int = 50
    progress: bool = True
    # also checkpoint every N training steps (mid-epoch); None: only at epoch ends
    checkpoint_every_steps: Optional[int] = None
    # continue from <out_dir>/checkpoints/latest if there is one (model, optimizer,
    # epoch and step within it); a fresh start if there is none
    resume: bool = False

    def __post_init__(self) -> None:
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"train.early_stopping_patience={self.early_stopping_patience}: must be >= 1 (or null)")


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of the config, for manifests and run names."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- loading


def _build(tp: Any, value: Any, where: str) -> Any:
    """Turn plain YAML ``value`` into an instance of type ``tp``, checking as it goes."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - fields
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
        # a partial mapping for a nested dataclass completes that field's own default
        # (e.g. train.embedding_optimizer: {lr: 0.02} keeps the default name adagrad)
        defaults = {
            f.name: dataclasses.asdict(f.default_factory())
            for f in dataclasses.fields(tp)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(hints[f.name])
        }
        value = {
            k: _merge(defaults[k], v) if k in defaults and isinstance(v, dict) else v
            for k, v in value.items()
        }
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where or 'config'}: {e}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def config_from_dict(raw: Dict[str, Any], where: str = "") -> Config:
    try:
        return _build(Config, raw, where)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    """Read a YAML config; a top-level ``base: other.yaml`` (relative to this file) is
    read first and this file's keys are deep-merged over it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def _apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Set ``dotted.key=value`` strings (value parsed as YAML) in the mapping ``raw``."""
    for item in overrides:
        key, sep, val = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return raw


def load_config(path: str | Path, overrides: Optional[List[str]] = None) -> Config:
    """Load a YAML config. Relative data paths are resolved against the current working
    directory. ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML),
    e.g. ``train.epochs=1``."""
    path = Path(path)
    return config_from_dict(_apply_overrides(_read_yaml(path), overrides or []), str(path))


def with_overrides(cfg: _T, overrides: Sequence[str], where: str = "") -> _T:
    """A copy of the config dataclass ``cfg`` with ``dotted.key=value`` overrides below
    it (e.g. ``interformer.dropout=0`` on a :class:`ModelConfig`), checked like a file."""
    return _build(type(cfg), _apply_overrides(dataclasses.asdict(cfg), overrides), where)
