"""Sequence side of InterFormer: MaskNet (unifies the parallel sequences), multi-head
self-attention on SDPA with rotary positions (:mod:`interformer_rec.ops.positions`) and
optional local attention (:mod:`interformer_rec.ops.attention`), the personalized FFN
whose weights are generated from the non-sequence summary, and the Sequence Arch block.

Sequences are ``[B, T', d]`` with a ``valid [B, T']`` boolean mask (True at CLS
positions and real steps). Padded positions are masked out of every attention and
zeroed at the output of each block, so they can never leak into later layers.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.mlp import MLP

from interformer_rec.ops.attention import local_attention
from interformer_rec.ops.positions import apply_rotary, rotary_angles


class MaskNet(nn.Module):
    """``MaskNet(S) = MLP_lce(S ⊙ MLP_mask(S))`` per step: an instance-guided mask over the
    ``k`` sequences' concatenated embeddings, then a linear compression to ``d``.

    Args:
        in_dim: ``k * d`` (k parallel sequences).
        hidden: hidden width of ``MLP_mask``.
        out_dim: ``d``.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.mlp_mask = MLP(in_dim, [hidden, in_dim], activation=nn.SiLU, activation_on_last=False)
        self.mlp_lce = nn.Linear(in_dim, out_dim)
        # start the mask near 1 (the embeddings pass through linearly) rather than near 0
        # (a random quadratic of them): target-history matches are found much sooner
        nn.init.ones_(self.mlp_mask._mlp[-1]._linear.bias)

    def forward(self, e: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """Padded steps (with ``valid``) or jagged steps (without: only real steps, so
        the work follows the real history lengths).

        Args:
            e: ``[B, T, k*d]`` per-step concatenated embeddings, or ``[V, k*d]`` the
                real steps of every row (jagged values).
            valid: ``[B, T]`` bool, True at real steps (padded input only).

        Returns:
            ``[B, T, d]`` with zeros at padded steps, or ``[V, d]``.
        """
        out = self.mlp_lce(e * self.mlp_mask(e))
        if valid is None:
            return out
        return torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` with a key-padding
    mask and optional rotary position embeddings on ``q`` and ``k``.

    With ``window > 0`` and more than ``window`` steps, attention is local with global
    tokens (:func:`~interformer_rec.ops.attention.local_attention`), so its cost is
    linear in the sequence length: the ``num_global`` leading positions (the CLS tokens)
    attend to every position; a step attends to the global positions and to the steps of
    its own and the previous block of ``window`` steps. With ``window = 0`` or at most
    ``window`` steps it is full attention.

    Args:
        dim: ``d``.
        num_heads: ``h`` (``d`` divisible by ``h``; ``d/h`` even with RoPE).
        rope: apply rotary position embeddings.
        dropout: attention dropout (training only).
        num_global: leading positions that attend to and are seen by every position.
        window: block size of the local attention (0: full attention).
    """

    def __init__(
        self, dim: int, num_heads: int, rope: bool = True, dropout: float = 0.0, num_global: int = 0, window: int = 0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} not divisible by num_heads {num_heads}")
        if rope and (dim // num_heads) % 2:
            raise ValueError(f"attention: RoPE needs an even head dim, got {dim // num_heads}")
        if window < 0:
            raise ValueError(f"attention: window must be >= 0, got {window}")
        self.num_heads = num_heads
        self.rope = rope
        self.dropout = dropout
        self.num_global = num_global
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, s: Tensor, valid: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            s: ``[B, T', d]`` (``num_global`` leading positions, then the steps).
            valid: ``[B, T']`` bool key-padding mask (at least one True per row; the
                global positions always True when ``window > 0``).
            positions: ``[B, T']`` rotary positions (default ``0..T'-1``; see
                :func:`~interformer_rec.ops.positions.recency_positions`).

        Returns:
            ``[B, T', d]`` (rows of padded queries are garbage: the caller zeroes them).
        """
        B, L, d = s.shape
        h = self.num_heads
        # three [B, h, T', dh] views; unbind (not slicing) keeps the backward a single
        # stack instead of zero-filled [3, ...] gradient buffers
        q, k, v = self.qkv(s).view(B, L, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope:
            if positions is None:
                cos, sin = rotary_angles(torch.arange(L, device=s.device), d // h)
            else:
                cos, sin = (a.unsqueeze(1) for a in rotary_angles(positions, d // h))  # [B, 1, T', dh/2]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        dropout = self.dropout if self.training else 0.0
        if self.window and L - self.num_global > self.window:
            o = local_attention(q, k, v, valid, self.num_global, self.window, dropout)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], dropout_p=dropout)
        return self.out(o.transpose(1, 2).reshape(B, L, d))


class PFFN(nn.Module):
    """Personalized FFN: a ``d × d`` weight per example generated from the non-sequence
    summary and applied to every position: ``PFFN(X_sum, S) = S · W_PFFN``.

    * ``generator="full"``: ``W_PFFN = reshape(flatten(X_sum) · W)``, ``W ∈ R^{m·d × d²}``.
    * ``generator="paper"`` (appendix A.2.2): ``W_PFFN = X_sumᵀ · W``, ``W ∈ R^{m × d}``
      (``m·d`` parameters instead of ``m·d³``).

    Args:
        num_summary: ``m`` tokens of ``X_sum``.
        dim: ``d``.
        generator: ``"full"`` or ``"paper"``.
    """

    def __init__(self, num_summary: int, dim: int, generator: str = "full") -> None:
        super().__init__()
        if generator not in ("full", "paper"):
            raise ValueError(f"model.interformer.pffn_generator={generator!r}: use full or paper")
        self.dim = dim
        self.generator = nn.Linear(num_summary * dim, dim * dim) if generator == "full" else None
        self.weight = (
            nn.Parameter(torch.randn(num_summary, dim) / math.sqrt(num_summary * dim)) if generator == "paper" else None
        )

    def forward(self, s: Tensor, x_sum: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, T', d]``.
            x_sum: ``[B, m, d]``.

        Returns:
            ``[B, T', d]``.
        """
        if self.generator is not None:
            w = self.generator(x_sum.flatten(1)).view(-1, self.dim, self.dim)
        else:
            w = torch.einsum("bmi,mj->bij", x_sum, self.weight)  # X_sumᵀ · W: [B, d, d]
        return torch.bmm(s, w)


class SequenceArch(nn.Module):
    """Context-aware sequence block, ``S^{l+1} = MHA(PFFN(X_sum, S^l))``, with post-norm
    residuals (and, if ``ffn_hidden > 0``, a position-wise FFN as in a transformer
    block)::

        S = LN(S + PFFN(X_sum, S))
        S = LN(S + MHA(S))
        S = LN(S + FFN(S))          # only with ffn_hidden > 0
        S = S ⊙ valid

    Args:
        num_cls: ``c``: the CLS positions at the front of ``S`` (global positions of the
            attention) and the tokens of ``X_sum``.
        dim: ``d``.
        num_heads: attention heads.
        ffn_hidden: hidden width of the position-wise FFN (0: none, as in the paper).
        rope: rotary position embeddings in the attention.
        dropout: dropout on the residual branches.
        window: local attention block size (0: full attention); see
            :class:`MultiHeadSelfAttention`.
        attention_dropout: dropout on the attention weights.
        pffn_generator: see :class:`PFFN`.
    """

    def __init__(
        self,
        num_cls: int,
        dim: int,
        num_heads: int,
        ffn_hidden: int = 0,
        rope: bool = True,
        dropout: float = 0.0,
        window: int = 0,
        attention_dropout: float = 0.0,
        pffn_generator: str = "full",
    ) -> None:
        super().__init__()
        self.pffn = PFFN(num_cls, dim, pffn_generator)
        self.norm1 = nn.LayerNorm(dim)
        self.mha = MultiHeadSelfAttention(
            dim, num_heads, rope=rope, dropout=attention_dropout, num_global=num_cls, window=window
        )
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, [ffn_hidden, dim], activation=nn.SiLU, activation_on_last=False) if ffn_hidden else None
        self.norm3 = nn.LayerNorm(dim) if ffn_hidden else None
        self.drop = nn.Dropout(dropout)

    def forward(self, s: Tensor, x_sum: Tensor, valid: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            s: ``[B, c + T, d]`` sequence (CLS positions first).
            x_sum: ``[B, c, d]`` non-sequence summary of the same layer.
            valid: ``[B, c + T]`` bool.
            positions: ``[B, c + T]`` rotary positions
                (:func:`~interformer_rec.ops.positions.recency_positions`).

        Returns:
            ``[B, c + T, d]``, zeros at invalid positions.
        """
        s = self.norm1(s + self.drop(self.pffn(s, x_sum)))
        s = self.norm2(s + self.drop(self.mha(s, valid, positions)))
        if self.ffn is not None:
            s = self.norm3(s + self.drop(self.ffn(s)))
        return torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
