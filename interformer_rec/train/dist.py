"""Process group, sharding plan and DistributedModelParallel.

One code path for every world size: a plain ``interformer-rec train`` is a 1-rank job
(gloo over an in-memory store); ``torchrun`` / torchx set ``WORLD_SIZE`` and friends and
the same code shards over N ranks (gloo on CPU, nccl on CUDA).

What the CPU backend can shard (torchrec 1.8, fbgemm-gpu-cpu 1.8, gloo), and why:

=====================  ====================================  ==============================
module                 works on CPU                          not on CPU
=====================  ====================================  ==============================
EmbeddingBagCollection table_wise, column_wise,              row_wise, table_row_wise,
                       table_column_wise, data_parallel;     grid_shard: TorchRec's EBC
                       with ``dist.cpu_row_wise: true``      sharder offers them only for
                       also row_wise, table_row_wise         CUDA (``sharding_types``)
EmbeddingCollection    table_wise, row_wise, column_wise     data_parallel: fbgemm's CPU
                                                             dense lookup pools even with
                                                             ``PoolingMode.NONE``
=====================  ====================================  ==============================

The EBC row-wise gate is TorchRec's choice, not a limit of the CPU stack: gloo has
reduce-scatter (the pooled row-wise output dist) in torch 2.13, and with the opt-in
sharder (:class:`CPURowWiseEBCSharder`) row_wise and table_row_wise EBC tables train on
gloo and match a 1-rank run (tests/test_distributed.py). :func:`check_sharding_config`
refuses everything else in the right-hand column with a :class:`ConfigError` on every
rank before planning (so no rank waits forever for a plan that failed on rank 0), and an
EmbeddingCollection table without an override is kept off data_parallel.

Gradient scale across world sizes: each rank's loss is the mean over its own ``B`` rows.
DDP averages dense gradients over ranks, and TorchRec's output dists divide the
embedding gradients they send back by the world size
(``torchrec.distributed.comm_ops.GRADIENT_DIVISION``, on by default); data-parallel
tables are averaged by DDP. So on every path a step on ``W`` ranks of ``B`` rows equals
a step on one rank of ``W*B`` rows (checked numerically, with SGD, in
tests/test_distributed.py). :func:`~interformer_rec.train.tables.init_embedding_tables`
makes the initial tables the same for every plan and world size.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import CacheParams, ModuleSharder, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_configs import BaseEmbeddingConfig, DataType
from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from interformer_rec.config import ConfigError, DistConfig, OptimizerConfig, Schema
from interformer_rec.train.tables import init_embedding_tables, is_table_weight, prepare_managed_tables

logger = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    # with several ranks, a gloo group of all of them for the data readers' agreement on
    # bad rows (kept apart from the default group, which TorchRec's collectives use)
    data_group: Optional[dist.ProcessGroup] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str, local_rank: int) -> torch.device:
    """``train.device``: ``auto`` is CUDA when torch sees a GPU, else CPU; a rank takes
    GPU ``local_rank`` (modulo the GPUs visible)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device={device!r}: expected auto, cpu or cuda")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device=cuda: torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA {torch.version.cuda}); install the cuda flavour (README) or use train.device=cpu"
        )
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(cfg: DistConfig, device: str = "auto") -> DistEnv:
    """Join (or create) the default process group on ``device`` (``train.device``, see
    :func:`pick_device`): nccl on CUDA, gloo on CPU, unless ``dist.backend`` says.
    Idempotent: a group that already exists (made by a test or a notebook) is used as
    it is, its rank and size trusted over the environment."""
    env = os.environ
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", str(rank)))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    compute = pick_device(device, local_rank)
    if compute.type == "cuda":
        torch.cuda.set_device(compute)
    if local_world > 1 and "OMP_NUM_THREADS" not in env:
        # as torchrun does: ranks sharing a host must not each take every core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    backend = cfg.backend or ("nccl" if compute.type == "cuda" else "gloo")
    if not cfg.timeout_s > 0:
        raise ConfigError(f"dist.timeout_s={cfg.timeout_s}: must be > 0 seconds")
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    if dist.is_initialized():
        backend = dist.get_backend()
    elif world == 1 and "MASTER_ADDR" not in env:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)
    return DistEnv(rank, world, local_rank, local_world, compute, backend, _data_group(world, timeout))


