"""Device-agnostic training: ``train.device``, bf16 autocast of the dense arches
(``train.precision``), ``torch.compile`` of the dense arches (``train.compile``) and the
RNG states a checkpoint carries. Run on CPU; the CUDA branches are chosen by the same
code on the device the process group gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interformer_rec.config import ConfigError, SyntheticConfig, load_config
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.synthetic import generate
from interformer_rec.models import build_model, compile_dense
from interformer_rec.train import checkpoint
from interformer_rec.train.dist import pick_device
from interformer_rec.train.ranking import RankingTrain
from interformer_rec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(num_users=300, num_items=200, num_categories=10,
                             rows={"train": 16000, "valid": 3000, "test": 3000}, seed=3), out)
    return out


def _config(data: Path, out: Path, *overrides: str):
    return load_config(ROOT / "configs/synthetic.yaml", [
        *(f"data.{s}={data / (s + '.parquet')}" for s in ("train", "valid", "test")),
        f"train.out_dir={out}", "train.progress=false", "model.embedding_dim=8",
        "model.interformer.num_layers=1", "model.interformer.interaction_mlp=[32]", "model.interformer.over_arch=[32]",
        *overrides,
    ])


def test_device_choice():
    assert pick_device("cpu", 0) == torch.device("cpu")
    assert pick_device("auto", 0).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda: .* sees no CUDA device"):
            pick_device("cuda", 0)
    with pytest.raises(ConfigError, match="train.device='tpu'"):
        pick_device("tpu", 0)
    with pytest.raises(ConfigError, match="train.device"):
        load_config(ROOT / "configs/synthetic.yaml", ["train.device=gpu"])


def test_bf16_autocasts_the_dense_arches_only(data, tmp_path):
    """Under ``precision: bf16`` the arch's matmuls output bfloat16 while the lookups,
    the logits handed to the loss and every parameter stay float32."""
    cfg = _config(data, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg.data.schema, cfg.model)
    batch = next(iter(ParquetBatchReader(cfg.data.train, cfg.data.schema, 64)))
    seen = {}
    model.arch.over_arch.register_forward_hook(lambda m, i, o: seen.__setitem__("over_arch", o.dtype))
    model.ec.register_forward_hook(lambda m, i, o: seen.__setitem__("lookup", next(iter(o.values())).values().dtype))
    fp32_loss, (_, fp32_logits, _, _) = RankingTrain(model)(batch)
    loss, (_, logits, _, _) = RankingTrain(model, precision="bf16")(batch)
    assert seen == {"over_arch": torch.bfloat16, "lookup": torch.float32}
    assert logits.dtype == loss.dtype == torch.float32
    assert (logits - fp32_logits).abs().max() < 0.05  # bf16 rounding, not another model
    loss.backward()
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32) for p in model.parameters())
    with pytest.raises(ConfigError, match="train.precision='fp16'"):
        RankingTrain(model, precision="fp16")


def test_bf16_training_learns_with_float32_tables_and_optimizer_state(data, tmp_path):
    trainer = Trainer(_config(data, tmp_path, "train.precision=bf16", "train.epochs=2", "train.max_steps_per_epoch=10",
                              "train.dense_optimizer.lr=0.005"))
    result = trainer.fit()
    assert result["test"]["auc"] > 0.58, result["test"]  # the fp32 run's bound (tests/test_train.py)
    state = trainer.optimizer.state_dict()["state"]
    dtypes = {v.dtype for s in state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    assert dtypes == {torch.float32}, dtypes
    assert {p.dtype for p in trainer.dmp.parameters()} == {torch.float32}


def test_compiled_dense_arches_train_as_eager(data, tmp_path):
    """``train.compile``: the dense arches are compiled in place (state-dict keys kept),
    and three training steps through DMP and the train pipeline give eager's losses
    (DLRM_DCN, whose compile takes seconds on CPU; InterFormer's takes minutes cold, and
    passes the same check: docs/gpu.md)."""
    cfg = _config(data, tmp_path)
    model = build_model(cfg.data.schema, cfg.model)
    keys = list(model.state_dict())
    assert compile_dense(model) == ["target_attention", "dense_tokens", "arch"]  # not ebc / ec: DMP shards those
    assert list(model.state_dict()) == keys

    losses = {}
    for flag in ("false", "true"):
        t = Trainer(_config(data, tmp_path / flag, "model.name=dlrm_dcn", f"train.compile={flag}", "train.epochs=1",
                            "train.max_steps_per_epoch=3"))
        t.train_epoch(0)
        losses[flag] = t.step_losses[0]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-4), losses


def test_rng_states_round_trip_and_read_the_cpu_only_format():
    state = checkpoint.rng_state(torch.device("cpu"))
    assert set(state) == {"cpu"}  # a CUDA device adds its generator's state as "cuda"
    first = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    checkpoint.set_rng_state(state["cpu"])  # checkpoints written before the CUDA state was saved
    assert torch.equal(torch.rand(3), first)
