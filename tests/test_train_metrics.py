"""Training-time metrics (train.train_metrics): TorchRec's RecMetricModule, updated every
step, its windowed AUC / NE / calibration and throughput logged to TensorBoard every
``train.log_every`` steps (the 2-rank case is in tests/test_distributed.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from interformer_rec.config import SyntheticConfig, load_config
from interformer_rec.data.synthetic import generate
from interformer_rec.ops.metrics import auc
from interformer_rec.train import train_metrics
from interformer_rec.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TASK = "click"


def scalars(run_dir: Path) -> Dict[str, Dict[int, float]]:
    """``{tag: {step: value}}`` of the TensorBoard event file under ``run_dir``."""
    (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events)).Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_model_out_and_tags() -> None:
    logits, labels = torch.tensor([[0.0, 2.0], [1.0, -1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = train_metrics.model_out(["a", "b"], logits, labels)
    assert torch.equal(out["b/prediction"], torch.sigmoid(logits[:, 1])) and torch.equal(out["b/label"], labels[:, 1])
    assert torch.equal(out["a/weight"], torch.ones(2))
    assert train_metrics.scalars({"auc-a|window_auc": torch.tensor(0.75)}) == {"train_metrics/auc-a/window_auc": 0.75}


def test_training_logs_windowed_metrics_to_tensorboard(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(SyntheticConfig(num_users=100, num_items=80, rows={"train": 1024, "valid": 256}, seed=1), data)
    cfg = load_config(
        ROOT / "configs" / "synthetic.yaml",
        [
            f"data.train={data / 'train.parquet'}", f"data.valid={data / 'valid.parquet'}", "data.test=null",
            f"train.out_dir={tmp_path / 'run'}", "train.progress=false", "train.epochs=1",
            "train.batch_size=64", "train.max_steps_per_epoch=8", "train.log_every=2",
            "model.embedding_dim=8", "model.interformer.num_layers=1",
        ],
    )
    trainer = Trainer(cfg)
    seen: List[Dict[str, torch.Tensor]] = []  # every update (k steps' rows), to recompute the window
    k = train_metrics.steps_per_update(2)
    update = trainer.train_metrics.update
    trainer.train_metrics.update = lambda out: (seen.append({k: v.clone() for k, v in out.items()}), update(out))[1]
    trainer.fit()

    logged = scalars(tmp_path / "run")
    for metric in ("auc", "ne", "calibration"):
        assert set(logged[f"train_metrics/{metric}-{TASK}/window_{metric}"]) == {2, 4, 6, 8}, metric
    assert set(logged["train_metrics/throughput-throughput/window_throughput"]) == {4, 6, 8}  # after 2 warm-up steps
    assert set(logged["train/loss"]) >= {2, 4, 6, 8}
    # the window is the last log_every steps' rows (of every rank)
    assert k == 2 and len(seen) == 8 // k and all(len(u[f"{TASK}/label"]) == 64 * k for u in seen)
    for step in (2, 4, 6, 8):
        window = seen[(step - 2) // k : step // k]
        labels = torch.cat([s[f"{TASK}/label"] for s in window])
        probs = torch.cat([s[f"{TASK}/prediction"] for s in window])
        assert logged[f"train_metrics/auc-{TASK}/window_auc"][step] == pytest.approx(auc(labels, probs), abs=1e-6), step
    # and the progress bar shows the first task's windowed AUC and NE
    postfix: Dict[str, str] = {}
    trainer.writer = None  # closed by fit()
    trainer._log_step(torch.tensor(0.5), postfix)
    last = {m: logged[f"train_metrics/{m}-{TASK}/window_{m}"][8] for m in ("auc", "ne")}
    assert postfix == {m: f"{v:.4f}" for m, v in last.items()}  # the window of step 8, unchanged
