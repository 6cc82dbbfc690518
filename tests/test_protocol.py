"""The BARS training protocol: DHEN and the paper's options as formulas, the LR schedules
and early stopping on planted validation curves (in the real trainer), and the embedding
regularizer's exact update on one rank (2 ranks: tests/test_distributed.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

from interformer_rec.config import ConfigError, LRScheduleConfig, SyntheticConfig, load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.modules.interaction import DHENInteraction, DHENLayer
from interformer_rec.modules.sequence import PFFN
from interformer_rec.train.protocol import LRSchedule, Monitor

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- DHEN, PFFN


def _dhen_reference(layer: DHENLayer, x: torch.Tensor) -> torch.Tensor:
    """``LayerNorm(Ensemble(DOT(X), DCN(X)) + ShortCut(X))`` written out."""
    B, n, d = x.shape
    i, j = torch.triu_indices(n, n, offset=1)
    dots = torch.einsum("bid,bjd->bij", x, x)[:, i, j]  # [B, n(n-1)/2]
    flat = x.flatten(1)
    x0, xl = flat, flat
    for lin_w, lin_v, bias in zip(layer.dcn.W_kernels, layer.dcn.V_kernels, layer.dcn.bias):
        xl = x0 * (xl @ lin_v.T @ lin_w.T + bias) + xl  # DCNv2: x0 ⊙ (W V x_l + b) + x_l
    dot = dots @ layer.dot.weight.T + layer.dot.bias
    if layer.ensemble is not None:
        mixed = torch.cat([dot, xl], 1) @ layer.ensemble.weight.T + layer.ensemble.bias
    else:
        mixed = dot + xl
    pre = (mixed + flat @ layer.shortcut.weight.T + layer.shortcut.bias).view(B, n, d)
    return F.layer_norm(pre, (d,), layer.norm.weight, layer.norm.bias, layer.norm.eps)


@pytest.mark.parametrize("ensemble", ["concat", "sum"])
def test_dhen_layer_is_the_papers_formula(ensemble: str) -> None:
    torch.manual_seed(0)
    layer = DHENLayer(num_tokens=5, dim=4, dcn_layers=2, low_rank=3, ensemble=ensemble)
    with torch.no_grad():  # non-trivial norm parameters, so that they are checked too
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(layer(x), _dhen_reference(layer, x), rtol=1e-5, atol=1e-5)
    # every token is normalized over its d
    out = layer(x)
    assert out.shape == (3, 5, 4)


def test_dhen_stacks_its_layers() -> None:
    torch.manual_seed(0)
    dhen = DHENInteraction(num_tokens=4, dim=3, num_layers=3, dcn_layers=1, low_rank=2, ensemble="concat")
    x = torch.randn(2, 4, 3)
    want = x
    for layer in dhen.layers:
        want = _dhen_reference(layer, want)
    assert dhen.out_dim == 12
    torch.testing.assert_close(dhen(x), want.flatten(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dhen_layers"):
        DHENInteraction(4, 3, 0, 1, 2, "concat")
    with pytest.raises(ValueError, match="dhen_ensemble"):
        DHENLayer(4, 3, 1, 2, "max")


def test_pffn_paper_generator_is_x_sum_transposed_times_w() -> None:
    torch.manual_seed(0)
    pffn = PFFN(num_summary=3, dim=4, generator="paper")
    s, x_sum = torch.randn(2, 6, 4), torch.randn(2, 3, 4)
    w = torch.stack([x_sum[b].T @ pffn.weight for b in range(2)])  # [B, d, d]
    torch.testing.assert_close(pffn(s, x_sum), torch.bmm(s, w))
    assert sum(p.numel() for p in pffn.parameters()) == 3 * 4
    assert sum(p.numel() for p in PFFN(3, 4, "full").parameters()) == 3 * 4 * 16 + 16


def test_projected_dense_token_gives_one_token() -> None:
    from interformer_rec.models.interformer import InterFormer

    cfg = load_config(ROOT / "configs" / "synthetic.yaml")
    per_field = InterFormer(cfg.data.schema, cfg.model)
    cfg.model.interformer.dense_tokens = "projected"
    projected = InterFormer(cfg.data.schema, cfg.model)
    n_dense = len(cfg.data.schema.dense)
    assert n_dense > 1
    assert per_field.num_tokens - projected.num_tokens == n_dense - 1
    dense = torch.randn(5, n_dense)
    torch.testing.assert_close(projected.dense_tokens(dense)[:, 0], projected.dense_tokens.proj(dense))


# --------------------------------------------------------------------------- schedules


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_plateau_reduces_after_patience_validations_without_improvement() -> None:
    opt = _optimizer(0.1)
    sched = LRSchedule(LRScheduleConfig(name="plateau", factor=0.1, patience=1), opt, total_steps=10)
    monitor, best, lrs = Monitor("auc"), None, []
    for auc in [0.70, 0.72, 0.71, 0.715, 0.73, 0.72, 0.71]:
        improved = monitor.improved(auc, best)
        best = auc if improved else best
        sched.after_validation(improved)
        lrs.append(opt.param_groups[0]["lr"])
    # two validations without improvement (0.71, 0.715) reduce once; 0.73 improves; two more reduce again
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])


def test_cosine_warms_up_then_decays_to_min_scale() -> None:
    opt = _optimizer(1.0)
    sched = LRSchedule(LRScheduleConfig(name="cosine", warmup_steps=4, min_scale=0.0), opt, total_steps=12)
    sched.start(0)
    lrs = [opt.param_groups[0]["lr"]]
    for step in range(1, 13):
        sched.after_step(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_monitor_directions() -> None:
    assert Monitor("logloss").improved(0.4, 0.5) and not Monitor("logloss").improved(0.6, 0.5)
    assert Monitor("gauc").improved(0.6, 0.5)
    assert Monitor("auc").epochs_since_best([{"valid_auc": a} for a in (0.6, 0.7, 0.65, 0.69)]) == 2
    with pytest.raises(ValueError, match="monitor"):
        Monitor("accuracy")


# --------------------------------------------------------------------------- in the trainer


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protocol")
    generate(SyntheticConfig(num_users=100, num_items=50, rows={"train": 512, "valid": 256, "test": 256}, seed=1), out)
    return out


def _trainer(data: Path, out: Path, *overrides: str):
    from interformer_rec.train.trainer import Trainer

    cfg = load_config(
        ROOT / "configs" / "synthetic.yaml",
        [
            f"data.train={data}/train.parquet", f"data.valid={data}/valid.parquet", f"data.test={data}/test.parquet",
            f"train.out_dir={out}", "train.progress=false", "train.batch_size=64", "train.max_steps_per_epoch=2",
            "model.embedding_dim=8", "model.interformer.interaction_mlp=[16]", "model.interformer.over_arch=[16]",
            *overrides,
        ],
    )
    return Trainer(cfg)


def _planted(trainer, curve: List[float]) -> Dict[str, List[float]]:
    """Make the trainer's validation return ``curve`` (one AUC per epoch); record the
    learning rate of every optimizer group seen at each validation."""
    real = trainer.evaluate
    seen: Dict[str, List[float]] = {"lr": [], "test_epoch": []}

    def evaluate(split: str) -> Dict[str, float]:
        metrics = real(split)
        if split == "valid":
            seen["lr"].append(trainer.optimizer.param_groups[-1]["lr"])  # the dense optimizer's
            metrics["auc"] = curve[len(seen["lr"]) - 1]
        return metrics

    trainer.evaluate = evaluate
    return seen


def test_early_stopping_and_plateau_act_at_the_right_epochs(tiny_data: Path, tmp_path: Path) -> None:
    trainer = _trainer(
        tiny_data, tmp_path / "run", "train.epochs=10", "train.early_stopping_patience=2",
        "train.lr_schedule={name: plateau, factor: 0.1, patience: 0}",
        "train.dense_optimizer={name: adam, lr: 0.002}", "train.embedding_optimizer={name: adagrad, lr: 0.04}",
    )
    seen = _planted(trainer, [0.60, 0.65, 0.64, 0.66, 0.655, 0.65, 0.70, 0.71])
    result = trainer.fit()
    # best 0.66 at epoch 3; epochs 4 and 5 do not improve: stop after epoch 5
    assert result["epochs_trained"] == 6 and result["stopped_early"] and result["best_epoch"] == 3
    # plateau with patience 0 cuts the rate after each validation without improvement
    assert [h["lr_scale"] for h in result["history"]] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01])
    assert seen["lr"] == pytest.approx([0.002, 0.002, 0.002, 0.0002, 0.0002, 0.00002])
    # the fused embedding optimizer's group follows too (TBE reads it at each step)
    fused = trainer.dmp.fused_optimizer.param_groups
    assert fused and all(g["lr"] == pytest.approx(0.04 * 0.001) for g in fused)
    # the test split is scored with the best epoch's checkpoint
    from interformer_rec.train import checkpoint

    assert checkpoint.resolve(tmp_path / "run" / "checkpoints", "best").name == "epoch_0003"
    assert result["test"]["auc"] == pytest.approx(trainer.evaluate_checkpoint(
        checkpoint.resolve(tmp_path / "run" / "checkpoints", "best"), "test")["auc"])


def test_resume_keeps_the_schedule_and_the_stopping_count(tiny_data: Path, tmp_path: Path) -> None:
    over = ("train.early_stopping_patience=2", "train.lr_schedule={name: plateau, patience: 0}")
    first = _trainer(tiny_data, tmp_path / "run", "train.epochs=3", *over)
    _planted(first, [0.60, 0.59, 0.70])
    first.fit()
    second = _trainer(tiny_data, tmp_path / "run", "train.epochs=10", "train.resume=true", *over)
    _planted(second, [0.69, 0.68, 0.9])  # epochs 3, 4: no improvement on 0.70
    result = second.fit()
    assert result["epochs_trained"] == 5 and result["best_epoch"] == 2
    # (each epoch's rate: the cut after epoch 1 and after epoch 3 survive the restart)
    assert [h["lr_scale"] for h in result["history"]] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_bad_patience_is_a_config_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="early_stopping_patience"):
        _trainer(tiny_data, tmp_path / "run", "train.early_stopping_patience=0")


# --------------------------------------------------------------------------- regularizer


def _tables(trainer) -> Dict[str, torch.Tensor]:
    """Each table's full weights (one rank: a sharded table is in its one shard)."""
    from interformer_rec.train.tables import table_weights

    return {
        t: (w.local_shards()[0].tensor if hasattr(w, "local_shards") else w).detach().clone()
        for t, _, w in table_weights(trainer.dmp)
    }


