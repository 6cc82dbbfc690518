"""TorchRec's table knobs in ``dist.tables.<table>`` (issue 35, item 4): the planner's
pooling factors (by default the schema's ids per row: a sequence's ``max_len``), the
UVM cache load factor (CUDA) and the table's training precision (fp32 / fp16), checked
on the way in, given to the planner, trained with, and shown in plan.txt."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import pytest
import torch

from interformer_rec.config import ConfigError, DistConfig, SyntheticConfig, TableSharding, load_config
from interformer_rec.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic.yaml"
MAX_LEN = 20  # configs/synthetic.yaml's sequences
SMALL = ["model.embedding_dim=8", "model.interformer.num_layers=1", "model.interformer.interaction_mlp=[16]",
         "model.interformer.over_arch=[16]"]


def _model(overrides: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    from interformer_rec.models import build_model

    cfg = load_config(CONFIG, [*SMALL, *overrides])
    return cfg, build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("meta"))


@pytest.fixture
def planner_spy(monkeypatch) -> Dict[str, object]:
    """What the planner's enumerator made of each table: its sharding options'
    ``input_lengths`` (the pooling factors it costs with), weight dtype and cache."""
    from torchrec.distributed.planner.enumerators import EmbeddingEnumerator

    seen: Dict[str, object] = {}
    enumerate_ = EmbeddingEnumerator.enumerate

    def spy(self, module, sharders):  # type: ignore[no-untyped-def]
        options = enumerate_(self, module, sharders)
        for so in options:
            seen[so.name] = {"pooling": list(so.input_lengths), "dtype": so.tensor.dtype, "clf": so.cache_load_factor}
        return options

    monkeypatch.setattr(EmbeddingEnumerator, "enumerate", spy)
    return seen


def _plan_on_one_cpu_rank(model, cfg, schema):  # type: ignore[no-untyped-def]
    from interformer_rec.train.dist import DistEnv, plan_sharding

    env = DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")
    return plan_sharding(model, cfg, env, 32, schema)


def test_the_planner_gets_the_schemas_pooling_factors_and_the_configured_ones(planner_spy, one_thread) -> None:
    cfg, model = _model()
    _plan_on_one_cpu_rank(model, cfg.dist, cfg.data.schema)
    # by default: a sequence pools max_len ids per row, a scalar (target or pooled) 1
    assert planner_spy["item"]["pooling"] == [1.0, MAX_LEN]  # [item_id, hist_item_ids]
    assert planner_spy["category"]["pooling"] == [1.0, MAX_LEN]
    assert planner_spy["user"]["pooling"] == [1.0]
    assert planner_spy["interest"]["pooling"] == [1.0]  # multi-hot: its mean is not in the schema

    planner_spy.clear()
    overrides = ["dist.tables.item.pooling_factors={hist_item_ids: 7.5}",
                 "dist.tables.interest.pooling_factors={user_interests: 3}"]
    cfg, model = _model(overrides)
    _plan_on_one_cpu_rank(model, cfg.dist, cfg.data.schema)
    assert planner_spy["item"]["pooling"] == [1.0, 7.5]  # the feature not named keeps the schema's
    assert planner_spy["interest"]["pooling"] == [3.0]
    assert planner_spy["category"]["pooling"] == [1.0, MAX_LEN]


def test_overrides_add_to_the_constraints_a_table_has_already() -> None:
    from interformer_rec.train.dist import check_sharding_config

    cfg, model = _model(["dist.tables.item.pooling_factors={hist_item_ids: 4}"])
    c = check_sharding_config(model, cfg.dist, "cpu", world_size=2, schema=cfg.data.schema)
    assert c["item"].pooling_factors == [1.0, 4.0]
    assert "data_parallel" not in c["item"].sharding_types  # still kept off it on CPU
    assert c["category"].pooling_factors == [1.0, MAX_LEN] and c["category"].sharding_types
    assert c["user"].pooling_factors == [1.0] and c["user"].sharding_types is None  # the planner's choice
    # an fp16 table is kept off data_parallel (see the refusal below)
    cfg, model = _model(["dist.tables.user.precision=fp16"])
    c = check_sharding_config(model, cfg.dist, "cuda", world_size=2, schema=cfg.data.schema)
    assert "data_parallel" not in c["user"].sharding_types and "table_wise" in c["user"].sharding_types
    assert c["context"].sharding_types is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("dist.tables.item.pooling_factors={hist_item_ids: 0}", r"dist.tables.item.pooling_factors.hist_item_ids=0.0: mean ids per row: must be > 0"),
        ("dist.tables.item.cache_load_factor=0", r"dist.tables.item.cache_load_factor=0.0: .*\(0, 1\]"),
        ("dist.tables.item.cache_load_factor=1.5", r"dist.tables.item.cache_load_factor=1.5: .*\(0, 1\]"),
        ("dist.tables.item.precision=bf16", r"dist.tables.item.precision: 'bf16' is not one of \['fp32', 'fp16'\]"),
    ],
)
def test_bad_values_are_refused_naming_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [override])


def test_a_config_built_in_code_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"dist.tables.user.precision='half': use fp32 or fp16"):
        DistConfig(tables={"user": TableSharding(precision="half")})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"dist.tables.user.cache_load_factor=-1"):
        DistConfig(tables={"user": TableSharding(cache_load_factor=-1)})


@pytest.mark.parametrize(
    "table, knobs, device, message",
    [
        ("item", {"pooling_factors": {"user_id": 2.0}}, "cpu",
         r"dist.tables.item.pooling_factors: \['user_id'\] are not features of table 'item' \(its features: \['item_id', 'hist_item_ids'\]\)"),
        ("item", {"cache_load_factor": 0.2}, "cpu",
         r"dist.tables.item.cache_load_factor: UVM caching \(compute kernel fused_uvm_caching\) is a CUDA kernel"),
        ("segment", {"sharding_types": ["data_parallel"], "precision": "fp16"}, "cuda",
         r"dist.tables.segment.sharding_types: 'data_parallel' with dist.tables.segment.precision=fp16: .*"
         r"Adagrad's eps \(1e-8\) underflows"),
        ("user", {"cache_load_factor": 0.2, "compute_kernels": ["fused"]}, "cuda",
         r"dist.tables.user.cache_load_factor: sizes the HBM cache of the fused_uvm_caching kernel, which "
         r"dist.tables.user.compute_kernels=\['fused'\] leaves out"),
    ],
)
def test_what_the_model_or_device_rules_out_is_refused_before_planning(table, knobs, device, message) -> None:  # type: ignore[no-untyped-def]
    from interformer_rec.train.dist import check_sharding_config

    cfg, model = _model()
    with pytest.raises(ConfigError, match=message):
        check_sharding_config(model, DistConfig(tables={table: TableSharding(**knobs)}), device, schema=cfg.data.schema)


def test_a_cache_load_factor_reaches_the_cuda_plan_and_its_text(planner_spy, one_thread) -> None:
    """On a simulated CUDA topology (as benchmarks/plan_at_scale.py): the load factor is
    the planner's and the plan's (DMP passes it to fbgemm as ``cache_load_factor``)."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    from interformer_rec.train.dist import (
        apply_embedding_optimizer,
        check_sharding_config,
        make_sharders,
        plan_summary,
        table_knobs,
        table_knobs_text,
    )

    cfg, model = _model(["dist.tables.item={compute_kernels: [fused_uvm_caching], cache_load_factor: 0.3}",
                         "dist.tables.user.precision=fp16"])
    apply_embedding_optimizer(model, cfg.train.embedding_optimizer, torch.device("cuda"))
    knobs = table_knobs(model, cfg.dist, cfg.data.schema)
    constraints = check_sharding_config(model, cfg.dist, "cuda", world_size=2, schema=cfg.data.schema)
    topology = Topology(world_size=2, compute_device="cuda", hbm_cap=2**30, ddr_cap=2**32)
    plan = EmbeddingShardingPlanner(topology=topology, batch_size=32, constraints=constraints).plan(
        model, make_sharders(cfg.dist, "cuda")
    )
    assert planner_spy["item"]["clf"] == 0.3
    item = plan_summary(plan)["item"]
    assert item["compute_kernel"] == "fused_uvm_caching"
    assert plan.plan[item["module"]]["item"].cache_params.load_factor == 0.3
    text = table_knobs_text(knobs, plan)
    assert "item: pooling item_id=1, hist_item_ids=20; precision fp32; cache load factor 0.3" in text
    assert "user: pooling user_id=1; precision fp16; cache load factor -" in text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(num_users=100, num_items=50, rows={"train": 512, "valid": 256, "test": 256}, seed=1), out)
    return out


