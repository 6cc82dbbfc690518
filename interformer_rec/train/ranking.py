"""The training wrapper of a ranking model: loss, metrics' inputs and the precision the
model runs in."""

from __future__ import annotations

from typing import Optional, Tuple

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
    first. ``bce`` is the mean binary cross-entropy over rows and tasks; in training the
    loss adds ``embedding_regularizer · Σ ||e||² / B`` over the batch's lookups when a
    :class:`~interformer_rec.train.protocol.EmbeddingRegularizer` is attached.

    Args:
        model: the ranking model.
        embedding_regularizer: ``λ``.
        precision: ``bf16`` runs the model under ``torch.autocast(bfloat16)``: its
            matmuls, attention and MLPs (the dense arches) compute in bfloat16, while
            the embedding lookups (not autocast ops), the logits handed to the loss, the
            loss and the parameters stay float32.
        device_type: where the batches are (``cpu`` or ``cuda``): the autocast's device.
    """

    def __init__(
        self, model: nn.Module, embedding_regularizer: float = 0.0, precision: str = "fp32", device_type: str = "cpu"
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision={precision!r}: expected fp32 or bf16")
        self.model = model
        self.embedding_regularizer = embedding_regularizer
        self.precision = precision
        self.device_type = device_type
        self.regularizer: Optional[EmbeddingRegularizer] = None

    def forward(self, batch: Batch) -> ModelOutput:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(batch.dense, batch.sparse, batch.sequence)
        logits = logits.float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        loss = bce
        if self.regularizer is not None:
            squares = self.regularizer.pop()
            if self.training:
                loss = bce + self.embedding_regularizer * squares.to(bce.device) / batch.labels.size(0)
        return loss, (bce.detach(), logits.detach(), batch.labels, batch.groups)
