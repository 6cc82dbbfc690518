"""The training loop: DMP-sharded model, TrainPipelineSparseDist, per-epoch validation,
best-epoch checkpoint, final test evaluation, metrics as JSON and TensorBoard logs;
TorchRec's windowed training metrics (train.train_metrics) every ``train.log_every`` steps.

The protocol is BARS's (train.protocol): the best epoch is the one with the best
``train.monitor`` on validation; the learning rate follows ``train.lr_schedule``
(reduce-on-plateau after a validation, or cosine with warm-up per step); training stops
early after ``train.early_stopping_patience`` validations without improvement, and the
test split is always scored with the best epoch's checkpoint; ``train.embedding_regularizer``
adds FuxiCTR's L2 on the looked-up embeddings to the loss.

Batches: ``train.batch_size`` rows per rank, so one step trains on a global batch of
``batch_size * world_size`` rows (see ``ParquetBatchReader``); 1 rank with batch ``2B``
and 2 ranks with batch ``B`` take the same steps on the same rows and, up to float
rounding, compute the same model (tests/test_distributed.py).

Resuming (``train.resume``): the latest complete checkpoint restores the model, the
optimizers, the epoch, the number of global batches already trained in it (the reader
skips them), the per-rank RNG states, the step losses and the history so far. A job may
resume on another world size: the position is kept in rows, so the new global batch
should divide the rows already trained in the epoch (else the remainder is re-trained,
with a warning).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import yaml
from torch import Tensor
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardedModule
from tqdm import tqdm

from interformer_rec.config import Config, ConfigError
from interformer_rec.data.batch import Batch
from interformer_rec.data.reader import ParquetBatchReader, oracle_auc
from interformer_rec.data.sources import filesystem, is_uri
from interformer_rec.models import build_model, compile_dense, num_parameters
from interformer_rec.train import checkpoint, train_metrics
from interformer_rec.train.dist import (
    DistEnv,
    embedding_modules,
    init_distributed,
    plan_summary,
    shard,
    table_knobs,
    table_knobs_text,
)
from interformer_rec.train.metrics import compute_metrics, gather_predictions
from interformer_rec.train.preflight import check_same_config, check_splits
from interformer_rec.train.protocol import EmbeddingRegularizer, LRSchedule, Monitor
from interformer_rec.train.ranking import RankingTrain
from interformer_rec.train.tables import pretrained_tables

logger = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (a row drove the model to non-finite
    values): training stops before any checkpoint of the model is written."""

