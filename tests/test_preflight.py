"""A run stops before its first step on an empty training split, a missing or malformed
valid / test split, and a resume under another model or data config (the message names
the split or the keys); nothing is written for a run that never started."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from interformer_rec.cli import main
from interformer_rec.config import SyntheticConfig, load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.train.preflight import config_changes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preflight")
    generate(SyntheticConfig(num_users=50, num_items=40, num_categories=5, rows={"train": 600, "valid": 200, "test": 200}), out)
    return out


def _train(data: Path, out: Path, *sets: str, **splits: Path) -> int:
    paths = {s: data / f"{s}.parquet" for s in ("train", "valid", "test")} | splits
    args = ["train", "--config", CONFIG]
    for o in (
        *(f"data.{s}={p}" for s, p in paths.items()),
        f"train.out_dir={out}", "train.progress=false", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=128", "model.embedding_dim=8", "model.interformer.num_layers=1", *sets,
    ):
        args += ["--set", o]
    return main(args)


def test_an_empty_training_split_is_an_error(data, tmp_path, capsys):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(data / "train.parquet").slice(0, 100), empty)  # < one batch of 128
    assert _train(data, tmp_path / "run", train=empty) == 2
    err = capsys.readouterr().err
    assert "data.train=" in err and "100 rows, fewer than one global batch of 128" in err
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_missing_or_malformed_eval_split_stops_before_training(data, tmp_path, capsys, split):
    assert _train(data, tmp_path / "a", **{split: tmp_path / "nope.parquet"}) == 2
    err = capsys.readouterr().err
    assert f"data.{split}: " in err and "nope.parquet: no such file" in err
    broken = tmp_path / "broken.parquet"
    pq.write_table(pq.read_table(data / f"{split}.parquet").drop(["item_id"]), broken)
    assert _train(data, tmp_path / "b", **{split: broken}) == 2
    err = capsys.readouterr().err
    assert f"data.{split}: " in err and "broken.parquet" in err and "item_id" in err
    for run in ("a", "b"):
        assert not (tmp_path / run / "checkpoints").exists()


def test_resume_under_another_config_names_the_keys(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data, out) == 0
    capsys.readouterr()
    # a shape change and a change that keeps every shape: both named, nothing loaded
    assert _train(data, out, "train.resume=true", "model.embedding_dim=16") == 2
    assert "model.embedding_dim: 8 -> 16" in capsys.readouterr().err
    assert _train(data, out, "train.resume=true", "model.interformer.dropout=0.3") == 2
    assert "model.interformer.dropout: 0.1 -> 0.3" in capsys.readouterr().err
    # training-only keys may change: one more epoch resumes
    assert _train(data, out, "train.resume=true", "train.epochs=2", "train.dense_optimizer.lr=0.01") == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_key_added_since_at_its_default_is_no_change():
    cfg = load_config(CONFIG).to_dict()
    older = {**cfg, "model": {k: v for k, v in cfg["model"].items() if k != "embedding_dim"}}
    assert config_changes(older, cfg) == ["model.embedding_dim: '<absent>' -> 16"]
    from interformer_rec.config import config_from_dict

    assert config_changes(config_from_dict(older).to_dict(), cfg) == []  # what check_same_config compares
