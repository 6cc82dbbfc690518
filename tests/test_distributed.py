"""Sharded training on gloo: every CPU sharding type, 1-rank vs 2-rank equivalence,
checkpoint resharding (2 -> 1 and 1 -> 2 ranks), kill-and-resume (on 2 ranks and on 1).

The runs are shared between assertions (one module-scoped fixture): three 2-rank spawns
and two 1-rank runs inside the test process. Every spawn has a deadline: a rank stuck in
a collective must fail the test, not hang it.

Equivalence set-up: 1 rank with batch ``2B`` against 2 ranks with batch ``B`` (the
reader gives both the same rows per step); SGD for embeddings and dense, so that a
wrong gradient scale shows in the tables, not just in the loss.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from interformer_rec.config import ConfigError, DistConfig, SyntheticConfig, TableSharding, load_config
from interformer_rec.data.synthetic import generate

CONFIG = "configs/synthetic.yaml"
B = 32  # rows per rank on 2 ranks; the 1-rank reference uses 2 * B
STEPS = 8
SPAWN_TIMEOUT_S = 150

# sharding types per table, chosen so that two 2-rank runs cover every type the CPU
# backend can do: EBC (user, segment, interest, context) table-, column-,
# table-column-wise and data-parallel; EC (item, category) table-, row-, column-wise.
PLAN_A = {
    "user": {"sharding_types": ["table_wise"]},
    "interest": {"sharding_types": ["column_wise"], "min_partition": 8},
    "segment": {"sharding_types": ["data_parallel"], "compute_kernels": ["dense"]},
    "context": {"sharding_types": ["table_column_wise"], "min_partition": 8},
    "item": {"sharding_types": ["row_wise"]},
    "category": {"sharding_types": ["column_wise"], "min_partition": 8},
}
PLAN_B = {  # (the planner puts A's two `category` column shards on one rank, B's `item` on two)
    "user": {"sharding_types": ["column_wise"], "min_partition": 8},
    "interest": {"sharding_types": ["table_column_wise"], "min_partition": 8},
    "segment": {"sharding_types": ["table_wise"]},
    "context": {"sharding_types": ["data_parallel"], "compute_kernels": ["dense"]},
    "item": {"sharding_types": ["column_wise"], "min_partition": 8},
    "category": {"sharding_types": ["table_wise"]},
}
# opt-in (dist.cpu_row_wise): row-wise pooled tables, which TorchRec offers on CUDA only
PLAN_C = {
    "user": {"sharding_types": ["row_wise"]},
    "interest": {"sharding_types": ["table_row_wise"]},
}


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DROPOUT = ("model.interformer.dropout=0.1", "model.interformer.attention_dropout=0.1")
REGULARIZER = "train.embedding_regularizer=0.5"


def _overrides(data: Path, out: Path, batch: int, tables: Dict[str, Any], *extra: str) -> List[str]:
    return [
        f"data.train={data}/train.parquet",
        f"data.valid={data}/valid.parquet",
        "data.test=null",
        "model.name=interformer",
        # dropout masks are drawn per rank: runs on different world sizes agree only without it
        "model.interformer.dropout=0.0",
        "model.interformer.attention_dropout=0.0",
        "train.epochs=1",
        f"train.batch_size={batch}",
        "train.eval_batch_size=256",
        f"train.max_steps_per_epoch={STEPS}",
        f"train.log_every={STEPS // 2}",
        "train.progress=false",
        "train.embedding_optimizer={name: sgd, lr: 0.5}",
        "train.dense_optimizer={name: sgd, lr: 0.05}",
        f"train.out_dir={out}",
        f"dist.tables={json.dumps(tables)}",
        *extra,
    ]


def _worker(rank: int, world: int, port: int, jobs: List[Dict[str, Any]]) -> None:
    """Run ``jobs`` one after the other in one process group of ``world`` ranks."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # 2 ranks on 2 cores; one rank also runs in the test process
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )
    import torch.distributed as dist

    from interformer_rec.train import checkpoint
    from interformer_rec.train.dist import plan_summary
    from interformer_rec.train.tables import table_weights
    from interformer_rec.train.trainer import Trainer

    created = not dist.is_initialized()  # in the test process, an earlier test's 1-rank group may exist
    if created:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    assert dist.get_world_size() == world
    for job in jobs:
        cfg = load_config(CONFIG, job["overrides"])
        if job["kind"] == "init":  # each rank's shards against the tables' init files
            for t in cfg.data.schema.tables:
                t.init = job["init"][t.name]
            trainer = Trainer(cfg, write_outputs=False)
            diffs = {}
            for table, _, w in table_weights(trainer.dmp):
                want = torch.from_numpy(np.load(job["init"][table]))
                local = [(s.metadata.shard_offsets, s.tensor) for s in w.local_shards()] if hasattr(w, "local_shards") else [((0, 0), w)]
                diffs[table] = [float((v - want[r : r + v.shape[0], c : c + v.shape[1]]).abs().max()) for (r, c), v in local]
            Path(f"{job['result']}.{rank}").write_text(json.dumps(diffs))
            continue
        if job["kind"] == "fit":
            trainer = Trainer(cfg)
            kill = job.get("kill_in_save")
            if kill:  # SIGKILL rank 0 once the tensors of checkpoint `kill` are written
                save = checkpoint.dcp.save

                def killing_save(state: Any, checkpoint_id: str, _save: Any = save) -> Any:
                    out = _save(state, checkpoint_id=checkpoint_id)
                    if rank == 0 and Path(checkpoint_id).name == f"{kill}.tmp":
                        os.kill(os.getpid(), signal.SIGKILL)
                    return out

                checkpoint.dcp.save = killing_save
            result = trainer.fit()
        else:  # evaluate a checkpoint written under another plan / world size
            trainer = Trainer(cfg, write_outputs=False)
            result = trainer.evaluate_checkpoint(checkpoint.resolve(job["ckpt"]), "valid")
            result["plan"] = {k: v["sharding_type"] for k, v in plan_summary(trainer.plan).items()}
        if rank == 0:
            Path(job["result"]).write_text(json.dumps(result))
    if created:
        dist.destroy_process_group()