_DATA_GROUP: List[Tuple[object, dist.ProcessGroup]] = []  # (the default group it belongs to, the group)


def _data_group(world: int, timeout: datetime.timedelta) -> Optional[dist.ProcessGroup]:
    """A gloo group of every rank (collective: all ranks call it), made once per default
    group; ``None`` on one rank."""
    if world == 1:
        return None
    if not (_DATA_GROUP and _DATA_GROUP[0][0] is dist.group.WORLD):
        _DATA_GROUP[:] = [(dist.group.WORLD, dist.new_group(backend="gloo", timeout=timeout))]
    return _DATA_GROUP[0][1]


# --------------------------------------------------------------------------- optimizers

_EMBEDDING_OPTIMIZERS: Dict[str, Type[torch.optim.Optimizer]] = {
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}


def _optimizer_kwargs(cfg: OptimizerConfig) -> Dict[str, float]:
    kwargs: Dict[str, float] = {"lr": cfg.lr}
    if cfg.name != "sgd":
        kwargs["eps"] = cfg.eps
    if cfg.weight_decay:
        kwargs["weight_decay"] = cfg.weight_decay
    return kwargs


def embedding_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]


def apply_embedding_optimizer(model: nn.Module, cfg: OptimizerConfig, device: torch.device) -> None:
    """Fuse the embedding optimizer into the backward pass (TorchRec's fused TBE)."""
    if cfg.name == "adam" and device.type == "cpu":
        raise ConfigError(
            "train.embedding_optimizer.name=adam: fbgemm's CPU embedding kernels support "
            "only adagrad, rowwise_adagrad and sgd (Adam is fused on CUDA only); "
            "pick one of those for CPU training"
        )
    params = [p for m in embedding_modules(model) for p in m.parameters()]
    apply_optimizer_in_backward(_EMBEDDING_OPTIMIZERS[cfg.name], params, _optimizer_kwargs(cfg))


def dense_optimizer(model: nn.Module, cfg: OptimizerConfig) -> KeyedOptimizerWrapper:
    """Optimizer for every parameter the fused embedding optimizer does not own and that
    is not an embedding table."""
    cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    if cfg.name not in cls:
        raise ConfigError(f"train.dense_optimizer.name={cfg.name!r}: use one of {sorted(cls)}")
    params = {
        k: p for k, p in in_backward_optimizer_filter(model.named_parameters()) if not is_table_weight(k)
    }
    # fused: one kernel for all parameters (the default on CPU is a Python loop over
    # them, which cost InterFormer ~8 ms of a ~70 ms step; benchmarks/throughput.py)
    return KeyedOptimizerWrapper(params, lambda p: cls[cfg.name](p, fused=True, **_optimizer_kwargs(cfg)))


def replicated_table_optimizer(model: nn.Module, cfg: OptimizerConfig) -> Optional[KeyedOptimizerWrapper]:
    """The embedding optimizer (``cfg``: same algorithm and hyper-parameters as the fused
    one) for tables that DMP made ``data_parallel``.

    DMP gives such a table a dense kernel, whose new parameter has no fused optimizer:
    left alone, the dense optimizer would train it (a plan-dependent choice of optimizer
    for one table). Here it is stepped after DDP's all-reduce with the PyTorch
    counterpart of the fused update (Adagrad, TorchRec's RowWiseAdagrad, SGD; the same
    update rule as fbgemm's EXACT_* kernels, except that weight decay would touch every
    row, not only the rows in the batch). ``None`` if there is no such table.
    """
    params = {
        k: p for k, p in in_backward_optimizer_filter(model.named_parameters()) if is_table_weight(k)
    }
    if not params:
        return None
    cls = _EMBEDDING_OPTIMIZERS[cfg.name]
    return KeyedOptimizerWrapper(params, lambda p: cls(p, **_optimizer_kwargs(cfg)))


