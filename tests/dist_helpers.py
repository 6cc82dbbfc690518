"""Shared by tests/test_distributed.py and tests/test_distributed_setup.py: the sharding
plans asked for, the config overrides of a run, and spawning ranks on gloo with a
deadline (a rank stuck in a collective fails the test, it does not hang it)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.multiprocessing as mp

from interformer_rec.config import (
    load_config,
)

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


# Ranks start from a fork server that has imported torchrec and the trainer once (about
# 15 s per interpreter on this project's CPU machine): each later rank is a fork of it,
# which starts in well under a second. Nothing in the server has run a parallel op or
# made a process group, so its forks are clean.
PRELOAD = ["interformer_rec.train.trainer", "dist_helpers"]


def start_ranks(fn: Any, args: tuple, nprocs: int) -> "mp.ProcessContext":
    """``torch.multiprocessing.start_processes`` from the preloaded fork server."""
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    return mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="forkserver")


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
        if job["kind"] == "fit_until":  # a job that dies after step `stop_after` (its checkpoint written)
            def stop(t: Any, at: int = job["stop_after"]) -> None:
                if t.global_step >= at:
                    raise _Stopped

            try:
                Trainer(cfg).fit(stop)
            except _Stopped:
                continue
            raise AssertionError("the job did not reach its stop step")
        if job["kind"] == "fit":
            trainer = Trainer(cfg)
            kill = job.get("kill_in_save")
            if kill:  # SIGKILL rank 0 once the tensors of checkpoint `kill` are written
                save = checkpoint.dcp.save

                def killing_save(state: Any, checkpoint_id: str, _save: Any = save, **kwargs: Any) -> Any:
                    out = _save(state, checkpoint_id=checkpoint_id, **kwargs)
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


class _Stopped(Exception):
    pass


def reader_ranks(rank: int, world: int, port: int, path: str, out: str, num_workers: int) -> None:
    """Iterate a reader of ``path`` (batch 8, no shuffle) on ``world`` gloo ranks with the
    trainer's data group; write ``{"step", "error"}`` of the first DataError to
    ``out.<rank>``."""
    import torch.distributed as dist

    from interformer_rec.arrays import DataError
    from interformer_rec.config import DistConfig
    from interformer_rec.data.reader import ParquetBatchReader
    from interformer_rec.train.dist import init_distributed
    from test_streaming import SCHEMA

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    env = init_distributed(DistConfig(), "cpu")
    reader = ParquetBatchReader(path, SCHEMA, 8, rank=rank, world_size=world, group=env.data_group)
    step, error = 0, None
    try:
        for _ in reader.loader(num_workers):
            step += 1
    except DataError as e:
        error = str(e)
    Path(f"{out}.{rank}").write_text(json.dumps({"step": step, "error": error}))
    dist.destroy_process_group()


def run_ranks(fn: Any, args: tuple, nprocs: int, expect_kill: bool = False) -> float:
    """Run ``fn(rank, *args)`` on ``nprocs`` processes with a deadline; returns the wall
    time. With ``expect_kill`` a SIGKILLed rank ends the run without an error."""
    start = time.perf_counter()
    ctx = start_ranks(fn, args, nprocs)
    deadline = start + SPAWN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{nprocs}-rank job still running after {SPAWN_TIMEOUT_S}s")
    except mp.ProcessExitedException as e:
        if not (expect_kill and e.signal_name == "SIGKILL"):
            raise
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return time.perf_counter() - start


def _spawn(world: int, jobs: List[Dict[str, Any]], expect_kill: bool = False) -> float:
    """Run ``jobs`` on ``world`` ranks with a deadline; returns the wall time."""
    return run_ranks(_worker, (world, _free_port(), jobs), world, expect_kill)


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
