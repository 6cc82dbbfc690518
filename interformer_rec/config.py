"""Typed configs, loaded from YAML files in ``configs/``.

Every knob of the data schema, the models, the trainer and the distributed setup is a
field of one of these dataclasses. ``load_config(path)`` reads a YAML file into a
:class:`Config` (with :mod:`interformer_rec.typed_yaml`); an unknown key, a value of the
wrong type or a model size out of range is a :class:`ConfigError` that names the file and
the dotted key, never a silent default or a traceback from inside the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Literal, Optional, Sequence, Tuple, TypeVar

from interformer_rec.schema import (
    EvictionPolicy,
    IdPolicy,
    ManagedCollisionConfig,
    Schema,
    SequenceFeature,
    SequenceFloatFeature,
    SparseFeature,
    TableConfig,
)
from interformer_rec.typed_yaml import Checked, ConfigError, apply_overrides, build, read_yaml, require

# re-exported: the CLI and the models raise ConfigError from here; the schema's types
# are a config's (data.schema)
__all__ = [
    "ConfigError", "EvictionPolicy", "IdPolicy", "ManagedCollisionConfig", "Schema", "SequenceFeature",
    "SequenceFloatFeature", "SparseFeature", "TableConfig",
]

_T = TypeVar("_T")


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
    # history lengths: uniform on [min_len, max_len], or long-tailed like real logs:
    # log-normal with mean `mean_len` and shape `length_sigma`, rounded, clipped to
    # [min_len, max_len]
    length_dist: Literal["uniform", "lognormal"] = "uniform"
    mean_len: float = 10.0
    length_sigma: float = 1.0
    rows: Dict[str, int] = field(
        default_factory=lambda: {"train": 40000, "valid": 8000, "test": 8000}
    )
    row_group_size: int = 4096
    seed: int = 0
    # a second planted task: `convert`, possible only after a click (see data/synthetic.py)
    conversion: bool = False


@dataclass
class DataConfig(Checked):
    """Where the Parquet data lives (a file or a directory of ``*.parquet`` files for
    each split) and what its columns mean."""

    schema: Schema
    # each split: a file, a folder (recursive; hive partitions), a glob or a URI
    # (s3://, gs://, hdfs://, ...; see data.sources)
    train: str
    valid: str
    test: Optional[str] = None
    # per split, the hive partitions read: [[column, op, value], ...], all must hold
    filters: Dict[str, List[List[Any]]] = field(default_factory=dict)
    synthetic: Optional[SyntheticConfig] = None
    shuffle_row_groups: bool = True
    # batches of similar history length within each shuffle window (data.reader), for
    # every split the trainer reads: each batch is padded to its own longest history
    length_buckets: bool = True
    # DataLoader worker processes that read and decode batches off the training thread
    # (0: in the training process); batches each worker keeps ready
    num_workers: int = 0
    prefetch_factor: int = 2

    _key: ClassVar[str] = "data"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "non_negative": ("num_workers",),
        "positive": ("prefetch_factor",),
    }

    def validate(self) -> None:
        super().validate()
        for split, conditions in self.filters.items():
            require(split in ("train", "valid", "test"), f"data.filters.{split}", conditions, "splits are train, valid, test")
            for c in conditions:
                require(len(c) == 3 and isinstance(c[0], str), f"data.filters.{split}", conditions,
                        "each condition is [column, op, value]")


# --------------------------------------------------------------------------- models

Interaction = Literal["dot", "dcn", "projection", "dhen", "dhen_flat", "infnet"]


@dataclass
class InterFormerConfig(Checked):
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
    # DIN's target attention over the raw history as one more token in X (see
    # models.interformer.TargetAttentionToken); not in the paper (false: the paper's
    # model). Hidden sizes of its activation unit (DIN's): target_attention_mlp
    target_attention: bool = True
    target_attention_mlp: List[int] = field(default_factory=lambda: [80, 40])
    # the target-attention token also read by the over-arch directly (beside the summaries)
    target_attention_direct: bool = True
    # the over-arch also reads the last layer's non-sequence tokens X^{L+1} (n·d numbers)
    # beside the summaries; not in the paper (its classifier reads the summaries only)
    readout_tokens: bool = True
    interaction: Interaction = "dhen"
    # DHEN (§3.2): each layer is LayerNorm(Ensemble(DOT(X), DCN(X)) + ShortCut(X));
    # Ensemble "concat" (concatenation, then a linear map back to the token width) or "sum"
    dhen_layers: int = 1
    dhen_ensemble: Literal["concat", "sum"] = "sum"
    # interaction "infnet" (INFNet's proxy tokens over the two token types [X ; S_sum]):
    # proxies per type and alternating blocks
    infnet_proxies: int = 2
    infnet_blocks: int = 1
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
    # the heads on the summary, one logit per label: "shared" (one over arch with T
    # outputs), "towers" (an over arch per task) or "mmoe" (num_experts over-arch experts
    # shared by the tasks, a softmax gate and a linear head per task)
    task_heads: Literal["shared", "towers", "mmoe"] = "shared"
    num_experts: int = 4
    dropout: float = 0.1  # on the Sequence Arch's residual branches
    attention_dropout: float = 0.0  # on its attention weights: on CPU SDPA then has no fused kernel
    rope: bool = True

    _key: ClassVar[str] = "model.interformer"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "positive": (
            "num_layers", "num_heads", "num_cls", "dhen_layers", "dcn_num_layers", "dcn_low_rank", "masknet_hidden",
            "infnet_proxies", "infnet_blocks", "num_experts",
        ),
        "non_negative": ("num_pma", "num_recent", "ffn_hidden", "attention_window"),
        "layers": ("interaction_mlp", "projection_branch1", "projection_branch2", "over_arch", "target_attention_mlp"),
        "rate": ("dropout", "attention_dropout"),
    }


@dataclass
class DLRMConfig(Checked):
    """TorchRec DLRM baselines (``dlrm``, ``dlrm_dcn``, ``dlrm_projection``)."""

    dense_arch: List[int] = field(default_factory=lambda: [64])
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dcn_num_layers: int = 3
    dcn_low_rank: int = 16
    projection_branch1: List[int] = field(default_factory=lambda: [64, 64])
    projection_branch2: List[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.0  # after each hidden layer of the over arch

    _key: ClassVar[str] = "model.dlrm"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "positive": ("dcn_num_layers", "dcn_low_rank"),
        "layers": ("dense_arch", "projection_branch1", "projection_branch2"),
        "hidden": ("over_arch",),
        "rate": ("dropout",),
    }


@dataclass
class BSTConfig(Checked):
    """Behaviour Sequence Transformer baseline: transformer over [history ; target]."""

    num_layers: int = 1
    num_heads: int = 2
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0

    _key: ClassVar[str] = "model.bst"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "positive": ("num_layers", "num_heads"), "hidden": ("over_arch",), "rate": ("dropout",)
    }


@dataclass
class DINConfig(Checked):
    """Deep Interest Network baseline (Zhou et al., 2018): target attention over the
    history with a local activation unit, then an MLP."""

    attention_mlp: List[int] = field(default_factory=lambda: [80, 40])
    over_arch: List[int] = field(default_factory=lambda: [200, 80])
    dropout: float = 0.0

    _key: ClassVar[str] = "model.din"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "layers": ("attention_mlp",), "hidden": ("over_arch",), "rate": ("dropout",)
    }


@dataclass
class INFNetConfig(Checked):
    """INFNet-style model: ``num_proxies`` learned proxy tokens per token type
    (non-sequence, sequence, task) fuse the types by cross-attention (heterogeneous
    flow, O(M·N·d)); a proxy gating unit per type refines each token with its proxies
    (homogeneous flow); ``num_blocks`` alternating blocks."""

    num_proxies: int = 4
    num_blocks: int = 2
    num_heads: int = 2
    ffn_hidden: int = 64  # the proxies' feed-forward after each cross-attention
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0  # after each hidden layer of the over arch

    _key: ClassVar[str] = "model.infnet"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "positive": ("num_proxies", "num_blocks", "num_heads", "ffn_hidden"),
        "hidden": ("over_arch",),
        "rate": ("dropout",),
    }


@dataclass
class OneTransConfig(Checked):
    """OneTrans baseline: one causal transformer over [sequence tokens ; non-sequence
    tokens], token-specific parameters for each non-sequence token and shared ones for
    the sequence tokens, pyramid stacking (each layer keeps fewer of the most recent
    sequence tokens as queries; the last keeps none)."""

    num_layers: int = 2
    num_heads: int = 2
    ffn_hidden: int = 64
    pyramid: bool = True
    over_arch: List[int] = field(default_factory=lambda: [128, 64])
    dropout: float = 0.0  # after each hidden layer of the over arch

    _key: ClassVar[str] = "model.onetrans"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "positive": ("num_layers", "num_heads", "ffn_hidden"),
        "hidden": ("over_arch",),
        "rate": ("dropout",),
    }


ModelName = Literal["interformer", "dlrm", "dlrm_dcn", "dlrm_projection", "bst", "din", "infnet", "onetrans"]


@dataclass
class ModelConfig(Checked):
    """The model ``name`` builds and the sizes of each model; construction checks the
    section of the model in use against ``embedding_dim``."""

    name: ModelName = "interformer"
    embedding_dim: int = 16
    interformer: InterFormerConfig = field(default_factory=InterFormerConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    bst: BSTConfig = field(default_factory=BSTConfig)
    din: DINConfig = field(default_factory=DINConfig)
    infnet: INFNetConfig = field(default_factory=INFNetConfig)
    onetrans: OneTransConfig = field(default_factory=OneTransConfig)

    _key: ClassVar[str] = "model"
    _checks: ClassVar[Dict[str, Tuple[str, ...]]] = {"positive": ("embedding_dim",)}

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key if the model in use cannot be built
        with these sizes (``build_model`` runs it again, for a config edited in code)."""
        super().validate()
        d = self.embedding_dim
        section = self.dlrm if self.name.startswith("dlrm") else getattr(self, self.name)
        section.validate()
        heads = getattr(section, "num_heads", 1)
        require(d % heads == 0, f"{section._key}.num_heads", heads, f"must divide model.embedding_dim={d}")
        if self.name == "interformer" and self.interformer.rope:
            require(d // heads % 2 == 0, "model.interformer.rope", True, f"needs an even head dim, got {d // heads}")
        if self.name == "dlrm_projection" or (self.name == "interformer" and section.interaction == "projection"):
            for key in ("projection_branch1", "projection_branch2"):
                sizes = getattr(section, key)
                require(
                    bool(sizes) and sizes[-1] % d == 0,
                    f"{section._key}.{key}",
                    sizes,
                    f"the last layer size must be a multiple of model.embedding_dim={d} (reshaped to [*, {d}])",
                )


_MODEL_SECTIONS = ("interformer", "dlrm", "bst", "din", "infnet", "onetrans")


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
    # the planner's pooling factors: mean ids per row of a feature of this table
    # (feature name -> ids, e.g. {hist_item_ids: 37.5}); a feature not named keeps the
    # schema's: max_len for a sequence, 1 for a scalar or multi-hot feature
    pooling_factors: Dict[str, float] = field(default_factory=dict)
    # CUDA only, kernel fused_uvm_caching: the share of the table's rows cached in HBM,
    # 0 < x <= 1 (the rest stays in host memory, reached over UVM); null: TorchRec's 0.2
    cache_load_factor: Optional[float] = None
    # the table's training weights: fp32, or fp16 (half the memory; the lookups'
    # output and the fused optimizer's state stay fp32)
    precision: Literal["fp32", "fp16"] = "fp32"

    def check(self, name: str) -> None:
        """Raise :class:`ConfigError` naming ``dist.tables.<name>.<field>`` for a value
        out of range (what needs the model or the device is checked by
        ``train.dist.check_sharding_config``)."""
        key = f"dist.tables.{name}"
        require(self.min_partition is None or self.min_partition >= 1, f"{key}.min_partition", self.min_partition, "must be >= 1")
        for feature, ids in self.pooling_factors.items():
            require(ids > 0, f"{key}.pooling_factors.{feature}", ids, "mean ids per row: must be > 0")
        clf = self.cache_load_factor
        require(clf is None or 0 < clf <= 1, f"{key}.cache_load_factor", clf, "the share of rows cached in HBM: must be in (0, 1]")
        require(self.precision in ("fp32", "fp16"), f"{key}.precision", self.precision, "use fp32 or fp16")


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

    def __post_init__(self) -> None:
        for name, table in self.tables.items():
            table.check(name)


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
    # loss weight of each label (schema.labels), 1 where not named: the loss is
    # Σ w_t·BCE_t / Σ w_t
    task_weights: Dict[str, float] = field(default_factory=dict)
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
    # where the job runs: auto (CUDA if torch sees a GPU, else CPU), cpu, or cuda (an
    # error if there is none); each rank takes GPU LOCAL_RANK; nccl on CUDA, gloo on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16: autocast the model's dense arches to bfloat16; embedding tables (a table's
    # own is dist.tables.<name>.precision), their lookups, the loss and every optimizer
    # state stay float32
    precision: Literal["fp32", "bf16"] = "fp32"
    # torch.compile every submodule that holds no embedding table (the dense arches)
    compile: bool = False

    def __post_init__(self) -> None:
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"train.early_stopping_patience={self.early_stopping_patience}: must be >= 1 (or null)")
        for name in ("batch_size", "eval_batch_size", "epochs", "log_every"):
            require(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), "must be >= 1")
        for name in ("max_steps_per_epoch", "checkpoint_every_steps"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"train.{name}", value, "must be >= 1 (or null)")
        for name in ("dense_optimizer", "embedding_optimizer"):
            opt = getattr(self, name)
            require(opt.lr > 0, f"train.{name}.lr", opt.lr, "must be > 0")
            require(opt.weight_decay >= 0, f"train.{name}.weight_decay", opt.weight_decay, "must be >= 0")


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


def config_from_dict(raw: Dict[str, Any], where: str = "") -> Config:
    try:
        return build(Config, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def load_config(path: str | Path, overrides: Optional[List[str]] = None) -> Config:
    """Load a YAML config. Relative data paths are resolved against the current working
    directory. ``overrides`` are ``dotted.key=value`` strings (value parsed as YAML),
    e.g. ``train.epochs=1``."""
    path = Path(path)
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []), str(path))


def with_overrides(cfg: _T, overrides: Sequence[str], where: str = "") -> _T:
    """A copy of the config dataclass ``cfg`` with ``dotted.key=value`` overrides below
    it (e.g. ``interformer.dropout=0`` on a :class:`ModelConfig`), checked like a file."""
    return build(type(cfg), apply_overrides(dataclasses.asdict(cfg), overrides), where)