def init_optimizer_state(optimizer: CombinedOptimizer) -> None:
    """Create the lazily-built state of the non-fused optimizers (a zero-gradient step,
    which leaves the weights as they are), so a checkpoint can be loaded in place."""
    for _, opt in optimizer.optimizers:
        if isinstance(opt, KeyedOptimizerWrapper):
            opt.init_state()
            for p in opt.params.values():
                p.grad = None


# --------------------------------------------------------------------------- planning

EBC, EC, MC = "EmbeddingBagCollection", "EmbeddingCollection", "ManagedCollisionEmbeddingCollection"

# (module kind, sharding type, device type) -> why it cannot run
UNSUPPORTED: Dict[Tuple[str, str, str], str] = {
    (EC, ShardingType.DATA_PARALLEL.value, "cpu"): (
        "fbgemm's CPU dense embedding kernel pools even with PoolingMode.NONE, so an "
        "EmbeddingCollection (unpooled sequence lookups) cannot be data_parallel on CPU; "
        "use table_wise, row_wise or column_wise"
    ),
}


FP16_DATA_PARALLEL = (
    "a data-parallel table is updated by a PyTorch optimizer whose state has the weights' "
    "dtype (fbgemm's fused kernels keep it fp32): in fp16 Adagrad's eps (1e-8) underflows and "
    "a row without gradient divides 0 by 0 (NaN from the second step); use another sharding "
    "type or precision fp32"
)


class CPURowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """TorchRec's EBC sharder, also offering row_wise and table_row_wise on CPU
    (``dist.cpu_row_wise``)."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        types = list(super().sharding_types(compute_device_type))
        if compute_device_type == "cpu":
            types += [ShardingType.ROW_WISE.value, ShardingType.TABLE_ROW_WISE.value]
        return types


def make_sharders(cfg: DistConfig, device_type: str) -> List[ModuleSharder[nn.Module]]:
    """TorchRec's default sharders; with ``cfg.cpu_row_wise`` on CPU, the EBC sharder is
    :class:`CPURowWiseEBCSharder`. The planner and DMP must get the same list."""
    sharders = get_default_sharders()
    if cfg.cpu_row_wise and device_type == "cpu":
        sharders = [
            CPURowWiseEBCSharder() if type(s) is EmbeddingBagCollectionSharder else s  # noqa: E721
            for s in sharders
        ]
    return sharders


def embedding_tables(model: nn.Module) -> Dict[str, str]:
    """Table name -> ``"EmbeddingBagCollection"``, ``"EmbeddingCollection"`` or
    ``"ManagedCollisionEmbeddingCollection"``, for every embedding module of ``model``
    (unsharded)."""
    out: Dict[str, str] = {}
    managed = {id(m._embedding_module) for m in model.modules() if isinstance(m, ManagedCollisionEmbeddingCollection)}
    for m in embedding_modules(model):
        kind = EBC if isinstance(m, EmbeddingBagCollection) else MC if id(m) in managed else EC
        configs = m.embedding_bag_configs() if kind == EBC else m.embedding_configs()
        for t in configs:
            out[t.name] = kind
    return out


def managed_buckets(model: nn.Module) -> Dict[str, int]:
    """Table name -> ``buckets`` of its managed-collision module, for every
    managed-collision table of ``model`` (unsharded)."""
    return {
        name: mch.buckets()
        for m in model.modules()
        if isinstance(m, ManagedCollisionEmbeddingCollection)
        for name, mch in m._managed_collision_collection._managed_collision_modules.items()
    }


def table_configs(model: nn.Module) -> Dict[str, BaseEmbeddingConfig]:
    """Table name -> its TorchRec config (``feature_names`` in the module's order, the
    order of the planner's per-feature pooling factors), for an unsharded ``model``."""
    out: Dict[str, BaseEmbeddingConfig] = {}
    for m in embedding_modules(model):
        configs = m.embedding_bag_configs() if isinstance(m, EmbeddingBagCollection) else m.embedding_configs()
        out.update({t.name: t for t in configs})
    return out


def schema_pooling_factors(schema: Schema) -> Dict[str, float]:
    """Feature name -> ids per row as the schema knows them: ``max_len`` for a sequence
    (its longest history; a row holds at most that many), 1 for a sparse feature (a
    scalar; a multi-hot one's mean is not in the schema). The planner's default pooling
    factors, which ``dist.tables.<t>.pooling_factors`` overrides per feature."""
    out = {f.name: 1.0 for f in schema.sparse}
    out.update({s.name: float(s.max_len) for s in schema.sequence})
    return out


def table_knobs(model: nn.Module, cfg: DistConfig, schema: Optional[Schema] = None) -> Dict[str, Dict[str, object]]:
    """``{table: {"features", "pooling_factors", "cache_load_factor", "precision"}}`` for
    every table of an unsharded ``model``: what the planner is told about it
    (``pooling_factors``: one per feature, the override or else the schema's, see
    :func:`schema_pooling_factors`; TorchRec's 1 without a schema)."""
    defaults = schema_pooling_factors(schema) if schema is not None else {}
    out: Dict[str, Dict[str, object]] = {}
    for name, tc in table_configs(model).items():
        t = cfg.tables.get(name)
        given = t.pooling_factors if t else {}
        out[name] = {
            "features": list(tc.feature_names),
            "pooling_factors": [float(given.get(f, defaults.get(f, 1.0))) for f in tc.feature_names],
            "cache_load_factor": t.cache_load_factor if t else None,
            "precision": t.precision if t else "fp32",
        }
    return out


def table_knobs_text(knobs: Dict[str, Dict[str, object]], plan: Optional[ShardingPlan] = None) -> str:
    """The table knobs as lines for plan.txt: per table its features' pooling factors,
    the weights' precision and the UVM cache load factor (with ``plan``, the kernel it
    applies to: the cache exists only with ``fused_uvm_caching``)."""
    kernels = {t: s["compute_kernel"] for t, s in plan_summary(plan).items()} if plan is not None else {}
    lines = ["table knobs (dist.tables.<table>; pooling: ids per row and feature, given to the planner):"]
    for name, k in knobs.items():
        pooling = ", ".join(f"{f}={p:g}" for f, p in zip(k["features"], k["pooling_factors"]))  # type: ignore[call-overload]
        clf = k["cache_load_factor"]
        kernel = kernels.get(name)
        cache = "-" if clf is None and kernel != EmbeddingComputeKernel.FUSED_UVM_CACHING.value else (
            f"{clf if clf is not None else 0.2:g}" + ("" if clf is not None else " (TorchRec default)")
        )
        if clf is not None and kernel is not None and kernel != EmbeddingComputeKernel.FUSED_UVM_CACHING.value:
            cache += f" (unused: kernel {kernel})"
        lines.append(f"  {name}: pooling {pooling}; precision {k['precision']}; cache load factor {cache}")
    return "\n".join(lines)


@torch.no_grad()
def apply_table_precision(model: nn.Module, cfg: DistConfig) -> None:
    """Give each table with ``dist.tables.<t>.precision: fp16`` fp16 weights, in place
    and before DMP shards ``model``: the config's ``data_type`` is what the sharded
    TBE's ``weights_precision`` comes from, and the weight's dtype is what the planner's
    storage estimate reads (as if the table had been built with
    ``data_type=DataType.FP16``). The parameter objects are kept (``.data`` swapped),
    so a fused optimizer already applied stays attached. Idempotent."""
    for m in embedding_modules(model):
        is_ebc = isinstance(m, EmbeddingBagCollection)
        weights = m.embedding_bags if is_ebc else m.embeddings
        for tc in m.embedding_bag_configs() if is_ebc else m.embedding_configs():
            t = cfg.tables.get(tc.name)
            if t is None or t.precision == "fp32":
                continue
            tc.data_type = DataType.FP16
            w = weights[tc.name].weight
            if w.dtype != torch.float16:
                w.data = w.data.to(torch.float16)


def _sharder_types(sharders: List[ModuleSharder[nn.Module]], kind: str, device_type: str) -> List[str]:
    for s in sharders:
        if s.module_type.__name__ == kind:
            return list(s.sharding_types(device_type))
    return []


def check_sharding_config(
    model: nn.Module,
    cfg: DistConfig,
    device_type: str,
    sharders: Optional[List[ModuleSharder[nn.Module]]] = None,
    world_size: int = 1,
    schema: Optional[Schema] = None,
) -> Dict[str, ParameterConstraints]:
    """Turn ``cfg.tables`` into planner constraints, refusing what cannot work on
    ``device_type`` with a :class:`ConfigError` that says why. Pure: it runs the same on
    every rank, so every rank fails alike instead of some waiting for a plan.

    A table without an override is limited to the types that work on ``device_type`` (on
    CPU an EmbeddingCollection is not data_parallel); with ``world_size`` 1 no table
    without an override is data_parallel: on one rank a table-wise table holds the same
    rows with the fused kernel and optimizer, and a data-parallel one would need DDP's
    all-reduce after every backward (see :class:`SingleRank`).

    Every table gets its features' pooling factors (:func:`table_knobs`: the
    ``pooling_factors`` override, else the ``schema``'s ids per row; without a schema
    only overridden tables get them) and a ``cache_load_factor`` becomes its
    ``CacheParams``. A table's ``precision`` is not a constraint: it is the weights'
    dtype (:func:`apply_table_precision`), which the planner reads.
    """
    sharders = sharders or make_sharders(cfg, device_type)
    tables = embedding_tables(model)
    configs = table_configs(model)
    kernels = {k.value for k in EmbeddingComputeKernel}
    constraints: Dict[str, ParameterConstraints] = {}
    for name, t in cfg.tables.items():
        if name not in tables:
            raise ConfigError(f"dist.tables.{name}: no embedding table {name!r} (tables: {sorted(tables)})")
        kind = tables[name]
        offered = _sharder_types(sharders, kind, device_type)
        for st in t.sharding_types:
            why = UNSUPPORTED.get((kind, st, device_type))
            if st == ShardingType.DATA_PARALLEL.value and t.precision == "fp16":
                raise ConfigError(
                    f"dist.tables.{name}.sharding_types: {st!r} with dist.tables.{name}.precision=fp16: "
                    + FP16_DATA_PARALLEL
                )
            if why:
                raise ConfigError(f"dist.tables.{name}.sharding_types: {st!r} on {device_type}: {why}")
            if st not in offered:
                raise ConfigError(
                    f"dist.tables.{name}.sharding_types: {st!r} is not offered for an {kind} "
                    f"on {device_type} by TorchRec's sharder (offered: {offered})"
                    + (
                        "; TorchRec offers row-wise pooled sharding on CUDA only: set "
                        "dist.cpu_row_wise=true to use it on CPU (tested on gloo)"
                        if kind == EBC and device_type == "cpu" and st in ("row_wise", "table_row_wise")
                        else ""
                    )
                )
        for k in t.compute_kernels:
            if k not in kernels:
                raise ConfigError(f"dist.tables.{name}.compute_kernels: {k!r} is not one of {sorted(kernels)}")
        t.check(name)  # ranges (again, for a config edited in code)
        features = list(configs[name].feature_names)
        unknown = sorted(set(t.pooling_factors) - set(features))
        if unknown:
            raise ConfigError(
                f"dist.tables.{name}.pooling_factors: {unknown} are not features of table {name!r} "
                f"(its features: {features})"
            )
        uvm = EmbeddingComputeKernel.FUSED_UVM_CACHING.value
        if t.cache_load_factor is not None and device_type != "cuda":
            raise ConfigError(
                f"dist.tables.{name}.cache_load_factor: UVM caching (compute kernel {uvm}) is a CUDA "
                f"kernel; on {device_type} the whole table is in host memory, there is no cache to size"
            )
        if t.cache_load_factor is not None and t.compute_kernels and uvm not in t.compute_kernels:
            raise ConfigError(
                f"dist.tables.{name}.cache_load_factor: sizes the HBM cache of the {uvm} kernel, which "
                f"dist.tables.{name}.compute_kernels={t.compute_kernels} leaves out"
            )
        constraints[name] = ParameterConstraints(
            sharding_types=list(t.sharding_types) or None,
            compute_kernels=list(t.compute_kernels) or None,
            min_partition=t.min_partition,
            cache_params=CacheParams(load_factor=t.cache_load_factor) if t.cache_load_factor is not None else None,
        )
    for name, buckets in managed_buckets(model).items():
        if buckets % world_size:
            raise ConfigError(
                f"schema.tables[{name}].managed_collision.buckets={buckets}: must be a multiple of the "
                f"world size ({world_size}); each rank holds buckets / world_size of the table's buckets"
            )
        if device_type == "cpu":  # the planner would also offer CUDA's UVM kernels
            c = constraints.setdefault(name, ParameterConstraints())
            c.compute_kernels = c.compute_kernels or [EmbeddingComputeKernel.FUSED.value]
    for name, kind in tables.items():
        if name in constraints and constraints[name].sharding_types:
            continue
        allowed = [
            st for st in _sharder_types(sharders, kind, device_type)
            if (kind, st, device_type) not in UNSUPPORTED
        ]
        fp16 = name in cfg.tables and cfg.tables[name].precision == "fp16"  # see FP16_DATA_PARALLEL
        if world_size == 1 or fp16:
            allowed = [st for st in allowed if st != ShardingType.DATA_PARALLEL.value]
        if world_size == 1 or fp16 or (kind == EC and device_type == "cpu"):
            c = constraints.get(name, ParameterConstraints())
            c.sharding_types = allowed
            constraints[name] = c
    for name, k in table_knobs(model, cfg, schema).items():
        if k["precision"] == "fp16":
            # the lookups' output stays fp32 (fbgemm's default); said explicitly, or the
            # planner would cost the output comms at the weights' 2 bytes
            constraints.setdefault(name, ParameterConstraints()).output_dtype = DataType.FP32
        if schema is None and not (name in cfg.tables and cfg.tables[name].pooling_factors):
            continue  # TorchRec's default, 1 per feature
        constraints.setdefault(name, ParameterConstraints()).pooling_factors = list(k["pooling_factors"])  # type: ignore[call-overload]
    return constraints


def make_topology(env: DistEnv) -> Topology:
    """The planner's view of this job: world size, ranks per host, compute device and
    per-rank memory (the GPU's HBM on CUDA; this host's RAM split over its ranks)."""
    ddr = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(env.local_world_size, 1)
    kwargs = {"ddr_cap": ddr}
    if env.device.type == "cuda":
        kwargs["hbm_cap"] = torch.cuda.get_device_properties(env.device).total_memory
    return Topology(
        world_size=env.world_size,
        compute_device=env.device.type,
        local_world_size=env.local_world_size,
        **kwargs,
    )


class PlanningError(RuntimeError):
    """The planner found no plan (raised on every rank)."""


def plan_sharding(
    model: nn.Module, cfg: DistConfig, env: DistEnv, batch_size: int, schema: Optional[Schema] = None
) -> ShardingPlan:
    """Run TorchRec's planner on rank 0 and broadcast the plan (or its failure, so that
    every rank raises instead of waiting); per-table overrides from ``cfg.tables``
    become planner constraints, checked first by :func:`check_sharding_config`, with the
    ``schema``'s pooling factors. fp16 tables get their dtype first
    (:func:`apply_table_precision`), so the planner sizes them as such."""
    sharders = make_sharders(cfg, env.device.type)
    constraints = check_sharding_config(model, cfg, env.device.type, sharders, env.world_size, schema)
    apply_table_precision(model, cfg)
    planner = EmbeddingShardingPlanner(
        topology=make_topology(env), batch_size=batch_size, constraints=constraints
    )
    payload: List[object] = [None]
    if env.rank == 0:
        try:
            payload[0] = planner.plan(model, sharders)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            payload[0] = f"{type(e).__name__}: {e}"
    if env.world_size > 1:
        dist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], str):
        raise PlanningError(f"sharding planner failed on rank 0: {payload[0]}")
    return payload[0]  # type: ignore[return-value]


