"""The training wrapper of a ranking model: loss, metrics' inputs and the precision the
model runs in."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from interformer_rec.config import ConfigError
from interformer_rec.data.batch import Batch
from interformer_rec.train.protocol import EmbeddingRegularizer

ModelOutput = Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class RankingTrain(nn.Module):
    """Wraps a ranking model for training, as ``torchrec.models.dlrm.DLRMTrain`` does:
    ``forward(batch) -> (loss, (bce, logits, labels, groups))``, all detached but the
    first. ``bce`` is the task-weighted binary cross-entropy ``Σ_t w_t·BCE_t / Σ_t w_t``
    (``BCE_t`` the mean over rows of task ``t``; all ``w_t = 1``: the mean over rows and
    tasks); in training the loss adds ``embedding_regularizer · Σ ||e||² / B`` over the batch's lookups when a
    :class:`~interformer_rec.train.protocol.EmbeddingRegularizer` is attached.

    Args:
        model: the ranking model.
        embedding_regularizer: ``λ``.
        precision: ``bf16`` runs the model under ``torch.autocast(bfloat16)``: its
            matmuls, attention and MLPs (the dense arches) compute in bfloat16, while
            the embedding lookups (not autocast ops), the logits handed to the loss, the
            loss and the parameters stay float32.
        device_type: where the batches are (``cpu`` or ``cuda``): the autocast's device.
        task_weights: ``w_t`` of each label column (default all 1).
    """

    def __init__(
        self,
        model: nn.Module,
        embedding_regularizer: float = 0.0,
        precision: str = "fp32",
        device_type: str = "cpu",
        task_weights: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision={precision!r}: expected fp32 or bf16")
        if task_weights is not None and (min(task_weights) < 0 or sum(task_weights) <= 0):
            raise ConfigError(f"train.task_weights: {list(task_weights)}: need w >= 0 with a positive sum")
        # a buffer, so it moves with the model once instead of being built every step;
        # not persistent: checkpoints and exported state stay as they were
        self.task_weights: Optional[torch.Tensor]
        self.register_buffer(
            "task_weights", torch.tensor(task_weights, dtype=torch.float32) if task_weights is not None else None,
            persistent=False,
        )
        self.model = model
        self.embedding_regularizer = embedding_regularizer
        self.precision = precision
        self.device_type = device_type
        self.regularizer: Optional[EmbeddingRegularizer] = None

    def forward(self, batch: Batch) -> ModelOutput:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            inputs = (batch.dense, batch.sparse, batch.sequence)
            if batch.sequence_floats is not None:  # models without them keep their 3-input forward
                inputs += (batch.sequence_floats,)
            logits = self.model(*inputs)
        logits = logits.float()
        if self.task_weights is None:
            bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        else:
            per_task = F.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").mean(0)
            bce = (per_task * self.task_weights).sum() / self.task_weights.sum()
        loss = bce
        if self.regularizer is not None:
            squares = self.regularizer.pop()
            if self.training:
                loss = bce + self.embedding_regularizer * squares.to(bce.device) / batch.labels.size(0)
        return loss, (bce.detach(), logits.detach(), batch.labels, batch.groups)
