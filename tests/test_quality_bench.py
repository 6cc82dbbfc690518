"""benchmarks/quality.py and benchmarks/sample_efficiency.py: which config and overrides
each run gets (any data set by its config path), and the planted task's labels."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import config_for, dataset_key  # noqa: E402
from sample_efficiency import planted_rows  # noqa: E402

from interformer_rec.config import load_config  # noqa: E402


def test_a_data_set_by_config_path_runs_every_model_on_that_config(tmp_path: Path) -> None:
    own = tmp_path / "my_log.yaml"
    own.write_text((ROOT / "configs" / "your_log.yaml").read_text())  # a config without a base
    assert dataset_key(str(own)) == "my_log"
    for model, name, interaction in [("din", "din", None), ("interformer:dcn", "interformer", "dcn"),
                                     ("interformer", "interformer", "dhen"), ("dlrm_dcn@train.seed=3", "dlrm_dcn", None)]:
        path, sets = config_for(str(own), model)
        assert path == own.resolve()
        cfg = load_config(path, sets)
        assert cfg.model.name == name and cfg.data.schema == load_config(own).data.schema
        if interaction:
            assert cfg.model.interformer.interaction == interaction
    assert load_config(*config_for(str(own), "dlrm_dcn@train.seed=3")).train.seed == 3


def test_a_named_data_set_keeps_its_config_files() -> None:
    assert dataset_key("movielens") == "movielens"
    assert config_for("movielens", "din") == (ROOT / "configs" / "movielens_din.yaml", [])
    assert config_for("movielens", "interformer:dcn") == (
        ROOT / "configs" / "movielens.yaml", ["model.interformer.interaction=dcn"])


def test_planted_rows_label_the_target_in_the_history() -> None:
    (dense, pooled, sequence), labels = planted_rows(512, items=50, seq_len=10, g=torch.Generator().manual_seed(0))
    jts = sequence.to_dict()
    target, hist = jts["item_id"].values(), jts["hist_item_ids"]
    want = [float(int(t) in h.tolist()) for t, h in zip(target, hist.to_dense())]
    assert labels.squeeze(1).tolist() == want
    assert 0.4 < labels.mean() < 0.7 and dense.shape == (512, 1) and pooled.keys() == ["user_id"]
    assert hist.lengths().min() >= 1 and hist.lengths().max() <= 10
