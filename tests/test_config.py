"""Configs: every file in configs/ loads and builds its model; `base:` inheritance;
clear errors for unknown keys, wrong types and model sizes out of range (at load, naming
the key); each baseline trains a few steps."""

import math
from pathlib import Path

import pytest
import torch

from interformer_rec.config import ConfigError, InterFormerConfig, SyntheticConfig, load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.models import build_model, num_parameters
from interformer_rec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_builds(path):
    cfg = load_config(path)
    model = build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("meta"))
    assert num_parameters(model) > 0


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "child.yaml").write_text(
        f"base: {ROOT / 'configs' / 'synthetic.yaml'}\nmodel: {{name: dlrm_dcn}}\ntrain: {{epochs: 7}}\n"
    )
    cfg = load_config(tmp_path / "child.yaml", ["train.batch_size=64", "model.dlrm.dcn_num_layers=1"])
    parent = load_config(ROOT / "configs" / "synthetic.yaml")
    assert cfg.model.name == "dlrm_dcn" and cfg.model.embedding_dim == parent.model.embedding_dim
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.dlrm.dcn_num_layers) == (7, 64, 1)
    assert cfg.data.schema == parent.data.schema
    assert cfg.train.out_dir == parent.train.out_dir


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=1", "epochz"),
        ("train.epochs=three", "train.epochs: expected int"),
        ("model.name=dlrm2", "not one of"),
        ("model.interformer.interaction=cross", "model.interformer.interaction"),
        ("data.schema.sparse=[{name: x, table: nope}]", "table 'nope'"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "synthetic.yaml", [override])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.interformer.num_cls=0"], "model.interformer.num_cls=0: must be >= 1"),
        (["model.interformer.num_layers=-1"], "model.interformer.num_layers=-1"),
        (["model.interformer.num_pma=-2"], "model.interformer.num_pma=-2: must be >= 0"),
        (["model.interformer.attention_window=-1"], "model.interformer.attention_window=-1"),
        (["model.interformer.interaction_mlp=[16, 0]"], r"model.interformer.interaction_mlp=\[16, 0\]"),
        (["model.interformer.dropout=1.0"], r"model.interformer.dropout=1.0: must lie in \[0, 1\)"),
        (["model.interformer.num_heads=3"], "model.interformer.num_heads=3: must divide model.embedding_dim=16"),
        (["model.interformer.num_heads=16"], "model.interformer.rope=True: needs an even head dim"),
        (["model.interformer.dhen_ensemble=max"], "model.interformer.dhen_ensemble"),
        (["model.interformer.pffn_generator=big"], "model.interformer.pffn_generator"),
        (["model.embedding_dim=0"], "model.embedding_dim=0"),
        (
            ["model.interformer.interaction=projection", "model.interformer.projection_branch1=[20]"],
            "model.interformer.projection_branch1=.*multiple of model.embedding_dim=16",
        ),
        (["model.name=bst", "model.bst.num_heads=5"], "model.bst.num_heads=5: must divide"),
        (["model.name=dlrm", "model.dlrm.over_arch=[]"], "model.dlrm.over_arch"),
        (["model.din.dropout=-0.1"], "model.din.dropout"),
    ],
)
def test_model_config_errors_name_the_key_at_load(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ROOT / "configs" / "synthetic.yaml", overrides)


def test_model_sizes_are_checked_for_the_model_in_use_only():
    # BST's heads do not have to divide the width of an InterFormer
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", ["model.bst.num_heads=5"])
    assert cfg.model.name == "interformer" and cfg.model.bst.num_heads == 5


def test_a_config_built_or_edited_in_code_is_checked_too():
    with pytest.raises(ConfigError, match="model.interformer.num_cls=0"):
        InterFormerConfig(num_cls=0)
    with pytest.raises(ConfigError, match="model.interformer.interaction='cross'"):
        InterFormerConfig(interaction="cross")
    cfg = load_config(ROOT / "configs" / "synthetic.yaml")
    cfg.model.interformer.num_recent = -1
    with pytest.raises(ConfigError, match="model.interformer.num_recent=-1"):
        build_model(cfg.data.schema, cfg.model)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(SyntheticConfig(rows={"train": 2000, "valid": 500, "test": 500}, seed=1), out)
    return out


@pytest.mark.parametrize("name", ["dlrm", "dlrm_dcn", "dlrm_projection", "bst", "din", "infnet", "onetrans"])
def test_baseline_config_trains_a_few_steps(name, tiny_data, tmp_path):
    cfg = load_config(
        ROOT / "configs" / f"synthetic_{name}.yaml",
        [
            f"data.train={tiny_data / 'train.parquet'}",
            f"data.valid={tiny_data / 'valid.parquet'}",
            "data.test=null",
            f"train.out_dir={tmp_path}",
            "train.epochs=1",
            "train.max_steps_per_epoch=4",
            "train.progress=false",
        ],
    )
    trainer = Trainer(cfg)
    dense = {n: p.detach().clone() for n, p in trainer.dmp.named_parameters() if p.dtype.is_floating_point}
    result = trainer.fit()
    assert result["model"] == name
    assert result["history"][0]["steps"] == 4
    # every dense parameter that gets a gradient moved in 4 steps, and the run scored the
    # whole validation split with finite metrics
    after = dict(trainer.dmp.named_parameters())
    moved = [n for n, p in dense.items() if not torch.equal(p, after[n].detach())]
    assert len(moved) >= 0.9 * len(dense) > 0, sorted(set(dense) - set(moved))
    assert result["valid"]["rows"] == 500
    assert all(math.isfinite(result["valid"][k]) for k in ("auc", "logloss", "ne"))
    assert math.isfinite(result["history"][0]["train_loss"])


def test_partial_nested_mapping_keeps_the_fields_default():
    # TrainConfig's default embedding optimizer is adagrad; overriding only its lr must
    # not fall back to OptimizerConfig's own default name
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", ["train.embedding_optimizer={lr: 0.02}"])
    assert (cfg.train.embedding_optimizer.name, cfg.train.embedding_optimizer.lr) == ("adagrad", 0.02)
    cfg = load_config(ROOT / "configs" / "movielens.yaml", ["train.embedding_optimizer.lr=0.02"])
    assert cfg.train.embedding_optimizer.name == "adagrad"
