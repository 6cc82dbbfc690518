"""Cross Arch: the summaries exchanged between the two branches of InterFormer.

``X_sum = SelfGating(LCE(X))`` summarises the non-sequence tokens for the sequence branch;
``S_sum = SelfGating([S_CLS ; PMA(S) ; S_recent])`` summarises the sequence for the
non-sequence branch. The sequence ``S`` here is ``[B, c + T, d]``: ``c = num_cls`` CLS
positions (always valid) followed by ``T`` left-aligned steps of which the first
``lengths`` are real.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interformer_rec.ops.sequences import gather_recent


class LCE(nn.Module):
    """Linear Compressed Embedding: a learned linear map over the token axis, ``n -> m``
    tokens (``out[:, j] = sum_i W[j, i] X[:, i] + b[j]``).

    Args:
        in_tokens: ``n``.
        out_tokens: ``m``.
    """

    def __init__(self, in_tokens: int, out_tokens: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_tokens, out_tokens)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]``.

        Returns:
            ``[B, m, d]``.
        """
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


class SelfGating(nn.Module):
    """``X ⊙ σ(MLP(X))``; the gate MLP (one linear layer) reads all ``m`` tokens
    flattened, so each gate can depend on every token.

    Args:
        num_tokens: ``m``.
        dim: ``d``.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(num_tokens * dim, num_tokens * dim)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, m, d]``.

        Returns:
            ``[B, m, d]``.
        """
        return x * torch.sigmoid(self.gate(x.flatten(1))).view_as(x)


