"""Several tasks at once: the heads (shared / towers / MMoE), per-task loss weights, the
synthetic second task (conversion after a click) and its oracle, and one two-task
InterFormer trained by the real Trainer, exported and served with every task's score.
Per-task metrics against per-task references, on 1 and 2 ranks: tests/test_metrics.py
and tests/test_distributed_setup.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from interformer_rec.config import (
    Config,
    ConfigError,
    DataConfig,
    InterFormerConfig,
    ModelConfig,
    OptimizerConfig,
    SyntheticConfig,
    TrainConfig,
    load_config,
)
from interformer_rec.data.batch import Batch
from interformer_rec.data.synthetic import generate, synthetic_schema
from interformer_rec.modules.task_heads import MMoE, TaskTowers, build_task_heads
from interformer_rec.train.ranking import RankingTrain

SYNTH = SyntheticConfig(
    num_users=50, num_items=40, num_categories=5, num_contexts=3, num_segments=3, num_dense=2,
    max_len=6, min_len=0, rows={"train": 3072, "valid": 512, "test": 1024}, row_group_size=512, seed=0,
    conversion=True,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multitask")
    generate(SYNTH, out)
    return out


def test_mmoe_equals_its_formula():
    torch.manual_seed(0)
    heads = MMoE(6, [5, 4], num_tasks=2, num_experts=3)
    z = torch.randn(7, 6)
    experts = torch.stack([e(z) for e in heads.experts], 1)  # [B, E, h]
    w, b = heads.gates.weight.view(2, 3, 6), heads.gates.bias.view(2, 3)
    for t in range(2):
        g = torch.softmax(z @ w[t].T + b[t], -1)  # [B, E]
        mixed = (g.unsqueeze(-1) * experts).sum(1)
        want = mixed @ heads.head_weight[t] + heads.head_bias[t]
        torch.testing.assert_close(heads(z)[:, t], want)


def test_towers_are_separate_per_task():
    heads = TaskTowers(6, [8], num_tasks=3)
    heads(torch.randn(4, 6))[:, 1].sum().backward()
    grads = [sum(p.grad.abs().sum() for p in t.parameters() if p.grad is not None) for t in heads.towers]
    assert grads[1] > 0 and grads[0] == 0 and grads[2] == 0


@pytest.mark.parametrize("kind", ["shared", "towers", "mmoe"])
def test_heads_give_one_logit_per_task(kind):
    assert build_task_heads(kind, 6, [8, 4], 3, num_experts=2)(torch.randn(5, 6)).shape == (5, 3)


def test_heads_reject_unknown_kind_and_no_hidden_layer():
    with pytest.raises(ConfigError, match="expected shared, towers or mmoe"):
        build_task_heads("moe", 6, [8], 2)
    with pytest.raises(ConfigError, match="at least one over_arch layer"):
        build_task_heads("towers", 6, [], 2)


class _Fixed(torch.nn.Module):
    """A model returning fixed logits (with a gradient), to check the loss alone."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, dense, sparse, sequence) -> torch.Tensor:
        return self.logits


def _batch(labels: torch.Tensor) -> Batch:
    return Batch(dense=torch.zeros(len(labels), 0), sparse=None, sequence=None, labels=labels,
                 groups=torch.zeros(len(labels), dtype=torch.long))


def test_task_weights_weight_each_task_s_loss():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 2, generator=g), (torch.rand(16, 2, generator=g) < 0.4).float()
    per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
    loss, (bce, *_) = RankingTrain(_Fixed(logits.clone()), task_weights=[1.0, 3.0])(_batch(labels))
    assert loss.item() == pytest.approx(((per_task[0] + 3 * per_task[1]) / 4).item(), abs=1e-6)
    plain, _ = RankingTrain(_Fixed(logits.clone()))(_batch(labels))
    assert plain.item() == pytest.approx(per_task.mean().item(), abs=1e-6)
    model = _Fixed(logits.clone())
    RankingTrain(model, task_weights=[0.0, 1.0])(_batch(labels))[0].backward()
    assert model.logits.grad[:, 0].abs().sum() == 0 and model.logits.grad[:, 1].abs().sum() > 0
    with pytest.raises(ConfigError, match="task_weights"):
        RankingTrain(_Fixed(logits), task_weights=[0.0, 0.0])