def test_fp16_tables_are_fp16_in_the_planner_and_the_sharded_model_and_train(tiny_data, tmp_path, planner_spy, one_thread) -> None:
    """fbgemm's CPU kernels train fp16 tables (the fused TBE of an EmbeddingCollection
    and of an EmbeddingBagCollection); the fused optimizer's state stays fp32; plan.txt
    lists the knobs of every table."""
    from interformer_rec.train.tables import table_weights
    from interformer_rec.train.trainer import Trainer

    cfg = load_config(CONFIG, [
        *SMALL,
        f"data.train={tiny_data / 'train.parquet'}", f"data.valid={tiny_data / 'valid.parquet'}",
        f"data.test={tiny_data / 'test.parquet'}", f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
        "train.batch_size=64", "train.epochs=1", "train.max_steps_per_epoch=4",
        "dist.tables.item.precision=fp16",  # EmbeddingCollection, table-wise/row-wise (fused)
        "dist.tables.user.precision=fp16",  # EmbeddingBagCollection (fused)
        "dist.tables.segment={sharding_types: [column_wise], min_partition: 4, precision: fp16}",
        "dist.tables.interest.pooling_factors={user_interests: 3}",
    ])
    t = Trainer(cfg)
    assert planner_spy["item"]["dtype"] == torch.float16 and planner_spy["category"]["dtype"] == torch.float32
    assert planner_spy["user"]["dtype"] == torch.float16

    def weights() -> Dict[str, torch.Tensor]:
        out = {}
        for table, _, w in table_weights(t.dmp):
            out[table] = (w.local_shards()[0].tensor if hasattr(w, "local_shards") else w).detach().clone()
        return out

    before = weights()
    assert {k: v.dtype for k, v in before.items()} == {
        "user": torch.float16, "segment": torch.float16, "interest": torch.float32, "context": torch.float32,
        "item": torch.float16, "category": torch.float32,
    }
    state = t.optimizer.state_dict()["state"]
    item_state = [v for k, v in state.items() if k.endswith(".item.weight")]  # fused: {"item.momentum1": ...}
    assert item_state and all(
        s.dtype == torch.float32 for entry in item_state for s in entry.values() if isinstance(s, torch.Tensor)
        and s.is_floating_point() and s.dim()
    )
    t.train_epoch(0)
    after = weights()
    assert len(t.step_losses[0]) == 4 and all(torch.isfinite(torch.tensor(t.step_losses[0])))
    for table in ("user", "segment", "item"):
        assert after[table].dtype == torch.float16 and not torch.equal(after[table], before[table]), table

    plan = (tmp_path / "run" / "plan.txt").read_text()
    assert "table knobs" in plan
    assert "item: pooling item_id=1, hist_item_ids=20; precision fp16; cache load factor -" in plan
    assert "interest: pooling user_interests=3; precision fp32" in plan
    assert "segment: pooling user_segment=1; precision fp16" in plan