def plan_summary(plan: ShardingPlan) -> Dict[str, Dict[str, object]]:
    """``{table: {"module", "sharding_type", "compute_kernel", "ranks", "shards"}}``, the
    plan in a form to compare and log (``shards``: [rows, cols] per shard)."""
    out: Dict[str, Dict[str, object]] = {}
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            shards = []
            if ps.sharding_spec is not None:
                shards = [list(s.shard_sizes) for s in ps.sharding_spec.shards]  # type: ignore[union-attr]
            out[table] = {
                "module": module_path,
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": list(ps.ranks or []),
                "shards": shards,
            }
    return out


# --------------------------------------------------------------------------- sharding


class SingleRank(DataParallelWrapper):
    """DMP's data-parallel wrapper for a world of one rank: the dense arches are left
    unwrapped, so no DDP reducer hooks every gradient and no all-reduce runs through the
    process group after each backward (with one rank it averages nothing). Parameter
    and state-dict names are the same as under DDP (DMP strips its prefix)."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        return None


def shard(
    model: nn.Module,
    dist_cfg: DistConfig,
    env: DistEnv,
    batch_size: int,
    embedding_opt: OptimizerConfig,
    dense_opt: OptimizerConfig,
    plan: Optional[ShardingPlan] = None,
    init_seed: Optional[int] = None,
    pretrained: Optional[Dict[str, torch.Tensor]] = None,
    schema: Optional[Schema] = None,
) -> Tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """Shard ``model``'s embedding tables with DMP (dense arches replicated by DDP when
    there are several ranks, see :class:`SingleRank`) and
    build the combined optimizer: fused embedding optimizer, the same optimizer for
    data-parallel tables (:func:`replicated_table_optimizer`), dense optimizer. With ``init_seed`` the tables
    are re-initialised by :func:`init_embedding_tables` (plan-independent values, or
    ``pretrained[table]``). ``schema``: the planner's default pooling factors
    (:func:`plan_sharding`); each table's ``dist.tables.<t>.precision`` is applied
    here, given a ``plan`` or not."""
    apply_embedding_optimizer(model, embedding_opt, env.device)
    plan = plan or plan_sharding(model, dist_cfg, env, batch_size, schema)
    apply_table_precision(model, dist_cfg)
    dmp = DistributedModelParallel(
        model,
        device=env.device,
        plan=plan,
        sharders=make_sharders(dist_cfg, env.device.type),
        data_parallel_wrapper=SingleRank() if env.world_size == 1 else None,
    )
    if init_seed is not None:
        init_embedding_tables(dmp, init_seed, pretrained)
        prepare_managed_tables(dmp, init_seed)
    optims = [dmp.fused_optimizer]
    replicated = replicated_table_optimizer(dmp, embedding_opt)
    if replicated is not None:
        optims.append(replicated)
    optims.append(dense_optimizer(dmp, dense_opt))
    return dmp, CombinedOptimizer(optims), plan
