"""Distributed set-up without the shared runs: what the CPU refuses to shard (before
planning), sequence tables kept off data-parallel, table initialisation independent of
the sharding (and init files reaching every shard on 2 ranks), the process-group
timeout that ends a job with a hung peer (and a peer that exits), and 2 ranks reporting
the metrics of the union of their predictions."""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from dist_helpers import (
    CONFIG,
    PLAN_A,
    SPAWN_TIMEOUT_S,
    B,
    _free_port,
    _load,
    _overrides,
    _spawn,
    run_ranks,
    start_ranks,
)

from interformer_rec.config import (
    ConfigError,
    DistConfig,
    SyntheticConfig,
    TableSharding,
    load_config,
)
from interformer_rec.data.synthetic import generate

# --------------------------------------------------------------------------- no spawn


def _tiny_model():
    from interformer_rec.models import build_model

    cfg = load_config(CONFIG, ["model.name=bst"])
    return build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("meta"))


@pytest.mark.parametrize(
    "table, sharding, message",
    [
        ("item", "data_parallel", "fbgemm's CPU dense embedding kernel pools"),
        ("user", "row_wise", "TorchRec offers row-wise pooled sharding on CUDA only"),
        ("user", "grid_shard", "not offered"),
        ("nope", "table_wise", "no embedding table 'nope'"),
    ],
)
def test_cpu_refuses_what_it_cannot_shard_before_planning(table: str, sharding: str, message: str) -> None:
    from interformer_rec.train.dist import check_sharding_config

    cfg = DistConfig(tables={table: TableSharding(sharding_types=[sharding])})
    with pytest.raises(ConfigError, match=message):
        check_sharding_config(_tiny_model(), cfg, "cpu")


def test_unconstrained_sequence_tables_stay_off_data_parallel_on_cpu() -> None:
    from interformer_rec.train.dist import check_sharding_config

    c = check_sharding_config(_tiny_model(), DistConfig(), "cpu", world_size=2)
    for table in ("item", "category"):
        assert "data_parallel" not in c[table].sharding_types
    assert "user" not in c  # pooled tables: the planner's full choice
    assert "item" not in check_sharding_config(_tiny_model(), DistConfig(), "cuda", world_size=2)  # no limit on CUDA


def test_one_rank_keeps_unconstrained_tables_off_data_parallel() -> None:
    from interformer_rec.train.dist import check_sharding_config

    for device in ("cpu", "cuda"):
        c = check_sharding_config(_tiny_model(), DistConfig(), device, world_size=1)
        assert all("data_parallel" not in ct.sharding_types for ct in c.values())
        assert "table_wise" in c["user"].sharding_types
    # an explicit override is the user's choice
    cfg = DistConfig(tables={"user": TableSharding(sharding_types=["data_parallel"])})
    assert check_sharding_config(_tiny_model(), cfg, "cpu", world_size=1)["user"].sharding_types == ["data_parallel"]


def test_table_init_is_independent_of_sharding() -> None:
    from interformer_rec.modules.embeddings import init_range
    from interformer_rec.train.tables import table_init_values

    full = table_init_values(3, "t", 10000, 16, (0, 10000), (0, 16))
    assert full.abs().max() <= init_range(16)  # the range the models build their tables with
    assert torch.equal(table_init_values(3, "t", 10000, 16, (4000, 9000), (8, 16)), full[4000:9000, 8:16])
    assert not torch.equal(table_init_values(3, "u", 10000, 16, (0, 10000), (0, 16)), full)


@pytest.mark.timeout(300)
def test_init_files_reach_every_shard_on_two_ranks(tmp_path: Path) -> None:
    # PLAN_A splits tables row-, column-, table-column-wise and replicates one
    data = tmp_path / "data"
    generate(SyntheticConfig(num_users=200, num_items=100, rows={"train": 256, "valid": 256}, row_group_size=256), data)
    overrides = _overrides(data, tmp_path / "run", B, PLAN_A)
    cfg = load_config(CONFIG, overrides)
    rng = np.random.default_rng(0)
    init = {}
    for t in cfg.data.schema.tables:
        init[t.name] = str(tmp_path / f"{t.name}.npy")
        np.save(init[t.name], rng.standard_normal((t.num_embeddings, cfg.model.embedding_dim)).astype(np.float32))
    _spawn(2, [{"kind": "init", "overrides": overrides, "init": init, "result": str(tmp_path / "init")}])
    ranks = [_load(tmp_path / f"init.{rank}") for rank in (0, 1)]
    for table in init:
        shards = ranks[0][table] + ranks[1][table]
        assert shards and max(shards) == 0.0, (table, ranks[0][table], ranks[1][table])
    assert ranks[0]["item"] and ranks[1]["item"]  # row-wise: a shard on each rank


