"""What TorchRec's planner would do with this model at production scale, on paper.

    python benchmarks/plan_at_scale.py                  # 1B-row user/item tables, 64 GPUs
    python benchmarks/plan_at_scale.py --world-size 16 --rows 2e8 --dim 64

Builds the real model (``model.name``, default InterFormer) with its tables resized and
its embedding tables on the meta device (nothing is allocated), fuses the embedding
optimizer as training does, and runs ``EmbeddingShardingPlanner.plan`` against a
*simulated* topology: ``--world-size`` CUDA ranks, ``--local-world-size`` per host,
``--hbm-gb`` of HBM and ``--ddr-gb`` of host memory per rank. The planner's own report
(per-rank HBM/DDR use, estimated compute + communication cost per rank, the chosen
sharding type and kernel per table) is written to ``--out`` together with a summary.
Pooling factors (ids per row and feature) come from the schema: 1 for a scalar
feature, ``max_len`` for a sequence, ``--multi-hot`` for a multi-hot feature.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from interformer_rec.config import Schema


GB = 1024**3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/synthetic.yaml")
    p.add_argument("--model", default="interformer")
    p.add_argument("--world-size", type=int, default=64)
    p.add_argument("--local-world-size", type=int, default=8)
    p.add_argument("--hbm-gb", type=float, default=80.0)
    p.add_argument("--ddr-gb", type=float, default=128.0, help="host memory per rank")
    p.add_argument("--rows", type=float, default=1e9, help="rows of the large tables")
    p.add_argument("--large", nargs="+", default=["user", "item"], help="tables given --rows rows")
    p.add_argument("--dim", type=int, default=128, help="embedding dim of every table")
    p.add_argument("--max-len", type=int, default=100, help="sequence length")
    p.add_argument("--multi-hot", type=float, default=5.0, help="mean ids per multi-hot row")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per rank per step")
    p.add_argument("--embedding-optimizer", default="rowwise_adagrad")
    p.add_argument("--out", default="results/plan_at_scale.txt")
    return p.parse_args()


def build_on_meta(args: argparse.Namespace) -> Tuple[nn.Module, Schema]:
    """The model of ``--config`` / ``--model`` with the ``--large`` tables resized, its
    tables on the meta device and the embedding optimizer fused as training does."""
    from interformer_rec.config import OptimizerConfig, load_config
    from interformer_rec.models import build_model
    from interformer_rec.train.dist import apply_embedding_optimizer

    cfg = load_config(args.config, [f"model.name={args.model}", f"model.embedding_dim={args.dim}"])
    schema = cfg.data.schema
    for t in schema.tables:
        if t.name in args.large:
            t.num_embeddings = int(args.rows)
    for s in schema.sequence:
        s.max_len = args.max_len
    model = build_model(schema, cfg.model, embedding_device=torch.device("meta"))
    apply_embedding_optimizer(model, OptimizerConfig(name=args.embedding_optimizer, lr=0.01), torch.device("cuda"))
    return model, schema


def pooling_constraints(model: nn.Module, schema: Schema, args: argparse.Namespace) -> Dict[str, Any]:
    """``ParameterConstraints`` per table: pooling factors, one per feature of the table
    in its feature order (1 for a scalar, ``--multi-hot`` for the synthetic schema's
    multi-hot feature, ``max_len`` for a sequence)."""
    from torchrec.distributed.planner.types import ParameterConstraints

    from interformer_rec.train.dist import embedding_modules

    multi = {"user_interests"}
    per_feature: Dict[str, float] = {f.name: (args.multi_hot if f.name in multi else 1.0) for f in schema.sparse}
    per_feature.update({s.name: float(args.max_len) for s in schema.sequence})
    constraints = {}
    for m in embedding_modules(model):
        configs = m.embedding_bag_configs() if hasattr(m, "embedding_bag_configs") else m.embedding_configs()
        for c in configs:
            constraints[c.name] = ParameterConstraints(pooling_factors=[per_feature.get(f, 1.0) for f in c.feature_names])
    return constraints


def plan_on_paper(model: nn.Module, constraints: Dict[str, Any], args: argparse.Namespace) -> Tuple[Any, str]:
    """The planner's plan against the simulated topology, and its stats report."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders

    topology = Topology(
        world_size=args.world_size,
        compute_device="cuda",
        local_world_size=args.local_world_size,
        hbm_cap=int(args.hbm_gb * GB),
        ddr_cap=int(args.ddr_gb * GB),
    )
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    stats_logger = logging.getLogger("torchrec.distributed.planner.stats")
    stats_logger.addHandler(handler)
    stats_logger.setLevel(logging.INFO)
    stats_logger.propagate = False
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=args.batch_size, constraints=constraints)
    plan = planner.plan(model, get_default_sharders())
    stats_logger.removeHandler(handler)
    return plan, log.getvalue()


def weight_bytes_per_rank(plan: Any) -> Dict[int, float]:
    """Bytes of embedding rows (fp32 weights only) on each rank, from the plan's shards
    (data-parallel tables, a full copy on every rank, left out)."""
    per_rank: Dict[int, float] = defaultdict(float)
    for module_plan in plan.plan.values():
        for ps in module_plan.values():
            if ps.sharding_spec is None:
                continue
            for sh in ps.sharding_spec.shards:
                rows, cols = sh.shard_sizes
                per_rank[sh.placement.rank()] += rows * cols * 4
    return per_rank


def report(args: argparse.Namespace, schema: Schema, summary: Dict[str, Any], per_rank: Dict[int, float], stats: str) -> str:
    lines: List[str] = [
        f"model {args.model}, dim {args.dim}, tables {[(t.name, t.num_embeddings) for t in schema.tables]}",
        f"topology: {args.world_size} x cuda ({args.local_world_size}/host), "
        f"{args.hbm_gb:g} GB HBM + {args.ddr_gb:g} GB DDR per rank; batch {args.batch_size}/rank; "
        f"embedding optimizer {args.embedding_optimizer}",
        "",
        f"{'table':<10}{'rows':>14}{'type':>20}{'kernel':>20}{'shards':>8}{'ranks':>8}",
    ]
    sizes = {t.name: t.num_embeddings for t in schema.tables}
    for table, s in sorted(summary.items(), key=lambda kv: -sizes.get(kv[0], 0)):
        lines.append(
            f"{table:<10}{sizes.get(table, 0):>14,}{s['sharding_type']:>20}{s['compute_kernel']:>20}"
            f"{len(s['shards']) or len(s['ranks']):>8}{len(set(s['ranks'])):>8}"
        )
    if per_rank:
        vals = sorted(per_rank.values())
        lines += [
            "",
            f"embedding weights per rank (from the plan's shards): min {vals[0] / GB:.1f} GB, "
            f"max {vals[-1] / GB:.1f} GB, total {sum(vals) / GB:.0f} GB over {len(vals)} ranks",
        ]
    lines += ["", "planner report (torchrec.distributed.planner.stats):", stats]
    return "\n".join(lines)


def main() -> None:
    import warnings

    from interformer_rec.train.dist import plan_summary

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    args = parse_args()
    model, schema = build_on_meta(args)
    plan, stats = plan_on_paper(model, pooling_constraints(model, schema, args), args)
    summary = plan_summary(plan)
    text = report(args, schema, summary, weight_bytes_per_rank(plan), stats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "plan": summary}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