class Trainer:
    """Builds everything from a :class:`Config` and runs ``fit()``.

    Args:
        cfg: the whole config.
        env: the process group's view (default: :func:`init_distributed`).
        write_outputs: rank 0 writes config.yaml, plan.txt and TensorBoard logs under
            ``train.out_dir`` (off for evaluation-only use).
    """

    def __init__(self, cfg: Config, env: Optional[DistEnv] = None, write_outputs: bool = True) -> None:
        self.cfg = cfg
        remote = is_uri(cfg.train.out_dir)
        if not remote and Path(cfg.train.out_dir).exists() and not Path(cfg.train.out_dir).is_dir():
            raise ConfigError(f"train.out_dir={cfg.train.out_dir!r}: exists and is not a directory")
        self.env = env or init_distributed(cfg.dist, cfg.train.device)
        tc = cfg.train
        steps = check_splits(cfg, lambda split: len(self.reader(split, train=split == "train")), self.global_batch)
        torch.manual_seed(tc.seed)  # same dense initial weights on every rank and world size
        schema = cfg.data.schema
        # an object store (train.out_dir: s3://...): checkpoints go there directly; the
        # run's other files are written to a local folder and copied there (sync_outputs)
        self.remote_out: Optional[str] = tc.out_dir.rstrip("/") if remote else None
        self.out_dir = Path(tempfile.mkdtemp(prefix="interformer_rec_run_")) if remote else Path(tc.out_dir)
        self.ckpt_dir: checkpoint.Location = f"{self.remote_out}/checkpoints" if remote else self.out_dir / "checkpoints"
        model = build_model(schema, cfg.model, embedding_device=torch.device("meta"))
        self.num_params = num_parameters(model)
        self.dense_params = self.num_params - sum(
            p.numel() for m in embedding_modules(model) for p in m.parameters()
        )
        if tc.compile:
            compile_dense(model)
        labels = schema.labels
        unknown = sorted(set(tc.task_weights) - set(labels))
        if unknown:
            raise ConfigError(f"train.task_weights: {unknown} are not labels of the schema ({labels})")
        weights = [float(tc.task_weights.get(t, 1.0)) for t in labels] if tc.task_weights else None
        self.model = RankingTrain(model, tc.embedding_regularizer, tc.precision, self.env.device.type, weights)
        knobs = table_knobs(model, cfg.dist, schema)  # read before DMP replaces the tables
        self.dmp, self.optimizer, self.plan = shard(
            self.model,
            cfg.dist,
            self.env,
            tc.batch_size,
            tc.embedding_optimizer,
            tc.dense_optimizer,
            init_seed=tc.seed,
            pretrained=pretrained_tables(cfg.data.schema.tables, cfg.model.embedding_dim),
            schema=schema,
        )
        if tc.embedding_regularizer:
            self.model.regularizer = EmbeddingRegularizer(
                [m for m in self.dmp.modules() if isinstance(m, ShardedModule)]
            )
        self.monitor = Monitor(tc.monitor)
        if tc.max_steps_per_epoch:
            steps = min(steps, tc.max_steps_per_epoch)
        self.schedule = LRSchedule(tc.lr_schedule, self.optimizer, steps * tc.epochs)
        # decorrelate per-rank randomness (dropout) once the shared initialisation is done
        torch.manual_seed(tc.seed * 7919 + 1 + self.env.rank)
        self.pipeline = TrainPipelineSparseDist(
            self.dmp, self.optimizer, self.env.device, pipeline_postproc=True
        )
        self.plan_text = (
            f"sharding plan ({self.env.world_size} rank(s), {self.env.backend}):\n{self.plan}\n"
            + table_knobs_text(knobs, self.plan)
        )
        self.global_step = 0
        self.epoch = 0  # the epoch being trained
        self.step_in_epoch = 0  # global batches of self.epoch already trained
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self.step_losses: List[List[float]] = []  # per epoch, the mean loss over ranks of each step
        self._epoch_stats: Dict[str, float] = {}
        # this rank's per-step losses, kept on the device: no host sync per step
        self._local_losses: List[Tensor] = []
        self.train_metrics = train_metrics.metric_module(
            schema.labels, tc.batch_size, self.env.world_size, self.env.rank, self.env.device, tc.log_every
        )
        self._metric_steps = train_metrics.StepBuffer(
            self.train_metrics, schema.labels, train_metrics.steps_per_update(tc.log_every)
        )
        self.writer = None
        if self.env.is_main:
            print(self.plan_text, flush=True)
        if self.env.is_main and write_outputs:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (self.out_dir / "plan.txt").write_text(self.plan_text + "\n")
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            self.sync_outputs()

    def sync_outputs(self) -> None:
        """With ``train.out_dir`` on an object store, copy the run's local files there
        (rank 0; the checkpoints are written there directly)."""
        if self.remote_out is None or not self.env.is_main:
            return
        if self.writer:
            self.writer.flush()
        fs, inner, _ = filesystem(self.remote_out)
        pafs.copy_files(str(self.out_dir), inner, destination_filesystem=fs)

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.env.world_size

    # ------------------------------------------------------------------ data

    def batches(self, reader: ParquetBatchReader) -> Iterator[Batch]:
        """``reader``'s batches, decoded by ``data.num_workers`` DataLoader workers."""
        d = self.cfg.data
        if not d.num_workers:
            return iter(reader)
        return iter(reader.loader(d.num_workers, prefetch_factor=d.prefetch_factor))

    def reader(self, split: str, train: bool, start_batch: int = 0) -> ParquetBatchReader:
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
            start_batch=start_batch,
            length_buckets=d.length_buckets,
            group=self.env.data_group,
            filters=d.filters.get(split),
        )

    def _progress(
        self, it: Iterator[Batch], total: int, desc: str, postfix: Optional[Dict[str, str]] = None
    ) -> Iterator[Any]:
        """Run the pipeline over ``it``, yielding each step's output; the bar shows the
        loss and ``postfix`` (which the caller may update between steps). On CUDA the
        batches are pinned, so the pipeline's ``non_blocking`` copies overlap compute."""
        if self.env.device.type == "cuda":
            it = (b.pin_memory() for b in it)
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
                    bar.set_postfix(loss=f"{out[0].item():.4f}", **(postfix or {}), refresh=False)
                yield out

    # ------------------------------------------------------------------ checkpoints

    def _epoch_losses(self) -> List[float]:
        """Mean-over-ranks loss of each step of this epoch so far (collective)."""
        done = self._epoch_stats.get("restored_losses", [])
        return list(done) + train_metrics.mean_over_ranks(self._local_losses, self.env.device)

    def _train_state(self, epoch_done: bool) -> Dict[str, Any]:
        """The training position, for meta.json (collective: gathers RNG states)."""
        mine = checkpoint.rng_state(self.env.device)
        rngs: List[Any] = [None] * self.env.world_size
        if self.env.world_size > 1:
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        stats = {k: v for k, v in self._epoch_stats.items() if k != "restored_losses"}
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_done": epoch_done,
            "global_step": self.global_step,
            "world_size": self.env.world_size,
            "batch_size": self.cfg.train.batch_size,
            "global_batch": self.global_batch,
            "epoch_losses": self._epoch_losses(),
            "epoch_stats": stats,
            "step_losses": self.step_losses,
            "history": self.history,
            "best": self.best,
            "lr_schedule": self.schedule.state_dict(),
            "rng_states": rngs,
        }

    def save(self, name: str, epoch_done: bool, pointers: Tuple[str, ...], extra: Optional[Dict[str, Any]] = None) -> Path:
        """Checkpoint the model, the optimizers and the training position (collective)."""
        meta = {
            **self._train_state(epoch_done),
            "plan": plan_summary(self.plan),
            "config": self.cfg.to_dict(),
            **(extra or {}),
        }
        return checkpoint.save_checkpoint(
            self.ckpt_dir,
            name,
            self.dmp,
            self.optimizer,
            meta=meta,
            pointers=pointers,
            files={"plan.txt": self.plan_text + "\n"},
        )

    def resume(self, ckpt: Optional[Path] = None) -> Optional[Path]:
        """Restore the training state from ``ckpt`` (default: the latest complete
        checkpoint under ``train.out_dir``). Returns the checkpoint used, or ``None``
        (fresh start) if there is none."""
        ckpt = ckpt or checkpoint.latest_complete(self.ckpt_dir)
        if ckpt is None:
            if self.env.is_main:
                print(f"resume: no checkpoint under {self.ckpt_dir}; starting from scratch", flush=True)
            return None
        check_same_config(checkpoint.read_meta(ckpt).get("config"), self.cfg, str(ckpt))
        meta = checkpoint.load_checkpoint(ckpt, self.dmp, self.optimizer)
        self.global_step = meta["global_step"]
        self.history = meta.get("history", [])
        self.best = meta.get("best")
        self.step_losses = meta.get("step_losses", [])
        if "lr_schedule" in meta:
            self.schedule.load_state_dict(meta["lr_schedule"])
        rngs = meta.get("rng_states") or []
        if len(rngs) == self.env.world_size:
            checkpoint.set_rng_state(rngs[self.env.rank], self.env.device)
        if meta.get("epoch_done"):
            self.epoch, self.step_in_epoch = meta["epoch"] + 1, 0
            self._epoch_stats = {}
        else:
            self.epoch = meta["epoch"]
            rows = meta["step_in_epoch"] * meta["global_batch"]
            self.step_in_epoch, rest = divmod(rows, self.global_batch)
            if rest and self.env.is_main:
                logger.warning(
                    "resume: %d rows of epoch %d were trained with a global batch of %d; "
                    "the new global batch %d does not divide them, so %d rows are trained again",
                    rows, self.epoch, meta["global_batch"], self.global_batch, rest,
                )
            self._epoch_stats = dict(meta.get("epoch_stats", {}))
            self._epoch_stats["restored_losses"] = meta.get("epoch_losses", [])  # type: ignore[assignment]
        if self.env.is_main:
            print(
                f"resumed from {ckpt}: epoch {self.epoch}, {self.step_in_epoch} batches done in it, "
                f"global step {self.global_step} (written by {meta.get('world_size')} rank(s))",
                flush=True,
            )
        return ckpt

    # ------------------------------------------------------------------ loops

    def train_epoch(self, epoch: int, on_step: Optional[Callable[["Trainer"], None]] = None) -> Dict[str, float]:
        """Train the rest of ``epoch`` (from ``self.step_in_epoch``)."""
        tc = self.cfg.train
        self.dmp.train()
        self.epoch = epoch
        total = len(self.reader("train", train=True))
        if tc.max_steps_per_epoch:
            total = min(total, tc.max_steps_per_epoch)
        reader = self.reader("train", train=True, start_batch=min(self.step_in_epoch, total))
        reader.set_epoch(epoch)
        steps = max(total - self.step_in_epoch, 0)
        it: Iterator[Batch] = itertools.islice(self.batches(reader), steps)
        stats = self._epoch_stats
        stats.setdefault("rows", 0)
        stats.setdefault("seconds", 0.0)
        self._local_losses = []
        start = time.perf_counter()
        every = tc.checkpoint_every_steps
        postfix: Dict[str, str] = {}
        for out in self._progress(it, steps, f"epoch {epoch}", postfix):
            loss, logits, labels, _ = out
            stats["rows"] += labels.size(0) * self.env.world_size
            self._local_losses.append(loss.detach())
            self.global_step += 1
            self.step_in_epoch += 1
            self.schedule.after_step(self.global_step)
            self._metric_steps.add(logits, labels)
            if self.global_step % tc.log_every == 0:
                self._log_step(loss, postfix)
            if every and self.global_step % every == 0 and self.step_in_epoch < total:
                stats["seconds"] += time.perf_counter() - start
                start = time.perf_counter()
                self._check_finite(self._epoch_losses(), epoch)
                self.save(f"step_{self.global_step:08d}", epoch_done=False, pointers=("latest",))
            if on_step is not None:
                on_step(self)
        stats["seconds"] += time.perf_counter() - start
        losses = self._epoch_losses()
        self._check_finite(losses, epoch)
        self.step_losses.append(losses)
        self._epoch_stats, self._local_losses = {}, []
        secs = stats["seconds"]
        return {
            "train_loss": sum(losses) / max(len(losses), 1),
            "train_seconds": secs,
            "train_samples_per_s": stats["rows"] / secs if secs > 0 else 0.0,
            "steps": len(losses),
            "lr_scale": self.schedule.scale,
        }

    def _check_finite(self, losses: List[float], epoch: int) -> None:
        """Raise :class:`NonFiniteLoss` if a step loss of ``epoch`` (the mean over ranks,
        so every rank decides alike) is not finite: nothing of it is checkpointed."""
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            done = self._epoch_stats.get("restored_losses", [])
            raise NonFiniteLoss(
                f"the training loss is {losses[bad]} at step {bad} of epoch {epoch}: a row drove the model to "
                "non-finite values (e.g. a huge dense or sequence float); no checkpoint of this epoch was written"
                + (f" (its first {len(done)} steps were restored)" if done else "")
                + f"; the last good checkpoint, if any, is {self.ckpt_dir}/latest"
            )

    def _log_step(self, loss: Tensor, postfix: Dict[str, str]) -> None:
        """Compute the training metrics (collective); on rank 0, write them and this
        rank's step ``loss`` to TensorBoard and the first task's windowed AUC and NE to
        the progress bar's ``postfix``."""
        self._metric_steps.flush()
        values = train_metrics.scalars(self.train_metrics.compute())
        if not self.env.is_main:
            return
        task = self.cfg.data.schema.labels[0]
        for name in ("auc", "ne"):
            value = values.get(f"train_metrics/{name}-{task}/window_{name}")
            if value is not None:
                postfix[name] = f"{value:.4f}"
        if self.writer:
            self.writer.add_scalar("train/loss", loss.item(), self.global_step)
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, self.global_step)

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        """Metrics of ``split`` over the union of every rank's rows."""
        self.dmp.eval()
        reader = self.reader(split, train=False)
        logits, labels, groups = [], [], []
        for _, lg, lb, gr in self._progress(self.batches(reader), len(reader), split):
            logits.append(lg)
            labels.append(lb)
            groups.append(gr)
        self.dmp.train()
        lg, lb, gr = gather_predictions(torch.cat(logits), torch.cat(labels), torch.cat(groups))
        return compute_metrics(lg, lb, gr, self.cfg.data.schema.labels)

    def evaluate_checkpoint(self, ckpt: Path, split: str) -> Dict[str, Any]:
        """Load ``ckpt`` (any world size and plan) into this trainer's sharded model and
        evaluate ``split``."""
        check_same_config(checkpoint.read_meta(ckpt).get("config"), self.cfg, str(ckpt))
        meta = checkpoint.load_checkpoint(ckpt, self.dmp)
        return {"checkpoint": str(ckpt), "epoch": meta.get("epoch"), "split": split, **self.evaluate(split)}

    def _stop_early(self) -> bool:
        """Whether ``train.early_stopping_patience`` validations in a row did not improve."""
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and self.monitor.epochs_since_best(self.history) >= patience

    def fit(self, on_step: Optional[Callable[["Trainer"], None]] = None) -> Dict[str, Any]:
        """Train up to ``train.epochs`` epochs (continuing a checkpoint if
        ``train.resume``), validating and checkpointing after each, stopping early by
        ``train.early_stopping_patience``; then evaluate the best epoch (by
        ``train.monitor``) on the test split. ``on_step(trainer)`` is called after every
        training step."""
        tc = self.cfg.train
        if tc.resume:
            self.resume()
        self.schedule.start(self.global_step)
        metric = f"valid_{self.monitor.metric}"
        start = time.perf_counter()
        for epoch in range(self.epoch, tc.epochs):
            if self._stop_early():
                break
            stats = self.train_epoch(epoch, on_step)
            valid = self.evaluate("valid")
            row = {"epoch": epoch, **stats, **{f"valid_{k}": v for k, v in valid.items()}}
            self.history.append(row)
            self._log(epoch, row)
            improved = self.monitor.improved(row[metric], None if self.best is None else self.best[metric])
            if improved:
                self.best = row
            if self.schedule.after_validation(improved) and self.env.is_main:
                print(f"epoch {epoch}: no {self.monitor.metric} improvement; learning rate x{self.schedule.scale:g}", flush=True)
            self.save(
                f"epoch_{epoch:04d}",
                epoch_done=True,
                pointers=("latest", "best") if improved else ("latest",),
                extra={"valid": valid},
            )
            self.step_in_epoch = 0
            self.epoch = epoch + 1
            self.sync_outputs()
        train_seconds = time.perf_counter() - start
        if self.best is None:
            raise RuntimeError(f"nothing trained: train.epochs={tc.epochs} and no checkpoint beyond it")
        best = self.best
        result: Dict[str, Any] = {
            "model": self.cfg.model.name,
            "interaction": self.cfg.model.interformer.interaction,
            "tasks": list(self.cfg.data.schema.labels),
            "num_parameters": self.num_params,
            "dense_parameters": self.dense_params,
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "train_seconds": train_seconds,
            "best_epoch": best["epoch"],
            "epochs_trained": len(self.history),
            "stopped_early": self._stop_early() and len(self.history) < tc.epochs,
            "monitor": self.monitor.metric,
            "history": self.history,
            "valid": {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")},
            "plan": plan_summary(self.plan),
            "step_losses": self.step_losses,
        }
        if self.cfg.data.test:
            best_ckpt = checkpoint.resolve(self.ckpt_dir, "best")
            checkpoint.load_checkpoint(best_ckpt, self.dmp)
            result["test"] = self.evaluate("test")
        schema = self.cfg.data.schema
        if schema.oracle:
            split = "test" if self.cfg.data.test else "valid"
            oracles = oracle_auc(getattr(self.cfg.data, split), schema, self.cfg.data.filters.get(split))
            result["oracle_auc"] = oracles[schema.labels[0]]
            if len(oracles) > 1:
                result.update({f"oracle_auc/{task}": v for task, v in oracles.items()})
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
            if self.writer:
                for k, v in result.get("test", {}).items():
                    if isinstance(v, float):
                        self.writer.add_scalar(f"test/{k}", v, self.global_step)
            self.sync_outputs()
            if self.writer:
                self.writer.close()
        return result

    def _log(self, epoch: int, row: Dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        if self.writer:
            for k, v in row.items():
                if isinstance(v, float):
                    self.writer.add_scalar(k.replace("_", "/", 1), v, epoch)
        print(
            f"epoch {epoch}: train_loss {row['train_loss']:.4f} "
            f"({row['train_samples_per_s']:.0f} samples/s) | valid auc {row['valid_auc']:.4f} "
            f"gauc {row['valid_gauc']:.4f} logloss {row['valid_logloss']:.4f} ne {row['valid_ne']:.4f}"
            + "".join(f" | {k[len('valid_'):]} {v:.4f}" for k, v in row.items() if k.startswith("valid_auc/")),
            flush=True,
        )


def format_summary(result: Dict[str, Any]) -> str:
    """A readable end-of-run summary: a row per split (per split and task when there
    are several tasks)."""
    tasks = result.get("tasks", [])
    lines = [
        f"model: {result['model']}"
        + (f" ({result['interaction']})" if result["model"] == "interformer" else ""),
        f"parameters: {result['num_parameters']:,} ({result['dense_parameters']:,} dense)",
        f"train time: {result['train_seconds']:.1f}s on {result['world_size']} rank(s); best epoch {result['best_epoch']}",
        f"{'split':<16}{'AUC':>8}{'gAUC':>8}{'logloss':>9}{'NE':>8}{'rows':>9}",
    ]
    for split in ("valid", "test"):
        m = result.get(split)
        if not m:
            continue
        for suffix in [f"/{t}" for t in tasks] if len(tasks) > 1 else [""]:
            auc, gauc, logloss, ne = (m[f"{k}{suffix}"] for k in ("auc", "gauc", "logloss", "ne"))
            lines.append(f"{split + suffix:<16}{auc:>8.4f}{gauc:>8.4f}{logloss:>9.4f}{ne:>8.4f}{m['rows']:>9,}")
    if "oracle_auc" in result:
        oracles = [f"{t} {result[f'oracle_auc/{t}']:.4f}" for t in tasks if f"oracle_auc/{t}" in result]
        lines.append("oracle AUC (true probability): " + (", ".join(oracles) or f"{result['oracle_auc']:.4f}"))
    return "\n".join(lines)
