"""Continuous per-step sequence features (Transformers4Rec's feature aggregation):
numbers beside the id sequences (time since each event, dwell time, price), encoded per
step and merged into the step's embedding.

* Encoders (``SequenceFloatFeature.encoder``): :class:`LinearFloatEncoder`
  (``f·w + b``) or :class:`SoftOneHotEncoder` (``softmax(f·w + b) · E``, learned bins).
* Merge (``Schema.sequence_float_merge``), for a step ``x`` (``[k·d]``, the ``k``
  sequences' embeddings) and its encoded features ``e_1..e_I``:
  ``concat`` ``m = [x ; e_1 ; ... ; e_I]`` or ``elementwise`` ``m = x ⊙ (1 + Σ_i e_i)``.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from interformer_rec.config import ConfigError, Schema, SequenceFloatFeature


def transform(f: Tensor, log1p: List[bool]) -> Tensor:
    """Each feature's ``transform``: ``sign(f)·log(1 + |f|)`` where ``log1p[i]``, else ``f``.

    Args:
        f: ``[*, I]``.

    Returns:
        ``[*, I]``.
    """
    return torch.stack(
        [torch.sign(f[..., i]) * torch.log1p(f[..., i].abs()) if log else f[..., i] for i, log in enumerate(log1p)],
        dim=-1,
    )


def require_floats(values: Optional[Tensor]) -> Tensor:
    """``values``, which a schema with sequence floats must be given."""
    if values is None:
        raise ConfigError("the schema has sequence_floats but the model was called without them")
    return values


def mean_floats(values: Tensor, lengths: Tensor, max_len: int, log1p: List[bool]) -> Tensor:
    """Each row's sequence floats (transformed) averaged over its real steps, as a DLRM
    sees a history (pooled): zeros for an empty history.

    Args:
        values: ``[V_f, I]``.
        lengths: ``[B]`` steps per row (``sum = V_f``, each ``<= max_len``).
        max_len: ``T``.

    Returns:
        ``[B, I]``.
    """
    padded = JaggedTensor(values=values, lengths=lengths).to_padded_dense(desired_length=max_len)  # [B, T, I]
    return transform(padded, log1p).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class LinearFloatEncoder(nn.Module):
    """A scalar to ``R^width`` by a linear map: ``e = f·w + b``.

    Args:
        width: output width.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, f: Tensor) -> Tensor:
        """
        Args:
            f: ``[*]`` values.

        Returns:
            ``[*, width]``.
        """
        return f.unsqueeze(-1) * self.weight + self.bias


class SoftOneHotEncoder(nn.Module):
    """Soft one-hot encoding (Transformers4Rec's ``SoftEmbedding``): ``num_bins`` learned
    bins, each with an embedding; a value is the mix of the bins' embeddings weighted by
    ``softmax(f·w + b)`` over the bins: ``e = Σ_j softmax(f·w + b)_j · E_j``.

    Args:
        num_bins: ``J``.
        width: output width (the bins' embedding width).
    """

    def __init__(self, num_bins: int, width: int) -> None:
        super().__init__()
        self.projection = nn.Linear(1, num_bins)  # w, b ∈ R^J
        self.embeddings = nn.Parameter(torch.randn(num_bins, width) / math.sqrt(width))  # E [J, width]

    def forward(self, f: Tensor) -> Tensor:
        """
        Args:
            f: ``[*]`` values.

        Returns:
            ``[*, width]``.
        """
        weights = torch.softmax(self.projection(f.unsqueeze(-1)), dim=-1)  # [*, J]
        return weights @ self.embeddings


def _encoder(feature: SequenceFloatFeature, width: int) -> nn.Module:
    if feature.encoder == "soft_one_hot":
        return SoftOneHotEncoder(feature.num_bins, width)
    return LinearFloatEncoder(width)