def _columns(path: Path) -> dict:
    columns = ["click", "true_prob", "convert", "true_prob_convert"]
    t = pq.read_table(path, columns=[c for c in columns if c in pq.read_schema(path).names])
    return {k: t.column(k).to_numpy() for k in t.column_names}


def test_synthetic_conversion_needs_a_click_and_keeps_the_click_columns(data, tmp_path):
    t = _columns(data / "test.parquet")
    click, convert = t["click"], t["convert"]
    assert (convert <= click).all() and 0.03 < convert.mean() < click.mean()
    assert (t["true_prob_convert"] <= t["true_prob"] + 1e-12).all()
    # a click converts with its planted q: the conversion rate of clicks ≈ E[q | click]
    q = (t["true_prob_convert"] / t["true_prob"])[click == 1]
    assert convert[click == 1].mean() == pytest.approx(q.mean(), abs=0.05)
    plain = tmp_path / "plain"
    generate(dataclasses.replace(SYNTH, conversion=False), plain)
    p = _columns(plain / "test.parquet")
    assert "convert" not in p and np.array_equal(p["click"], click) and np.array_equal(p["true_prob"], t["true_prob"])


def test_multitask_config_matches_generator():
    cfg = load_config("configs/synthetic_multitask.yaml")
    assert cfg.data.schema == synthetic_schema(cfg.data.synthetic)
    assert cfg.data.schema.labels == ["click", "convert"]


def _config(data: Path, out: Path, task_weights=None) -> Config:
    return Config(
        data=DataConfig(schema=synthetic_schema(SYNTH), train=str(data / "train.parquet"),
                        valid=str(data / "valid.parquet"), test=str(data / "test.parquet"), synthetic=SYNTH),
        model=ModelConfig(
            name="interformer", embedding_dim=8,
            interformer=InterFormerConfig(
                num_layers=1, num_heads=2, interaction_mlp=[16], dcn_num_layers=1, dcn_low_rank=4,
                masknet_hidden=16, ffn_hidden=16, over_arch=[16], task_heads="mmoe", num_experts=2,
            ),
        ),
        train=TrainConfig(
            batch_size=128, eval_batch_size=512, epochs=2, out_dir=str(out), progress=False,
            task_weights=task_weights or {"click": 1.0, "convert": 2.0},
            dense_optimizer=OptimizerConfig(name="adam", lr=1e-2),
            embedding_optimizer=OptimizerConfig(name="adagrad", lr=0.05),
        ),
    )


def test_unknown_task_weight_is_rejected(data, tmp_path, one_thread):
    from interformer_rec.train.trainer import Trainer

    with pytest.raises(ConfigError, match=r"\['like'\] are not labels"):
        Trainer(_config(data, tmp_path, {"like": 1.0}))


@pytest.mark.timeout(600)
def test_two_tasks_train_export_and_serve(data, tmp_path, one_thread, capsys):
    """InterFormer with MMoE heads learns both planted tasks; metrics.json, the summary and
    the exported package (parity-checked by `export`) carry every task."""
    from interformer_rec.cli import main
    from interformer_rec.serving.predictor import Predictor
    from interformer_rec.train.trainer import Trainer, format_summary

    run = tmp_path / "run"
    result = Trainer(_config(data, run)).fit()
    test = result["test"]
    assert test["auc/click"] == test["auc"] and test["auc/click"] > 0.65, test
    assert test["auc/convert"] > 0.65, test  # oracle ~0.86 on these rows
    assert result["oracle_auc/convert"] > 0.75 and result["tasks"] == ["click", "convert"]
    assert json.loads((run / "metrics.json").read_text())["test"]["ne/convert"] < 1
    summary = format_summary(result)
    assert "test/convert" in summary and "convert 0." in summary

    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--parity-rows", "256", "--max-batch", "64"]) == 0
    p = Predictor(out)
    rows = pq.read_table(data / "test.parquet").slice(0, 5).to_pylist()
    probs = p.predict_rows(rows)
    assert p.tasks == ["click", "convert"] and probs.shape == (5, 2)
    assert np.all((probs > 0) & (probs < 1)) and not np.allclose(probs[:, 0], probs[:, 1])
    user = set(p.spec.feature_names) - {"item_id", "item_category"}
    request = {"user": {k: v for k, v in rows[0].items() if k in user},
               "candidates": [{"item_id": r["item_id"], "item_category": r["item_category"]} for r in rows]}
    scores = p.predict_request(request)["scores"]
    assert set(scores) == {"click", "convert"} and len(scores["convert"]) == 5
