"""The training loop: DMP-sharded model, TrainPipelineSparseDist, per-epoch validation,
best-epoch checkpoint, final test evaluation, metrics as JSON and TensorBoard logs."""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from interformer_rec.config import Config
from interformer_rec.data.batch import Batch
from interformer_rec.data.reader import ParquetBatchReader, oracle_auc
from interformer_rec.models import build_model, num_parameters
from interformer_rec.train import checkpoint
from interformer_rec.train.dist import DistEnv, embedding_modules, init_distributed, shard
from interformer_rec.train.metrics import compute_metrics, gather_predictions

logger = logging.getLogger(__name__)

ModelOutput = Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class RankingTrain(nn.Module):
    """Wraps a ranking model for training, as ``torchrec.models.dlrm.DLRMTrain`` does:
    ``forward(batch) -> (loss, (loss, logits, labels, groups))``, all detached but the
    first. The loss is the mean binary cross-entropy over rows and tasks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> ModelOutput:
        logits = self.model(batch.dense, batch.sparse, batch.sequence)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels, batch.groups)


class Trainer:
    """Builds everything from a :class:`Config` and runs ``fit()``."""

    def __init__(self, cfg: Config, env: Optional[DistEnv] = None) -> None:
        self.cfg = cfg
        self.env = env or init_distributed(cfg.dist)
        tc = cfg.train
        torch.manual_seed(tc.seed)
        schema = cfg.data.schema
        self.out_dir = Path(tc.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        model = build_model(schema, cfg.model, embedding_device=torch.device("meta"))
        self.num_params = num_parameters(model)
        self.dense_params = self.num_params - sum(
            p.numel() for m in embedding_modules(model) for p in m.parameters()
        )
        self.model = RankingTrain(model)
        self.dmp, self.optimizer, self.plan = shard(
            self.model,
            cfg.dist,
            self.env,
            tc.batch_size,
            tc.embedding_optimizer,
            tc.dense_optimizer,
        )
        self.pipeline = TrainPipelineSparseDist(
            self.dmp, self.optimizer, self.env.device, pipeline_postproc=True
        )
        self.writer = None
        if self.env.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (self.out_dir / "plan.txt").write_text(str(self.plan))
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    # ------------------------------------------------------------------ data

    def reader(self, split: str, train: bool) -> ParquetBatchReader:
        d = self.cfg.data
        path = getattr(d, split)
        tc = self.cfg.train
        return ParquetBatchReader(
            path,
            d.schema,
            tc.batch_size if train else tc.eval_batch_size,
            shuffle=train and d.shuffle_row_groups,
            seed=tc.seed,
            drop_last=train,
            rank=self.env.rank,
            world_size=self.env.world_size,
        )

    def _progress(self, it: Iterator[Batch], total: int, desc: str) -> Iterator[Any]:
        """Run the pipeline over ``it``, yielding each step's output."""
        bar = tqdm(
            total=total,
            desc=desc,
            disable=not (self.env.is_main and self.cfg.train.progress),
            leave=False,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        with bar:
            while True:
                try:
                    out = self.pipeline.progress(it)
                except StopIteration:
                    return
                bar.update(1)
                if bar.n % 10 == 0:
                    bar.set_postfix(loss=f"{out[0].item():.4f}")
                yield out

    # ------------------------------------------------------------------ loops

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        self.dmp.train()
        reader = self.reader("train", train=True)
        reader.set_epoch(epoch)
        steps = len(reader)
        it: Iterator[Batch] = iter(reader)
        if self.cfg.train.max_steps_per_epoch:
            steps = min(steps, self.cfg.train.max_steps_per_epoch)
            it = itertools.islice(it, steps)
        start, n_rows, loss_sum, n = time.perf_counter(), 0, 0.0, 0
        for out in self._progress(it, steps, f"epoch {epoch}"):
            loss, _, labels, _ = out
            n_rows += labels.size(0)
            loss_sum += loss.item()
            n += 1
            self.global_step += 1
            if self.writer and self.global_step % self.cfg.train.log_every == 0:
                self.writer.add_scalar("train/loss", loss.item(), self.global_step)
        secs = time.perf_counter() - start
        return {
            "train_loss": loss_sum / max(n, 1),
            "train_seconds": secs,
            "train_samples_per_s": n_rows * self.env.world_size / secs,
            "steps": n,
        }

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        """Metrics of ``split`` over the union of every rank's rows."""
        self.dmp.eval()
        reader = self.reader(split, train=False)
        logits, labels, groups = [], [], []
        for _, lg, lb, gr in self._progress(iter(reader), len(reader), split):
            logits.append(lg)
            labels.append(lb)
            groups.append(gr)
        self.dmp.train()
        lg, lb, gr = gather_predictions(torch.cat(logits), torch.cat(labels), torch.cat(groups))
        return compute_metrics(lg, lb, gr)

    def fit(self) -> Dict[str, Any]:
        tc = self.cfg.train
        self.global_step = 0
        history = []
        best: Optional[Dict[str, Any]] = None
        start = time.perf_counter()
        for epoch in range(tc.epochs):
            stats = self.train_epoch(epoch)
            valid = self.evaluate("valid")
            row = {"epoch": epoch, **stats, **{f"valid_{k}": v for k, v in valid.items()}}
            history.append(row)
            self._log(epoch, row)
            improved = best is None or valid["auc"] > best["valid_auc"]
            if improved:
                best = row
            checkpoint.save_checkpoint(
                self.ckpt_dir,
                f"epoch_{epoch:04d}",
                self.dmp,
                self.optimizer,
                meta={"epoch": epoch, "global_step": self.global_step, "valid": valid, "config": self.cfg.to_dict()},
                pointers=("latest", "best") if improved else ("latest",),
            )
        train_seconds = time.perf_counter() - start
        assert best is not None
        result: Dict[str, Any] = {
            "model": self.cfg.model.name,
            "interaction": self.cfg.model.interformer.interaction,
            "num_parameters": self.num_params,
            "dense_parameters": self.dense_params,
            "world_size": self.env.world_size,
            "train_seconds": train_seconds,
            "best_epoch": best["epoch"],
            "history": history,
            "valid": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
        }
        if self.cfg.data.test:
            best_ckpt = checkpoint.resolve(self.ckpt_dir, "best")
            checkpoint.load_checkpoint(best_ckpt, self.dmp)
            result["test"] = self.evaluate("test")
        schema = self.cfg.data.schema
        if schema.oracle:
            split = "test" if self.cfg.data.test else "valid"
            result["oracle_auc"] = oracle_auc(getattr(self.cfg.data, split), schema)
        if self.env.is_main:
            (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
            if self.writer:
                for k, v in result.get("test", {}).items():
                    if isinstance(v, float):
                        self.writer.add_scalar(f"test/{k}", v, self.global_step)
                self.writer.close()
        return result

    def _log(self, epoch: int, row: Dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        assert self.writer is not None
        for k, v in row.items():
            if isinstance(v, float):
                self.writer.add_scalar(k.replace("_", "/", 1), v, epoch)
        print(
            f"epoch {epoch}: train_loss {row['train_loss']:.4f} "
            f"({row['train_samples_per_s']:.0f} samples/s) | valid auc {row['valid_auc']:.4f} "
            f"gauc {row['valid_gauc']:.4f} logloss {row['valid_logloss']:.4f} ne {row['valid_ne']:.4f}",
            flush=True,
        )


def format_summary(result: Dict[str, Any]) -> str:
    """A readable end-of-run summary."""
    lines = [
        f"model: {result['model']}"
        + (f" ({result['interaction']})" if result["model"] == "interformer" else ""),
        f"parameters: {result['num_parameters']:,} ({result['dense_parameters']:,} dense)",
        f"train time: {result['train_seconds']:.1f}s on {result['world_size']} rank(s); best epoch {result['best_epoch']}",
        f"{'split':<8}{'AUC':>8}{'gAUC':>8}{'logloss':>9}{'NE':>8}{'rows':>9}",
    ]
    for split in ("valid", "test"):
        m = result.get(split)
        if m:
            lines.append(
                f"{split:<8}{m['auc']:>8.4f}{m['gauc']:>8.4f}{m['logloss']:>9.4f}{m['ne']:>8.4f}{m['rows']:>9,}"
            )
    if "oracle_auc" in result:
        lines.append(f"oracle AUC (true click probability): {result['oracle_auc']:.4f}")
    return "\n".join(lines)
