"""End to end: generate -> train (1-rank DMP + TrainPipelineSparseDist) -> metrics,
checkpoints, TensorBoard; and the history really carries signal InterFormer uses."""

import contextlib
import io
import json
import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from interformer_rec.cli import main
from interformer_rec.config import ConfigError, SyntheticConfig, load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.train import checkpoint
from interformer_rec.train.tables import is_table_weight, table_init_values, table_weights
from interformer_rec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthetic.yaml"


def _config(data_dir: Path, out_dir: Path, *overrides: str):
    return load_config(
        CONFIG,
        [
            f"data.train={data_dir / 'train.parquet'}",
            f"data.valid={data_dir / 'valid.parquet'}",
            f"data.test={data_dir / 'test.parquet'}",
            f"train.out_dir={out_dir}",
            "train.progress=false",
            "model.embedding_dim=8",
            "model.interformer.num_layers=1",
            "model.interformer.interaction_mlp=[32]",
            "model.interformer.over_arch=[32]",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    # a small world (few items and categories) so that few steps learn it
    cfg = SyntheticConfig(
        num_users=300, num_items=200, num_categories=10,
        rows={"train": 16000, "valid": 3000, "test": 3000}, seed=3,
    )
    generate(cfg, out)
    return out


def _without_history(src: Path, dst: Path) -> Path:
    """The same rows with every behaviour history emptied."""
    dst.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        t = pq.read_table(src / f"{split}.parquet")
        for col in ("hist_item_ids", "hist_cat_ids"):
            empty = pa.array([[] for _ in range(t.num_rows)], type=t.schema.field(col).type)
            t = t.set_column(t.schema.get_field_index(col), col, empty)
        pq.write_table(t, dst / f"{split}.parquet", row_group_size=4096)
    return dst


CLI_OVERRIDES = (
    "train.epochs=2",
    "train.max_steps_per_epoch=10",
    "train.progress=false",
    "model.embedding_dim=8",
    "model.interformer.num_layers=1",
    "train.dense_optimizer.lr=0.005",
)


def _sets(data: Path, out: Path, *overrides: str) -> List[str]:
    sets = [
        f"data.train={data / 'train.parquet'}",
        f"data.valid={data / 'valid.parquet'}",
        f"data.test={data / 'test.parquet'}",
        f"train.out_dir={out}",
        *overrides,
    ]
    return [arg for o in sets for arg in ("--set", o)]


@pytest.fixture(scope="module")
def cli_run(small_data, tmp_path_factory) -> Tuple[Path, List[str], str]:
    """``interformer-rec train`` of 2 epochs x 10 steps: (run dir, its --set args, stdout)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    sets = _sets(small_data, out, *CLI_OVERRIDES)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--config", str(CONFIG), *sets]) == 0
    return out, sets, printed.getvalue()


def _entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_cli_train_learns_and_writes_metrics_checkpoints_and_logs(cli_run):
    out, _, printed = cli_run
    assert "valid" in printed and "test" in printed and "oracle AUC" in printed

    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [0, 1]
    assert all(h["steps"] == 10 for h in m["history"])
    for split in ("valid", "test"):
        # it learned the planted clicks: an untrained model's AUC is 0.5 +- 0.012 on 3,000
        # rows, and a logloss below the entropy of the base rate needs ranking and
        # calibration (measured, valid / test: AUC 0.608 / 0.637, gAUC 0.611 / 0.642,
        # logloss 0.550 / 0.564 against entropies 0.562 / 0.585, NE 0.977 / 0.964)
        assert m[split]["auc"] > 0.58, (split, m[split])
        assert m[split]["gauc"] > 0.56, (split, m[split])
        assert m[split]["logloss"] < _entropy(m[split]["pos_rate"]) - 0.005, (split, m[split])
        assert m[split]["ne"] < 0.99, (split, m[split])
    assert m["test"]["rows"] == 3000
    assert m["test"]["auc"] < m["oracle_auc"] and 0.8 < m["oracle_auc"] < 0.95
    assert m["num_parameters"] > m["dense_parameters"] > 0

    best = checkpoint.resolve(out / "checkpoints", "best")
    assert best.name == f"epoch_{m['best_epoch']:04d}"
    assert checkpoint.read_meta(best)["valid"]["auc"] == pytest.approx(m["valid"]["auc"])
    assert (out / "plan.txt").read_text().strip()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_cli_evaluate_reproduces_the_metrics_of_the_best_checkpoint(cli_run, split):
    """``interformer-rec evaluate`` (train/evaluate.py) scores the best checkpoint with the
    metrics the training run reported for it."""
    out, sets, _ = cli_run
    m = json.loads((out / "metrics.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["evaluate", "--config", str(CONFIG), *sets, "--split", split]) == 0
    got = json.loads((out / f"eval_{split}.json").read_text())
    assert got["checkpoint"] == str(checkpoint.resolve(out / "checkpoints", "best"))
    assert got["epoch"] == m["best_epoch"] and got["split"] == split and got["world_size"] == 1
    for k in ("auc", "gauc", "logloss", "ne", "pos_rate", "rows"):
        assert got[k] == pytest.approx(m[split][k], abs=1e-9), k


def test_bad_config_and_bad_data_give_clear_errors(small_data, tmp_path, capsys):
    cfg = CONFIG
    assert main(["train", "--config", str(cfg), "--set", "train.epochz=1"]) == 2
    assert "epochz" in capsys.readouterr().err
    missing = tmp_path / "nope.parquet"
    assert main(["train", "--config", str(cfg), "--set", f"data.train={missing}"]) == 2
    assert "nope.parquet" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_interformer_uses_the_history(small_data, tmp_path):
    """On data where clicks depend on target x history and context x history, the
    trained InterFormer beats the same model trained on the same rows without their
    histories, by a real margin (2 epochs, measured with 1 and 2 threads: test AUC 0.768
    vs 0.741, logloss 0.495 vs 0.510; with train.seed=1 0.772 vs 0.746 and 0.501 vs 0.517;
    0.5 is chance). It runs the DHEN ensemble ``sum``, the default."""
    no_hist = _without_history(small_data, tmp_path / "no_history")
    overrides = ("train.epochs=2", "train.batch_size=128", "train.dense_optimizer.lr=0.003", "model.interformer.dhen_ensemble=sum")
    with_h = Trainer(_config(small_data, tmp_path / "with", *overrides)).fit()
    without = Trainer(_config(no_hist, tmp_path / "without", *overrides)).fit()
    print("with history", with_h["test"], "without", without["test"])
    assert with_h["test"]["auc"] > without["test"]["auc"] + 0.01
    assert with_h["test"]["logloss"] < without["test"]["logloss"]


def test_a_table_starts_from_its_init_file(small_data, tmp_path):
    cfg = _config(small_data, tmp_path / "run")
    table = cfg.data.schema.tables[0]
    w = np.random.default_rng(0).standard_normal((table.num_embeddings, 8)).astype(np.float32)
    np.save(tmp_path / "init.npy", w)
    table.init = str(tmp_path / "init.npy")
    weights = {name: v for name, _, v in table_weights(Trainer(cfg).dmp)}

    def full(name):  # one rank: the whole table is in its one shard
        v = weights[name]
        return v.local_shards()[0].tensor if hasattr(v, "local_shards") else v

    assert torch.equal(full(table.name), torch.from_numpy(w))
    other = cfg.data.schema.tables[1]  # the others keep the seeded random init
    n = other.num_embeddings
    assert torch.equal(full(other.name), table_init_values(cfg.train.seed, other.name, n, 8, (0, n), (0, 8)))

    np.save(tmp_path / "narrow.npy", w[:, :4])
    table.init = str(tmp_path / "narrow.npy")
    with pytest.raises(ConfigError, match=rf"narrow.npy: table '{table.name}' needs a float array of shape \({table.num_embeddings}, 8\)"):
        Trainer(cfg)
    w[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", w)
    table.init = str(tmp_path / "nan.npy")
    with pytest.raises(ConfigError, match="nan.npy: .* non-finite value in row 3"):
        Trainer(cfg)
    table.init = str(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        Trainer(cfg)


class _Killed(Exception):
    pass


def test_resume_with_a_global_batch_that_does_not_divide_the_rows_trained(small_data, tmp_path, caplog):
    """3 steps of 64 rows are checkpointed, then the job dies; resumed with batch 128,
    the 192 rows trained make 1 step of 128 and 64 rows that are trained again."""
    run = ("train.epochs=1", "train.max_steps_per_epoch=8", "data.test=null", "train.checkpoint_every_steps=3")
    first = Trainer(_config(small_data, tmp_path, *run, "train.batch_size=64"))

    def die_after_step_3(trainer: Trainer) -> None:
        if trainer.global_step == 3:
            raise _Killed

    with pytest.raises(_Killed):
        first.fit(on_step=die_after_step_3)
    saved = checkpoint.read_meta(checkpoint.latest_complete(tmp_path / "checkpoints"))
    assert (saved["step_in_epoch"], saved["global_batch"]) == (3, 64)

    resumed = Trainer(_config(small_data, tmp_path, *run, "train.batch_size=128", "train.resume=true"))
    with caplog.at_level("WARNING", logger="interformer_rec.train.trainer"):
        result = resumed.fit()
    assert "the new global batch 128 does not divide them, so 64 rows are trained again" in caplog.text
    losses = result["step_losses"][0]
    assert losses[:3] == saved["epoch_losses"]  # the 3 steps of 64 rows, restored
    assert len(losses) == 3 + (8 - 1)  # then batches 1..7 of 128 rows (batch 0 = rows 0-127 is done)
    assert result["history"][0]["steps"] == 10 and resumed.global_step == 3 + 7


def _dense_norm(trainer: Trainer) -> float:
    params = [p for k, p in trainer.dmp.named_parameters() if not is_table_weight(k)]
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))


def test_rowwise_adagrad_trains_with_per_row_state_and_dense_weight_decay_shrinks(small_data, tmp_path):
    run = (
        "train.epochs=1", "train.max_steps_per_epoch=4", "data.test=null", "train.batch_size=64",
        "train.embedding_optimizer={name: rowwise_adagrad, lr: 0.05}",
    )
    plain = Trainer(_config(small_data, tmp_path / "plain", *run, "train.dense_optimizer={name: sgd, lr: 0.1}"))
    plain.fit()
    rows = {t.name: t.num_embeddings for t in plain.cfg.data.schema.tables}
    states = {k.split(".")[-2]: v for k, v in plain.optimizer.state_dict()["state"].items() if is_table_weight(k)}
    assert states.keys() == rows.keys()
    for table, state in states.items():
        (acc,) = [v for name, v in state.items() if name != "step"]  # fused momentum1 / RowWiseAdagrad sum
        acc = acc.local_shards()[0].tensor if hasattr(acc, "local_shards") else acc
        assert acc.shape[0] == rows[table] and acc.numel() == rows[table], (table, acc.shape)  # one per row
        assert float(acc.max()) > 0, table  # it saw gradients
    for table, _, w in table_weights(plain.dmp):
        w = w.local_shards()[0].tensor if hasattr(w, "local_shards") else w
        n, d = w.shape
        assert not torch.equal(w, table_init_values(plain.cfg.train.seed, table, n, d, (0, n), (0, d))), table

    decayed = Trainer(
        _config(small_data, tmp_path / "decayed", *run, "train.dense_optimizer={name: sgd, lr: 0.1, weight_decay: 1.0}")
    )
    start = _dense_norm(decayed)
    decayed.fit()
    # 4 SGD steps with decay 1.0 and lr 0.1 scale every weight by 0.9 per step (0.66 in all)
    assert _dense_norm(decayed) < 0.8 * _dense_norm(plain), (start, _dense_norm(decayed), _dense_norm(plain))


def test_one_rank_trains_without_ddp_or_all_reduce(small_data, tmp_path):
    """On one rank there is nothing to average: no DDP wraps the dense arches or a
    data-parallel table, and a training step runs no all-reduce (TorchRec's input
    all-to-all still runs; its sharded modules always distribute their input)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.profiler import ProfilerActivity, profile

    t = Trainer(_config(small_data, tmp_path / "run", "train.max_steps_per_epoch=3", "train.epochs=1"))
    assert not any(isinstance(m, DistributedDataParallel) for m in t.dmp.modules())
    assert "data_parallel" not in t.plan_text
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t.train_epoch(0)
    ops = {e.key for e in prof.key_averages()}
    assert any("all_to_all" in op or "alltoall" in op for op in ops)  # the profile sees collectives
    assert not [op for op in ops if "allreduce" in op or "all_reduce" in op]


def test_a_full_disk_during_a_checkpoint_names_the_path_and_keeps_the_last_one(small_data, tmp_path, monkeypatch, capsys):
    """Issue 33, item 10: a checkpoint write that fails for want of space (here DCP's
    own message, as on a full disk, with little free space) ends train with a message
    naming the checkpoint and the free space; the previous checkpoint stays complete
    and `latest` still names it."""
    import shutil
    from collections import namedtuple

    import torch.distributed.checkpoint as dcp

    real_save, calls = dcp.save, []

    def save(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint
            real_save(*a, **k)  # its files are written ...
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598")
        return real_save(*a, **k)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dcp, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (5 << 20), 5 << 20))
    out = tmp_path / "run"
    assert main(["train", "--config", str(CONFIG), *_sets(small_data, out, *CLI_OVERRIDES)]) == 1
    err = capsys.readouterr().err
    assert f"writing checkpoint {out / 'checkpoints' / 'epoch_0001'} failed" in err, err
    assert "the disk is full (5 MiB free on its file system)" in err and "unexpected pos 704 vs 598" in err
    assert "Traceback" not in err
    latest = checkpoint.resolve(out / "checkpoints", "latest")
    assert latest.name == "epoch_0000" and checkpoint.is_complete(latest)
    assert not (out / "checkpoints" / "epoch_0001.tmp").exists()  # the space is given back


def test_loader_workers_train_exactly_like_the_training_process(small_data, tmp_path, monkeypatch):
    """data.num_workers: batches decoded in DataLoader workers and fed through
    TrainPipelineSparseDist train step for step like the in-process reader (one worker
    keeps the stream's order) and validate alike."""
    from interformer_rec.data import reader as reader_mod

    loaders = []

    class Spy(reader_mod.DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loaders.append((self.num_workers, self.prefetch_factor))

    monkeypatch.setattr(reader_mod, "DataLoader", Spy)
    run = ("train.epochs=1", "train.max_steps_per_epoch=12", "data.test=null", "model.interformer.dropout=0.0",
           "data.prefetch_factor=3")
    results = [
        Trainer(_config(small_data, tmp_path / str(n), *run, f"data.num_workers={n}")).fit() for n in (0, 1)
    ]
    assert results[1]["step_losses"] == results[0]["step_losses"]
    assert results[1]["history"][0]["valid_auc"] == results[0]["history"][0]["valid_auc"]
    assert loaders == [(1, 3), (1, 3)]  # the training epoch and the validation, in workers