def test_embedding_regularizer_moves_only_looked_up_rows_by_its_gradient(tiny_data: Path, tmp_path: Path) -> None:
    """One SGD step with and without ``λ``: the tables differ by exactly
    ``lr · 2λ/B · Σ_{occurrences} e_row`` on the rows the batch looked up, and not at all
    elsewhere; this holds for fused (sharded) and dense (data-parallel) tables alike."""
    from interformer_rec.train.dist import plan_summary

    lam, lr, batch = 0.5, 0.2, 64
    common = (
        "train.epochs=1", "train.max_steps_per_epoch=1", f"train.embedding_optimizer={{name: sgd, lr: {lr}}}",
        "train.dense_optimizer={name: sgd, lr: 0.01}", "model.interformer.dropout=0.0",
        # both kinds of kernel, pinned (one rank plans no data-parallel table unasked, and
        # table-wise and table-column-wise tie there)
        "dist.tables={segment: {sharding_types: [data_parallel]}, user: {sharding_types: [table_wise]}}",
    )
    after = {}
    for name, reg in (("plain", 0.0), ("reg", lam)):
        trainer = _trainer(tiny_data, tmp_path / name, *common, f"train.embedding_regularizer={reg}")
        plan = {k: v["sharding_type"] for k, v in plan_summary(trainer.plan).items()}
        init = _tables(trainer)
        reader = trainer.reader("train", train=True)
        reader.set_epoch(0)
        first = next(iter(reader))
        trainer.train_epoch(0)
        after[name] = _tables(trainer)
    assert {"table_wise", "data_parallel"} <= set(plan.values()), plan  # both kinds of kernel covered
    schema = trainer.cfg.data.schema
    # gradient of Σ||e||² per row: 2·e for an unpooled lookup, 2·(the bag's sum) for each
    # id of a pooled (SUM) bag
    grad = {t: torch.zeros_like(w) for t, w in init.items()}
    hits = {t: torch.zeros(w.shape[0], dtype=torch.bool) for t, w in init.items()}
    kjts = {**first.sparse.to_dict(), **first.sequence.to_dict()}
    pooled = {f.name for f in schema.pooled_features}
    for f in [*schema.sparse, *schema.sequence]:
        jt, w0 = kjts[f.name], init[f.table]
        ids = jt.values()
        hits[f.table][ids] = True
        if f.name in pooled:
            bag = torch.repeat_interleave(torch.arange(jt.lengths().numel()), jt.lengths())
            sums = torch.zeros(jt.lengths().numel(), w0.shape[1]).index_add_(0, bag, w0[ids])
            grad[f.table].index_add_(0, ids, 2 * sums[bag])
        else:
            grad[f.table].index_add_(0, ids, 2 * w0[ids])
    for table, w0 in init.items():
        got = after["plain"][table] - after["reg"][table]
        torch.testing.assert_close(got, lr * lam / batch * grad[table], rtol=1e-4, atol=1e-7, msg=table)
        untouched = ~hits[table]
        assert got.abs().sum() > 0, table
        assert torch.equal(after["reg"][table][untouched], w0[untouched]), table


def test_dlrm_over_arch_dropout_acts_in_training_only() -> None:
    from interformer_rec.models import build_model

    cfg = load_config(ROOT / "configs" / "synthetic_dlrm_dcn.yaml")
    plain = build_model(cfg.data.schema, cfg.model).dlrm.over_arch
    cfg.model.dlrm.dropout = 0.5
    dropped = build_model(cfg.data.schema, cfg.model).dlrm.over_arch
    hidden = plain.model[0]._mlp
    assert [type(m).__name__ for m in dropped.model] == ["Perceptron", "Dropout"] * len(hidden) + ["Linear"]
    for i, perceptron in enumerate(hidden):  # the same weights, layer by layer
        dropped.model[2 * i].load_state_dict(perceptron.state_dict())
    dropped.model[-1].load_state_dict(plain.model[1].state_dict())
    x = torch.randn(8, hidden[0]._linear.in_features)
    dropped.eval()
    torch.testing.assert_close(dropped(x), plain(x))
    dropped.train()
    assert not torch.allclose(dropped(x), plain(x))
