"""What TorchRec's planner would do with this model at production scale, on paper.

    python benchmarks/plan_at_scale.py                  # 1B-row user/item tables, 64 GPUs
    python benchmarks/plan_at_scale.py --world-size 16 --rows 2e8 --dim 64
    python benchmarks/plan_at_scale.py --set dist.tables.item.precision=fp16
    python benchmarks/plan_at_scale.py --knobs          # the table knobs' effect, side by side

Builds the real model (``model.name``, default InterFormer) with its tables resized and
its embedding tables on the meta device (nothing is allocated), fuses the embedding
optimizer as training does, and runs ``EmbeddingShardingPlanner.plan`` against a
*simulated* topology: ``--world-size`` CUDA ranks, ``--local-world-size`` per host,
``--hbm-gb`` of HBM and ``--ddr-gb`` of host memory per rank.

The planner's constraints come from the training code path
(``train.dist.check_sharding_config`` with the schema, and
``train.dist.apply_table_precision``), so the ``dist.tables.<table>`` knobs of the
config (and ``--set`` overrides) act here as in a training job: pooling factors (by
default the schema's ids per row: ``max_len`` for a sequence, 1 for a scalar;
``--multi-hot`` for the synthetic schema's multi-hot feature), UVM cache load factor,
precision. The planner's own report (per-rank HBM/DDR use, estimated compute +
communication cost per rank, the chosen sharding type and kernel per table) is written
to ``--out`` with a summary.

``--knobs`` plans the same model and cluster once per setting of the knobs (default;
sequences' pooling factor 1, as the planner saw them before the schema's were passed;
fp16 ``--large`` tables; UVM caching of the ``--large`` tables at two load factors) and
writes one table of per-rank HBM and DDR, the planner's estimated cost (the largest
per-rank sum of its shards' perf estimates, in ms per step) and the chosen sharding of
each table.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from interformer_rec.config import Config

GB = 1024**3


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
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
    p.add_argument("--max-len", type=int, default=100, help="sequence length (the schema's max_len)")
    p.add_argument("--multi-hot", type=float, default=5.0,
                   help="mean ids per row of --multi-hot-feature (its dist.tables pooling factor)")
    p.add_argument("--multi-hot-feature", default="user_interests")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per rank per step")
    p.add_argument("--embedding-optimizer", default="rowwise_adagrad")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. dist.tables.item.precision=fp16 (repeatable)")
    p.add_argument("--knobs", action="store_true", help="compare settings of the dist.tables knobs")
    p.add_argument("--out", default="results/plan_at_scale.txt")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace) -> List[str]:
    """The config overrides of every run: model, dim, the multi-hot feature's pooling
    factor (the schema does not know its mean) and ``--set``."""
    from interformer_rec.config import load_config

    out = [f"model.name={args.model}", f"model.embedding_dim={args.dim}"]
    schema = load_config(args.config, out).data.schema
    hot = [f for f in schema.sparse if f.name == args.multi_hot_feature]
    if hot:
        out.append(f"dist.tables.{hot[0].table}.pooling_factors.{hot[0].name}={args.multi_hot}")
    return out + list(args.set)


def build_on_meta(args: argparse.Namespace, overrides: Sequence[str]) -> Tuple[nn.Module, Config]:
    """The model of ``--config`` with ``overrides``, the ``--large`` tables resized, its
    tables on the meta device, fp16 tables made so and the embedding optimizer fused, as
    training does."""
    from interformer_rec.config import OptimizerConfig, load_config
    from interformer_rec.models import build_model
    from interformer_rec.train.dist import apply_embedding_optimizer, apply_table_precision

    cfg = load_config(args.config, list(overrides))
    schema = cfg.data.schema
    for t in schema.tables:
        if t.name in args.large:
            t.num_embeddings = int(args.rows)
    for s in schema.sequence:
        s.max_len = args.max_len
    model = build_model(schema, cfg.model, embedding_device=torch.device("meta"))
    apply_table_precision(model, cfg.dist)
    apply_embedding_optimizer(model, OptimizerConfig(name=args.embedding_optimizer, lr=0.01), torch.device("cuda"))
    return model, cfg


class BestPlan:
    """A planner ``Stats`` that keeps the chosen sharding options (their shards carry the
    planner's storage and perf estimates)."""

    def __init__(self) -> None:
        self.options: List[Any] = []

    def log(self, *, best_plan: List[Any], **_: Any) -> None:  # noqa: D102
        self.options = best_plan


def plan_on_paper(model: nn.Module, cfg: Config, args: argparse.Namespace) -> Tuple[Any, str, List[Any]]:
    """The planner's plan against the simulated topology, with the constraints training
    would give it; its stats report; its chosen sharding options."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.stats import EmbeddingStats

    from interformer_rec.train.dist import check_sharding_config, make_sharders

    sharders = make_sharders(cfg.dist, "cuda")
    constraints = check_sharding_config(model, cfg.dist, "cuda", sharders, args.world_size, cfg.data.schema)
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
    best = BestPlan()
    planner = EmbeddingShardingPlanner(
        topology=topology, batch_size=args.batch_size, constraints=constraints, stats=[EmbeddingStats(), best]  # type: ignore[list-item]
    )
    try:
        plan = planner.plan(model, sharders)
    finally:
        stats_logger.removeHandler(handler)
    return plan, log.getvalue(), best.options


def per_rank(options: List[Any]) -> Dict[str, Dict[int, float]]:
    """``{"hbm", "ddr": bytes, "perf": ms}`` per rank: the planner's estimates summed
    over the shards it put on each rank (storage reservations left out)."""
    out: Dict[str, Dict[int, float]] = {"hbm": defaultdict(float), "ddr": defaultdict(float), "perf": defaultdict(float)}
    for so in options:
        for sh in so.shards:
            out["hbm"][sh.rank] += sh.storage.hbm
            out["ddr"][sh.rank] += sh.storage.ddr
            out["perf"][sh.rank] += sh.perf.total
    return out


def report(args: argparse.Namespace, cfg: Config, plan: Any, options: List[Any], stats: str, knobs_text: str) -> str:
    from interformer_rec.train.dist import plan_summary

    schema = cfg.data.schema
    summary = plan_summary(plan)
    ranks = per_rank(options)
    lines: List[str] = [
        f"model {args.model}, dim {args.dim}, tables {[(t.name, t.num_embeddings) for t in schema.tables]}",
        _topology_line(args),
        "",
        f"{'table':<10}{'rows':>14}{'type':>20}{'kernel':>20}{'shards':>8}{'ranks':>8}",
    ]
    sizes = {t.name: t.num_embeddings for t in schema.tables}
    for table, s in sorted(summary.items(), key=lambda kv: -sizes.get(kv[0], 0)):
        lines.append(
            f"{table:<10}{sizes.get(table, 0):>14,}{s['sharding_type']:>20}{s['compute_kernel']:>20}"
            f"{len(s['shards']) or len(s['ranks']):>8}{len(set(s['ranks'])):>8}"
        )
    hbm = sorted(ranks["hbm"].values())
    lines += [
        "",
        f"embedding shards per rank (planner's estimate: weights, optimizer state, I/O): HBM min {hbm[0] / GB:.1f} GB, "
        f"max {hbm[-1] / GB:.1f} GB; DDR max {max(ranks['ddr'].values()) / GB:.1f} GB; "
        f"estimated cost max {max(ranks['perf'].values()):.2f} ms/step",
        "",
        knobs_text,
        "",
        "planner report (torchrec.distributed.planner.stats):",
        stats,
    ]
    return "\n".join(lines)


def _topology_line(args: argparse.Namespace) -> str:
    return (
        f"topology: {args.world_size} x cuda ({args.local_world_size}/host), "
        f"{args.hbm_gb:g} GB HBM + {args.ddr_gb:g} GB DDR per rank; batch {args.batch_size}/rank; "
        f"embedding optimizer {args.embedding_optimizer}"
    )


def knob_settings(args: argparse.Namespace, cfg: Config) -> List[Tuple[str, List[str]]]:
    """(label, config overrides) of each ``--knobs`` run."""
    seq_tables: Dict[str, List[str]] = defaultdict(list)
    for s in cfg.data.schema.sequence:
        seq_tables[s.table].append(s.name)

    def cache(load_factor: float) -> List[str]:
        return [
            f"dist.tables.{t}={{compute_kernels: [fused_uvm_caching], cache_load_factor: {load_factor}}}"
            for t in args.large
        ]

    return [
        (f"default (sequences pool max_len={args.max_len})", []),
        ("sequences' pooling 1 (the planner before)", [
            f"dist.tables.{t}.pooling_factors={{{', '.join(f'{f}: 1' for f in feats)}}}" for t, feats in seq_tables.items()
        ]),
        (f"fp16 {'+'.join(args.large)}", [f"dist.tables.{t}.precision=fp16" for t in args.large]),
        (f"UVM cache 0.2 {'+'.join(args.large)}", cache(0.2)),
        (f"UVM cache 0.05 {'+'.join(args.large)}", cache(0.05)),
    ]


def compare_knobs(args: argparse.Namespace) -> Tuple[str, List[Dict[str, Any]]]:
    """One plan per :func:`knob_settings`; a text table and the rows as dicts."""
    from torchrec.distributed.planner.types import PlannerError

    from interformer_rec.train.dist import plan_summary

    base = base_overrides(args)
    _, cfg = build_on_meta(args, base)
    rows: List[Dict[str, Any]] = []
    for label, overrides in knob_settings(args, cfg):
        model, cfg = build_on_meta(args, [*base, *overrides])
        row: Dict[str, Any] = {"setting": label, "overrides": overrides}
        try:
            plan, _, options = plan_on_paper(model, cfg, args)
        except PlannerError as e:
            row["error"] = str(e).splitlines()[0][:200]
            rows.append(row)
            continue
        ranks = per_rank(options)
        row.update(
            hbm_gb_max=max(ranks["hbm"].values()) / GB,
            hbm_gb_total=sum(ranks["hbm"].values()) / GB,
            ddr_gb_max=max(ranks["ddr"].values()) / GB,
            ddr_gb_total=sum(ranks["ddr"].values()) / GB,
            cost_ms_max=max(ranks["perf"].values()),
            tables={t: f"{s['sharding_type']}/{s['compute_kernel']}" for t, s in plan_summary(plan).items()},
        )
        rows.append(row)
    shown = [*args.large, *sorted({s.table for s in cfg.data.schema.sequence} - set(args.large))]
    header = f"{'setting':<44}{'HBM GB max/rank':>16}{'total':>8}{'DDR GB max/rank':>16}{'total':>8}{'cost ms':>9}  " + "  ".join(shown)
    lines = [
        f"model {args.model}, dim {args.dim}, --large {args.large} at {int(args.rows):,} rows, sequences max_len {args.max_len}",
        _topology_line(args),
        "HBM, DDR: the planner's storage estimates of its shards (weights, optimizer state, I/O), the",
        "largest per-rank sum and the sum over ranks; cost: the largest per-rank sum of its perf",
        "estimates (ms per step, compute + comms; the step's critical path in its model)",
        "",
        header,
        "-" * len(header),
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['setting']:<44}  no plan: {r['error']}")
            continue
        lines.append(
            f"{r['setting']:<44}{r['hbm_gb_max']:>16.1f}{r['hbm_gb_total']:>8.0f}{r['ddr_gb_max']:>16.1f}"
            f"{r['ddr_gb_total']:>8.0f}{r['cost_ms_max']:>9.2f}  "
            + "  ".join(f"{t}={r['tables'].get(t, '?')}" for t in shown)
        )
    return "\n".join(lines), rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    import warnings

    from interformer_rec.train.dist import plan_summary, table_knobs, table_knobs_text

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.knobs:
        text, rows = compare_knobs(args)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))
        print(text)
        return
    model, cfg = build_on_meta(args, base_overrides(args))
    knobs = table_knobs(model, cfg.dist, cfg.data.schema)
    plan, stats, options = plan_on_paper(model, cfg, args)
    text = report(args, cfg, plan, options, stats, table_knobs_text(knobs, plan))
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "plan": plan_summary(plan), "knobs": knobs}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
