"""Padded-sequence functions: the most recent real steps, right alignment, masked
pooling and target-history matching.

Sequences here are padded ``[B, T, ·]`` tensors, left-aligned (row ``b``'s real steps at
``0..lengths[b]-1``, most recent last), as ``JaggedTensor.to_padded_dense`` gives them.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


def gather_recent(s: Tensor, lengths: Tensor, k: int, offset: int = 0) -> Tensor:
    """The ``k`` most recent *real* steps, most recent first.

    Steps are left-aligned after ``offset`` leading positions (the CLS tokens): the most
    recent real step of row ``b`` is ``s[b, offset + lengths[b] - 1]``. Rows with fewer
    than ``k`` real steps get zero tokens in the missing slots.

    Args:
        s: ``[B, offset + T, d]``.
        lengths: ``[B]`` int, real steps per row (``<= T``).
        k: number of recent steps.
        offset: leading non-step positions.

    Returns:
        ``[B, k, d]``.
    """
    B, _, d = s.shape
    back = torch.arange(k, device=s.device)
    step = lengths.to(torch.int64).unsqueeze(1) - 1 - back  # [B, k]
    valid = step >= 0
    idx = (offset + step.clamp(min=0)).unsqueeze(-1).expand(B, k, d)
    out = torch.gather(s, 1, idx)
    return torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))


def right_align(left: Tensor, lengths: Tensor) -> Tensor:
    """Move each row's real steps to the end, so that position ``T-1`` is always the most
    recent step (fbgemm's ``jagged_to_padded_dense`` only pads on the right).

    Args:
        left: ``[B, T, d]`` left-aligned, **zeros** after each row's real steps.
        lengths: ``[B]`` int64, each ``<= T``.

    Returns:
        ``[B, T, d]``: row ``b``'s steps at ``T-len_b .. T-1``, zeros before.
    """
    T = left.size(1)
    steps = torch.arange(T, device=lengths.device)
    index = (steps - (T - lengths).unsqueeze(1)) % T  # padded slots read the zeros
    return left.gather(1, index.unsqueeze(-1).expand(-1, -1, left.size(-1)))


def masked_mean(steps: Tensor, valid: Tensor) -> Tensor:
    """Mean of the real steps (zeros for an empty history).

    Args:
        steps: ``[B, T, D]``.
        valid: ``[B, T]`` bool, True at real steps.

    Returns:
        ``[B, D]``.
    """
    count = valid.sum(1, keepdim=True).clamp(min=1).to(steps.dtype)  # [B, 1]
    return steps.masked_fill(~valid.unsqueeze(-1), 0.0).sum(1) / count


def match_tokens(targets: Tensor, steps: Tensor, num_sequences: int, pairs: List[Tuple[int, int]]) -> Tensor:
    """Target-history match tokens: for each pair ``(i, j)``, the sum over the real steps
    of ``target_i ⊙ step_j`` (a target feature and a sequence of one table). Its sum over
    ``d`` is the dot product of the target with the sum-pooled history, the term a DLRM's
    dot interaction sees; an exact occurrence of the target adds ``target_i²``.

    Args:
        targets: ``[B, n_target, d]``.
        steps: ``[B, T, k·d]`` (the ``k`` sequences concatenated per step, zeros at
            padded steps).
        num_sequences: ``k``.
        pairs: ``(target index, sequence index)`` pairs (non-empty).

    Returns:
        ``[B, len(pairs), d]``.
    """
    B, T, _ = steps.shape
    target_idx, sequence_idx = (list(idx) for idx in zip(*pairs))
    per_sequence = steps.view(B, T, num_sequences, -1)[:, :, sequence_idx]  # [B, T, P, d]
    return (targets[:, target_idx].unsqueeze(1) * per_sequence).sum(1)
