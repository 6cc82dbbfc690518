"""Process group, sharding plan and DistributedModelParallel.

One code path for every world size: a plain ``interformer-rec train`` is a 1-rank job
(gloo over an in-memory store); ``torchrun`` / torchx set ``WORLD_SIZE`` and friends and
the same code shards over N ranks (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from interformer_rec.config import ConfigError, DistConfig, OptimizerConfig


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: DistConfig) -> DistEnv:
    """Join (or create) the default process group. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = cfg.backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        if world == 1 and "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend)
    return DistEnv(rank, world, local_rank, local_world, device, backend)


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
    """Optimizer for every parameter the fused embedding optimizer does not own."""
    cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
    if cfg.name not in cls:
        raise ConfigError(f"train.dense_optimizer.name={cfg.name!r}: use one of {sorted(cls)}")
    params = dict(in_backward_optimizer_filter(model.named_parameters()))
    return KeyedOptimizerWrapper(params, lambda p: cls[cfg.name](p, **_optimizer_kwargs(cfg)))


def plan_sharding(
    model: nn.Module, cfg: DistConfig, env: DistEnv, batch_size: int
) -> ShardingPlan:
    """Run TorchRec's planner on rank 0 and broadcast the plan; per-table overrides from
    ``cfg.tables`` become planner constraints."""
    constraints = {
        name: ParameterConstraints(
            sharding_types=t.sharding_types or None,
            compute_kernels=t.compute_kernels or None,
        )
        for name, t in cfg.tables.items()
    }
    topology = Topology(
        world_size=env.world_size,
        compute_device=env.device.type,
        local_world_size=env.local_world_size,
    )
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=batch_size, constraints=constraints
    )
    return planner.collective_plan(model, get_default_sharders(), dist.GroupMember.WORLD)


def shard(
    model: nn.Module,
    dist_cfg: DistConfig,
    env: DistEnv,
    batch_size: int,
    embedding_opt: OptimizerConfig,
    dense_opt: OptimizerConfig,
    plan: Optional[ShardingPlan] = None,
) -> Tuple[DistributedModelParallel, CombinedOptimizer, ShardingPlan]:
    """Shard ``model``'s embedding tables with DMP (dense arches replicated by DDP) and
    build the combined fused-embedding + dense optimizer."""
    apply_embedding_optimizer(model, embedding_opt, env.device)
    plan = plan or plan_sharding(model, dist_cfg, env, batch_size)
    dmp = DistributedModelParallel(model, device=env.device, plan=plan)
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense_optimizer(dmp, dense_opt)])
    return dmp, optimizer, plan