class NonSequenceSummary(nn.Module):
    """``X_sum = SelfGating(LCE(X))``.

    Args:
        num_tokens: ``n`` non-sequence tokens in.
        num_summary: ``m`` summary tokens out (= ``num_cls``).
        dim: ``d``.

    Attributes:
        num_summary: ``m``.
    """

    def __init__(self, num_tokens: int, num_summary: int, dim: int) -> None:
        super().__init__()
        self.num_summary = num_summary
        self.lce = LCE(num_tokens, num_summary)
        self.gating = SelfGating(num_summary, dim)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]``.

        Returns:
            ``[B, m, d]``.
        """
        return self.gating(self.lce(x))


class PMA(nn.Module):
    """Pooling by Multi-head Attention (Set Transformer): ``p`` learned seeds attend over
    the valid positions of a sequence; ``out = LayerNorm(seeds + MHA(seeds, S, S))``.
    Padded positions are masked out of the keys, so they never change the output.

    With ``context_tokens = n > 0`` the seeds are *target-aware*: each example's seeds are
    ``seeds + reshape(flatten(X) · W_ctx)`` for its ``n`` non-sequence tokens ``X`` (the
    target item among them), so the pooling can look for the target in the history, as
    DIN's target attention does. With ``n = 0`` they are the same for every example, as
    in the paper.

    Args:
        num_seeds: ``p``.
        dim: ``d``.
        num_heads: attention heads (``d`` divisible by it).
        context_tokens: ``n`` tokens of ``X`` the seeds are conditioned on (0: none).
    """

    def __init__(self, num_seeds: int, dim: int, num_heads: int, context_tokens: int = 0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PMA: dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.seeds = nn.Parameter(torch.randn(num_seeds, dim) / math.sqrt(dim))
        self.context = nn.Linear(context_tokens * dim, num_seeds * dim) if context_tokens else None
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, s: Tensor, valid: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            s: ``[B, T', d]``.
            valid: ``[B, T']`` bool, True at real positions (at least one per row).
            x: ``[B, n, d]`` non-sequence tokens (needed iff ``context_tokens > 0``).

        Returns:
            ``[B, p, d]``.
        """
        B, T, d = s.shape
        h = self.num_heads
        p = self.seeds.size(0)
        seeds = self.seeds.unsqueeze(0)  # [1 or B, p, d]
        if self.context is not None:
            if x is None:
                raise ValueError("PMA: target-aware seeds need the non-sequence tokens x")
            seeds = seeds + self.context(x.flatten(1)).view(B, p, d)
        q = self.q(seeds).view(-1, p, h, d // h).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(s).view(B, T, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        o = o.transpose(1, 2).reshape(B, p, d)
        return self.norm(seeds + self.out(o))


class SequenceSummary(nn.Module):
    """``S_sum = SelfGating([S_CLS ; PMA(S) ; S_recent])``, ``c + p + K`` tokens.

    PMA attends over all valid positions of ``S`` (the CLS positions and the real steps).

    Args:
        num_cls: ``c`` CLS positions at the front of ``S``.
        num_pma: ``p`` PMA seeds.
        num_recent: ``K`` most recent real steps.
        dim: ``d``.
        num_heads: PMA heads.
        context_tokens: ``n`` non-sequence tokens the PMA seeds are conditioned on (0:
            learned seeds only); see :class:`PMA`.
    """

    def __init__(
        self, num_cls: int, num_pma: int, num_recent: int, dim: int, num_heads: int, context_tokens: int = 0
    ) -> None:
        super().__init__()
        self.num_cls = num_cls
        self.num_recent = num_recent
        self.num_tokens = num_cls + num_pma + num_recent
        self.pma = PMA(num_pma, dim, num_heads, context_tokens) if num_pma > 0 else None
        self.gating = SelfGating(self.num_tokens, dim)

    def tokens(self, s: Tensor, valid: Tensor, lengths: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """The ungated summary ``[S_CLS ; PMA(S) ; S_recent]``.

        Args:
            s: ``[B, c + T, d]``.
            valid: ``[B, c + T]`` bool.
            lengths: ``[B]`` real steps per row.
            x: ``[B, n, d]`` non-sequence tokens (for target-aware PMA seeds).

        Returns:
            ``[B, c + p + K, d]``.
        """
        parts = [s[:, : self.num_cls]]
        if self.pma is not None:
            parts.append(self.pma(s, valid, x))
        if self.num_recent > 0:
            parts.append(gather_recent(s, lengths, self.num_recent, offset=self.num_cls))
        return torch.cat(parts, dim=1)

    def forward(self, s: Tensor, valid: Tensor, lengths: Tensor, x: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            s: ``[B, c + T, d]``.
            valid: ``[B, c + T]`` bool.
            lengths: ``[B]``.
            x: ``[B, n, d]`` non-sequence tokens (for target-aware PMA seeds).

        Returns:
            ``[B, c + p + K, d]``.
        """
        return self.gating(self.tokens(s, valid, lengths, x))


class CrossArch(nn.Module):
    """Both summaries of one layer: ``(X_sum, S_sum)``.

    Args:
        num_tokens: ``n`` non-sequence tokens.
        num_cls: ``c`` (also the number of ``X_sum`` tokens).
        num_pma: ``p``.
        num_recent: ``K``.
        dim: ``d``.
        num_heads: PMA heads.
        pma_context: target-aware PMA seeds, conditioned on ``X`` (see :class:`PMA`).
    """

    def __init__(
        self,
        num_tokens: int,
        num_cls: int,
        num_pma: int,
        num_recent: int,
        dim: int,
        num_heads: int,
        pma_context: bool = False,
    ) -> None:
        super().__init__()
        self.x_summary = NonSequenceSummary(num_tokens, num_cls, dim)
        self.s_summary = SequenceSummary(
            num_cls, num_pma, num_recent, dim, num_heads, context_tokens=num_tokens if pma_context else 0
        )

    def forward(self, x: Tensor, s: Tensor, valid: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            x: ``[B, n, d]`` non-sequence tokens.
            s: ``[B, c + T, d]`` sequence with CLS positions first.
            valid: ``[B, c + T]`` bool.
            lengths: ``[B]`` real steps per row.

        Returns:
            ``X_sum [B, c, d]``, ``S_sum [B, c + p + K, d]``.
        """
        return self.x_summary(x), self.s_summary(s, valid, lengths, x)