def _spawn(world: int, jobs: List[Dict[str, Any]], expect_kill: bool = False) -> float:
    """Run ``jobs`` on ``world`` ranks with a deadline; returns the wall time."""
    start = time.perf_counter()
    ctx = mp.start_processes(_worker, args=(world, _free_port(), jobs), nprocs=world, join=False, start_method="spawn")
    deadline = start + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{world}-rank job still running after {SPAWN_TIMEOUT_S}s")
    except mp.ProcessExitedException as e:
        if not (expect_kill and e.signal_name == "SIGKILL"):
            raise
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return time.perf_counter() - start


def _inline(jobs: List[Dict[str, Any]]) -> float:
    """Run 1-rank ``jobs`` in this process (no interpreter start), leaving no process
    group, environment variable, thread setting or logging switch behind."""
    import logging
    import warnings

    import torch.distributed as dist

    start, env, threads = time.perf_counter(), dict(os.environ), torch.get_num_threads()
    had_group = dist.is_initialized()
    try:
        with warnings.catch_warnings():
            _worker(0, 1, _free_port(), jobs)
    finally:
        if dist.is_initialized() and not had_group:
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
        logging.disable(logging.NOTSET)
    return time.perf_counter() - start


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Runs shared by the tests below, in six spawns:

    1. 2 ranks: fit under PLAN_A (checkpoint every 2 steps), PLAN_B and PLAN_C; PLAN_A
       with dropout.
    2. 1 rank, batch 2B, in this process: fit the reference; evaluate A's checkpoint
       (2 -> 1 ranks).
    3. 2 ranks: evaluate the reference's checkpoint under PLAN_A (1 -> 2 ranks); fit
       PLAN_A again, SIGKILLed while writing its step-6 checkpoint.
    4. 1 rank, in this process: resume a copy of the killed run (another world size).
    5. 2 ranks: fit PLAN_A with dropout, SIGKILLed while writing its step-6 checkpoint.
    6. 2 ranks: resume both killed runs.

    Every run but the dropout ones sets dropout to 0 (see :func:`_overrides`).
    """
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    generate(
        SyntheticConfig(num_users=200, num_items=100, rows={"train": 1024, "valid": 512}, row_group_size=256),
        data,
    )
    o = lambda name, world, tables, *extra: _overrides(  # noqa: E731
        data, tmp / name, B * 2 // world, tables, *extra
    )
    every = "train.checkpoint_every_steps=2"
    r: Dict[str, Any] = {"tmp": tmp, "times": {}}
    r["times"]["2 ranks: fit A, B, C"] = _spawn(2, [
        {"kind": "fit", "overrides": o("a", 2, PLAN_A, every), "result": tmp / "a.json"},
        {"kind": "fit", "overrides": o("b", 2, PLAN_B), "result": tmp / "b.json"},
        {"kind": "fit", "overrides": o("c", 2, PLAN_C, "dist.cpu_row_wise=true"), "result": tmp / "c.json"},
        {"kind": "fit", "overrides": o("d", 2, PLAN_A, every, *DROPOUT), "result": tmp / "d.json"},
        {"kind": "fit", "overrides": o("e", 2, PLAN_A, REGULARIZER), "result": tmp / "e.json"},
    ])
    r["times"]["1 rank (in process): fit ref, eval A"] = _inline([
        {"kind": "fit", "overrides": o("ref", 1, {}), "result": tmp / "ref.json"},
        {"kind": "fit", "overrides": o("ref_e", 1, {}, REGULARIZER), "result": tmp / "ref_e.json"},
        {"kind": "eval", "overrides": o("eval_a", 1, {}), "ckpt": tmp / "a" / "checkpoints", "result": tmp / "a_on_1.json"},
    ])
    r["times"]["2 ranks: eval ref, fit killed"] = _spawn(2, [
        {"kind": "eval", "overrides": o("eval_ref", 2, PLAN_A), "ckpt": tmp / "ref" / "checkpoints", "result": tmp / "ref_on_2.json"},
        {"kind": "fit", "overrides": o("k", 2, PLAN_A, every), "result": tmp / "k_first.json", "kill_in_save": "step_00000006"},
    ], expect_kill=True)
    r["killed_dir_listing"] = sorted(p.name for p in (tmp / "k" / "checkpoints").iterdir())
    shutil.copytree(tmp / "k", tmp / "k1")  # the same killed job, resumed on 1 rank below
    r["times"]["1 rank (in process): resume the 2-rank job"] = _inline([
        {"kind": "fit", "overrides": o("k1", 1, {}, every, "train.resume=true"), "result": tmp / "k1.json"},
    ])
    r["times"]["2 ranks: fit killed, with dropout"] = _spawn(2, [
        {"kind": "fit", "overrides": o("kd", 2, PLAN_A, every, *DROPOUT), "result": tmp / "kd_first.json",
         "kill_in_save": "step_00000006"},
    ], expect_kill=True)
    r["times"]["2 ranks: resume both"] = _spawn(2, [
        {"kind": "fit", "overrides": o("k", 2, PLAN_A, every, "train.resume=true"), "result": tmp / "k.json"},
        {"kind": "fit", "overrides": o("kd", 2, PLAN_A, every, *DROPOUT, "train.resume=true"), "result": tmp / "kd.json"},
    ])
    for name in ("a", "b", "c", "d", "e", "ref", "ref_e", "a_on_1", "ref_on_2", "k", "k1", "kd"):
        r[name] = _load(tmp / f"{name}.json")
    print("spawn times:", {k: round(v, 1) for k, v in r["times"].items()})
    return r


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(700)
def test_every_cpu_sharding_type_is_planned_as_asked(runs: Dict[str, Any]) -> None:
    seen, across = {}, set()
    for name, want in (("a", PLAN_A), ("b", PLAN_B), ("c", PLAN_C)):
        plan = runs[name]["plan"]
        for table, c in want.items():
            p = plan[table]
            assert p["sharding_type"] == c["sharding_types"][0], (name, table, p)
            module = p["module"].split(".")[-1]
            seen.setdefault(module, set()).add(p["sharding_type"])
            if p["sharding_type"] != "table_wise" and p["sharding_type"] != "data_parallel":
                assert len(p["shards"]) == 2, (table, p)  # really split
                if len(set(p["ranks"])) == 2:
                    across.add((module, p["sharding_type"]))
    # every split type has run with its shards on both ranks
    assert across == {(m, t) for m, ts in seen.items() for t in ts} - {
        ("ebc", "table_wise"), ("ebc", "data_parallel"), ("ec", "table_wise")
    }, across
    assert seen == {
        "ebc": {"table_wise", "column_wise", "table_column_wise", "data_parallel", "row_wise", "table_row_wise"},
        "ec": {"table_wise", "row_wise", "column_wise"},
    }
    # the plan is saved beside the checkpoint
    ckpt = runs["tmp"] / "a" / "checkpoints" / (runs["tmp"] / "a" / "checkpoints" / "latest").read_text().strip()
    assert "column_wise" in (ckpt / "plan.txt").read_text()


def _table_deltas(ckpt_root: Path, cfg_overrides: List[str]) -> Dict[str, torch.Tensor]:
    """Each table's change from its (plan-independent) initial values, read from a
    checkpoint into an unsharded model."""
    from interformer_rec.models import build_model
    from interformer_rec.train import checkpoint
    from interformer_rec.train.tables import table_init_values, table_weights
    from interformer_rec.train.trainer import RankingTrain

    cfg = load_config(CONFIG, cfg_overrides)
    model = RankingTrain(build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("cpu")))
    checkpoint.load_checkpoint(checkpoint.resolve(ckpt_root), model)
    out = {}
    for table, _, w in table_weights(model):
        n, d = w.shape
        out[table] = w - table_init_values(cfg.train.seed, table, n, d, (0, n), (0, d))
    return out


@pytest.mark.timeout(700)
def test_two_ranks_match_one_rank(runs: Dict[str, Any]) -> None:
    ref = runs["ref"]
    assert runs["ref"]["world_size"] == 1 and runs["a"]["world_size"] == 2
    for name in ("a", "b", "c"):
        r = runs[name]
        l1, l2 = ref["step_losses"][0], r["step_losses"][0]
        print(f"{name}: loss diffs vs 1 rank {[f'{x - y:+.1e}' for x, y in zip(l1, l2)]}; "
              f"valid AUC {ref['valid']['auc']:.6f} (1 rank) vs {r['valid']['auc']:.6f}")
        assert len(l1) == len(l2) == STEPS
        assert abs(l1[0] - l2[0]) < 1e-6, (l1[0], l2[0])  # same initial model
        diffs = [abs(x - y) for x, y in zip(l1, l2)]
        assert max(diffs) < 1e-5, diffs  # seen: <= 1e-7 (float rounding); 2x embedding lr: 5e-5
        assert abs(ref["valid"]["auc"] - r["valid"]["auc"]) < 1e-4, (ref["valid"], r["valid"])
    # the embedding updates agree table by table: TorchRec's gradient division by the
    # world size makes a 2-rank step equal a 1-rank step over both ranks' rows
    tmp = runs["tmp"]
    base = _overrides(tmp / "data", tmp / "x", 2 * B, {})
    d1 = _table_deltas(tmp / "ref" / "checkpoints", base)
    for name in ("a", "b", "c"):
        d2 = _table_deltas(tmp / name / "checkpoints", base)
        rels = {}
        for table, delta in d1.items():
            assert delta.abs().max() > 0, table  # it did train
            rels[table] = float((delta - d2[table]).norm() / delta.norm())
        print(f"{name}: relative difference of each table's update vs 1 rank", {k: f"{v:.1e}" for k, v in rels.items()})
        assert max(rels.values()) < 5e-3, (name, rels)


@pytest.mark.timeout(700)
def test_rank_0_logs_the_windowed_training_metrics_of_all_ranks(runs: Dict[str, Any]) -> None:
    """The RecMetricModule's window holds every rank's rows: 2 ranks of B rows log the
    windowed AUC that 1 rank of 2B rows (the same rows, the same model) logs."""
    from test_train_metrics import scalars

    tag = "train_metrics/auc-click/window_auc"
    one, two = scalars(runs["tmp"] / "ref")[tag], scalars(runs["tmp"] / "a")[tag]
    assert set(one) == set(two) == {STEPS // 2, STEPS}
    assert len(list((runs["tmp"] / "a" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's
    for step, value in two.items():
        assert value == pytest.approx(one[step], abs=1e-4), (step, value, one[step])
    print(f"windowed training AUC, 1 rank vs 2 ranks: {one} vs {two}")


@pytest.mark.timeout(700)
def test_embedding_regularizer_on_two_ranks_matches_one_and_moves_looked_up_rows_only(runs: Dict[str, Any]) -> None:
    """With ``train.embedding_regularizer``, 2 ranks (PLAN_A: table-, column-,
    table-column-, row-wise and data-parallel tables) update every table as 1 rank does;
    the regularizer changed the update of the rows the batches looked up, and a row no
    batch looked up stays exactly at its initial value (no whole-table decay)."""
    tmp = runs["tmp"]
    base = _overrides(tmp / "data", tmp / "x", 2 * B, {})
    plain = _table_deltas(tmp / "ref" / "checkpoints", base)
    one = _table_deltas(tmp / "ref_e" / "checkpoints", base)
    two = _table_deltas(tmp / "e" / "checkpoints", base)
    untouched_somewhere = False
    for table, d in plain.items():
        touched = d.abs().sum(1) > 0
        assert touched.any(), table
        untouched_somewhere |= bool((~touched).any())  # small tables are looked up whole
        assert torch.equal(one[table][~touched], torch.zeros_like(one[table][~touched])), table
        assert torch.equal(two[table][~touched], torch.zeros_like(two[table][~touched])), table
        effect = float((one[table] - d).norm() / d.norm())
        assert effect > 1e-3, (table, effect)  # the regularizer did act on the looked-up rows
        rel = float((two[table] - one[table]).norm() / one[table].norm())
        assert rel < 5e-3, (table, rel)
    assert untouched_somewhere


@pytest.mark.timeout(700)
def test_checkpoints_reshard_between_world_sizes(runs: Dict[str, Any]) -> None:
    # 2 ranks (PLAN_A) -> 1 rank (planner's own plan): same model, same metrics
    a, a_on_1 = runs["a"]["valid"], runs["a_on_1"]
    assert runs["a_on_1"]["plan"] != {k: v["sharding_type"] for k, v in runs["a"]["plan"].items()}
    for k in ("auc", "gauc", "logloss", "rows"):
        assert a_on_1[k] == pytest.approx(a[k], abs=1e-5), k
    # 1 rank -> 2 ranks (PLAN_A)
    ref, ref_on_2 = runs["ref"]["valid"], runs["ref_on_2"]
    for k in ("auc", "gauc", "logloss", "rows"):
        assert ref_on_2[k] == pytest.approx(ref[k], abs=1e-5), k
    print(f"reshard: A (2 ranks) valid AUC {a['auc']:.6f}, loaded on 1 rank {a_on_1['auc']:.6f}; "
          f"ref (1 rank) {ref['auc']:.6f}, loaded on 2 ranks {ref_on_2['auc']:.6f}")


@pytest.mark.timeout(700)
def test_killed_job_resumes_where_it_stopped(runs: Dict[str, Any]) -> None:
    # killed while writing step 6: that write is left as .tmp, latest is step 4
    listing = runs["killed_dir_listing"]
    assert "step_00000006.tmp" in listing and "step_00000006" not in listing, listing
    ckpts = runs["tmp"] / "k" / "checkpoints"
    # the resumed run continued from step 4 and ends where the uninterrupted run A ends
    k, a = runs["k"], runs["a"]
    assert k["step_losses"][0][:4] == a["step_losses"][0][:4]  # restored, not retrained
    assert k["step_losses"][0] == pytest.approx(a["step_losses"][0], abs=1e-6)
    assert k["valid"]["auc"] == pytest.approx(a["valid"]["auc"], abs=1e-6)
    assert not any(p.name.endswith(".tmp") for p in ckpts.iterdir())  # pruned by the next save
    # the same checkpoint resumed on 1 rank with batch 2B (another plan): the rest of the
    # epoch matches, as 1 rank matches 2 ranks
    k1 = runs["k1"]
    assert k1["world_size"] == 1 and k1["step_losses"][0][:4] == k["step_losses"][0][:4]
    assert k1["step_losses"][0] == pytest.approx(a["step_losses"][0], abs=1e-5)
    assert k1["valid"]["auc"] == pytest.approx(a["valid"]["auc"], abs=1e-4)
    print(f"kill/resume on 1 rank: losses {k1['step_losses'][0]}, valid AUC {k1['valid']['auc']:.6f}")
    print(f"kill/resume: left {listing}; resumed losses {k['step_losses'][0]}; uninterrupted "
          f"{a['step_losses'][0]}; valid AUC {k['valid']['auc']:.6f} vs {a['valid']['auc']:.6f}")


@pytest.mark.timeout(700)
def test_killed_job_with_dropout_resumes_exactly(runs: Dict[str, Any]) -> None:
    # the checkpoint restores every rank's RNG state, so the dropout masks after the
    # resume are the ones the uninterrupted run drew
    kd, d, a = runs["kd"], runs["d"], runs["a"]
    assert kd["step_losses"][0][:4] == d["step_losses"][0][:4]
    assert kd["step_losses"][0] == pytest.approx(d["step_losses"][0], abs=1e-6)
    assert kd["valid"]["auc"] == pytest.approx(d["valid"]["auc"], abs=1e-6)
    assert max(abs(x - y) for x, y in zip(d["step_losses"][0][1:], a["step_losses"][0][1:])) > 1e-4  # dropout acted


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

    c = check_sharding_config(_tiny_model(), DistConfig(), "cpu")
    for table in ("item", "category"):
        assert "data_parallel" not in c[table].sharding_types
    assert "user" not in c  # pooled tables: the planner's full choice
    assert "item" not in check_sharding_config(_tiny_model(), DistConfig(), "cuda")  # no limit on CUDA


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


def _hung_peer_worker(rank: int, port: int, overrides: List[str], result: str) -> None:
    """Both ranks run ``interformer-rec train``; rank 1 stops answering once training
    starts (its ``fit`` sleeps, as a SIGSTOPped rank would). Rank 0 writes its exit code
    and stderr to ``result``."""
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
        Trainer.fit = lambda self, on_step=None: time.sleep(120)  # type: ignore[method-assign]
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "--config", CONFIG, *[a for o in overrides for a in ("--set", o)]])
    if rank == 0:
        Path(result).write_text(json.dumps({"rc": rc, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}))


def test_a_hung_peer_ends_the_job_after_dist_timeout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(SyntheticConfig(rows={"train": 512, "valid": 128}, seed=0), data)
    overrides = _overrides(data, tmp_path / "run", B, {}, "dist.timeout_s=3")
    result = tmp_path / "result.json"
    ctx = mp.start_processes(
        _hung_peer_worker, args=(_free_port(), overrides, str(result)), nprocs=2, join=False, start_method="spawn"
    )
    try:
        deadline = time.perf_counter() + SPAWN_TIMEOUT_S
        while not result.exists() and time.perf_counter() < deadline:
            time.sleep(0.5)
    finally:
        for p in ctx.processes:
            p.kill()
    out = _load(result)
    assert out["rc"] == 3, out["stderr"][-2000:]
    assert "no answer from a peer rank within dist.timeout_s=3 s" in out["stderr"]


def test_dist_timeout_must_be_positive() -> None:
    from interformer_rec.train.dist import init_distributed

    with pytest.raises(ConfigError, match="dist.timeout_s=0"):
        init_distributed(DistConfig(timeout_s=0))