class SequenceFloats(nn.Module):
    """Encode the schema's sequence floats and merge them into each history step.

    Args:
        schema: ``schema.sequence_floats`` (at least one) and ``schema.sequence_float_merge``.
        step_dim: width of a step before the merge (``k·d``).
        dim: ``d``, the encoding width of each feature under ``concat``.

    Attributes:
        out_dim: width of a merged step: ``step_dim + I·d`` (concat) or ``step_dim``.
    """

    def __init__(self, schema: Schema, step_dim: int, dim: int) -> None:
        super().__init__()
        features = schema.sequence_floats
        self.merge = schema.sequence_float_merge
        width = dim if self.merge == "concat" else step_dim
        self.log1p: List[bool] = [f.transform == "log1p" for f in features]
        self.encoders = nn.ModuleList([_encoder(f, width) for f in features])
        self.out_dim = step_dim + len(features) * dim if self.merge == "concat" else step_dim

    def encode(self, values: Tensor, lengths: Tensor, max_len: int) -> Tensor:
        """The features of every step, transformed and encoded.

        Args:
            values: ``[V_f, I]`` float, one row per real step (``Batch.sequence_floats``).
            lengths: ``[B]`` real steps per row (``sum = V_f``, each ``<= T``).
            max_len: ``T``.

        Returns:
            ``[B, T, I, width]``, zeros at padded steps.
        """
        f = transform(JaggedTensor(values=values, lengths=lengths).to_padded_dense(desired_length=max_len), self.log1p)
        # encoded as a flat [B·T] column per feature: linear maps of 2-D inputs export
        # without the guards (batch != 1) that broadcasting a [B, T, ·] matmul adds
        flat = f.reshape(-1, f.size(-1))  # [B·T, I]
        e = torch.stack([enc(flat[:, i]) for i, enc in enumerate(self.encoders)], dim=1)  # [B·T, I, width]
        e = e.view(f.size(0), max_len, len(self.encoders), -1)
        valid = torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)  # [B, T]
        return e * valid[:, :, None, None].to(e.dtype)

    def forward(self, steps: Tensor, values: Tensor, lengths: Tensor) -> Tensor:
        """
        Args:
            steps: ``[B, T, step_dim]`` the steps' embeddings, zeros at padded steps.
            values: ``[V_f, I]`` the steps' numbers (``Batch.sequence_floats``).
            lengths: ``[B]`` real steps per row.

        Returns:
            ``[B, T, out_dim]`` merged steps, zeros at padded steps.
        """
        e = self.encode(values, lengths, steps.size(1))
        if self.merge == "concat":
            return torch.cat([steps, e.flatten(2)], dim=-1)
        return steps * (1.0 + e.sum(2))

    def forward_jagged(self, steps: Tensor, values: Tensor) -> Tensor:
        """:meth:`forward` on the real steps only (jagged values, no padding).

        Args:
            steps: ``[V, step_dim]`` the real steps' embeddings.
            values: ``[V, I]`` their numbers (``Batch.sequence_floats``).

        Returns:
            ``[V, out_dim]``.
        """
        f = transform(values, self.log1p)
        e = torch.stack([enc(f[:, i]) for i, enc in enumerate(self.encoders)], dim=1)  # [V, I, width]
        if self.merge == "concat":
            return torch.cat([steps, e.flatten(1)], dim=-1)
        return steps * (1.0 + e.sum(1))

    def target(self, step: Tensor) -> Tensor:
        """A target step (which has no such numbers) brought to the merged width:
        zeros in the features' slots (``concat``), unchanged (``elementwise``).

        Args:
            step: ``[B, m, step_dim]``.

        Returns:
            ``[B, m, out_dim]``.
        """
        if self.merge == "concat":
            return torch.cat([step, step.new_zeros(*step.shape[:-1], self.out_dim - step.size(-1))], dim=-1)
        return step


def sequence_floats(schema: Schema, step_dim: int, dim: int) -> "SequenceFloats | None":
    """:class:`SequenceFloats` of ``schema``, or ``None`` if it has no sequence floats."""
    return SequenceFloats(schema, step_dim, dim) if schema.sequence_floats else None