def _failing_peer_worker(rank: int, port: int, overrides: List[str], result: str, peer: str) -> None:
    """Both ranks run ``interformer-rec train``; once training starts, rank 1 stops
    answering (``peer="hung"``: its ``fit`` sleeps, as a SIGSTOPped rank would) or exits
    (``"gone"``). Rank 0 writes its exit code and stderr to ``result``."""
    import contextlib
    import io

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
    )
    from interformer_rec.cli import main
    from interformer_rec.train.trainer import Trainer

    if rank == 1:
        stop = (lambda: time.sleep(120)) if peer == "hung" else (lambda: os._exit(1))
        Trainer.fit = lambda self, on_step=None: stop()  # type: ignore[method-assign]
    err = io.StringIO()
    start, rc = time.perf_counter(), None
    try:
        with contextlib.redirect_stderr(err):
            rc = main(["train", "--config", CONFIG, *[a for o in overrides for a in ("--set", o)]])
    except BaseException:  # reported in the result, not lost with the process
        err.write(traceback.format_exc())
    if rank == 0:
        Path(result).write_text(json.dumps({"rc": rc, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}))


@pytest.mark.parametrize("peer,message", [
    ("hung", "no answer from a peer rank within dist.timeout_s=20 s"),
    ("gone", "a peer rank closed its connection"),
])
def test_a_hung_or_gone_peer_ends_the_job_with_a_clear_error(tmp_path: Path, peer: str, message: str) -> None:
    """Exit code 3 and one line naming the cause. The timeout (20 s) leaves room for a
    slow set-up on busy cores: rank 1 waits for rank 0's sharding plan under the same
    timeout (3 s was too short with 2 cores shared by 5 processes)."""
    data = tmp_path / "data"
    generate(SyntheticConfig(rows={"train": 512, "valid": 128}, seed=0), data)
    overrides = _overrides(data, tmp_path / "run", B, {}, "dist.timeout_s=20")
    result = tmp_path / "result.json"
    ctx = start_ranks(_failing_peer_worker, (_free_port(), overrides, str(result), peer), 2)
    try:
        deadline = time.perf_counter() + SPAWN_TIMEOUT_S
        while not result.exists() and time.perf_counter() < deadline and ctx.processes[0].is_alive():
            time.sleep(0.5)
    finally:
        for p in ctx.processes:
            p.kill()
    assert result.exists(), f"rank 0 wrote no result; exit codes {[p.exitcode for p in ctx.processes]}"
    out = _load(result)
    assert out["rc"] == 3, out["stderr"][-2000:]
    assert message in out["stderr"], out["stderr"][-2000:]


def test_dist_timeout_must_be_positive() -> None:
    from interformer_rec.train.dist import init_distributed

    with pytest.raises(ConfigError, match="dist.timeout_s=0"):
        init_distributed(DistConfig(timeout_s=0))


def _metrics_worker(rank: int, port: int, out: str) -> None:
    """Rank 0 holds rows 0-999, rank 1 rows 1000-2999 of test_metrics' two-task data;
    each writes the metrics of the gathered predictions."""
    import torch.distributed as dist
    from test_metrics import TASKS, _two_task_data

    from interformer_rec.train.metrics import compute_metrics, gather_predictions

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    logits, labels, groups = _two_task_data()
    sl = slice(0, 1000) if rank == 0 else slice(1000, None)  # unequal shards
    m = compute_metrics(*gather_predictions(logits[sl], labels[sl], groups[sl]), TASKS)
    Path(f"{out}.{rank}").write_text(json.dumps(m))
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_report_metrics_of_the_union(tmp_path: Path) -> None:
    """Every task's metrics, on each rank, are those of all rows (the per-task
    references: single-task metrics of each column, themselves checked against sklearn)."""
    from test_metrics import TASKS, _two_task_data, assert_per_task_metrics

    from interformer_rec.train.metrics import compute_metrics

    run_ranks(_metrics_worker, (_free_port(), str(tmp_path / "m")), 2)
    data = _two_task_data()
    full = compute_metrics(*data, TASKS)
    for rank in (0, 1):
        got = _load(tmp_path / f"m.{rank}")
        assert got.keys() == full.keys() and got["rows"] == 3000
        assert_per_task_metrics(got, *data)
