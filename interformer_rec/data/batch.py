"""The in-memory batch every model and the trainer consume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One mini-batch of B impressions.

    Attributes:
        dense: ``[B, n_dense]`` float32 dense features.
        sparse: pooled features (keys ``Schema.pooled_features``), for the
            EmbeddingBagCollection; multi-hot rows have several ids.
        sequence: unpooled features (keys ``Schema.unpooled_keys``), for the
            EmbeddingCollection: the target features (exactly one id per row) then the
            parallel behaviour sequences (0..max_len ids per row, most recent last).
        labels: ``[B, tasks]`` float32 in {0, 1}.
        groups: ``[B]`` int64 group id of each row for gAUC (the user id), zeros when
            the schema has no ``group_key``.
        sequence_floats: ``[V_f, n_float]`` float32 numbers per history step
            (``Schema.sequence_floats``): one row per step of the sequences (their
            lengths, most recent last), one column per feature; ``None`` without any.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    sequence: KeyedJaggedTensor
    labels: torch.Tensor
    groups: torch.Tensor
    sequence_floats: Optional[torch.Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.labels.size(0)

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            sequence=self.sequence.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            groups=self.groups.to(device=device, non_blocking=non_blocking),
            sequence_floats=None if self.sequence_floats is None
            else self.sequence_floats.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.sequence.record_stream(stream)
        self.labels.record_stream(stream)
        self.groups.record_stream(stream)
        if self.sequence_floats is not None:
            self.sequence_floats.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            sequence=self.sequence.pin_memory(),
            labels=self.labels.pin_memory(),
            groups=self.groups.pin_memory(),
            sequence_floats=None if self.sequence_floats is None else self.sequence_floats.pin_memory(),
        )
