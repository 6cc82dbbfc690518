"""Sequence side of InterFormer: MaskNet (unifies the parallel sequences), rotary
position embeddings, multi-head self-attention on SDPA, the personalized FFN whose
weights are generated from the non-sequence summary, and the Sequence Arch block.

Sequences are ``[B, T', d]`` with a ``valid [B, T']`` boolean mask (True at CLS
positions and real steps). Padded positions are masked out of every attention and
zeroed at the output of each block, so they can never leak into later layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.modules.mlp import MLP


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

    def forward(self, e: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            e: ``[B, T, k*d]`` per-step concatenated embeddings.
            valid: ``[B, T]`` bool, True at real steps.

        Returns:
            ``[B, T, d]``, zeros at padded steps.
        """
        out = self.mlp_lce(e * self.mlp_mask(e))
        return torch.where(valid.unsqueeze(-1), out, torch.zeros_like(out))


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoFormer, rotate-half layout) at positions ``0..T'-1``.

    Args:
        x: ``[B, h, T', dh]`` queries or keys, ``dh`` even.
        base: frequency base.

    Returns:
        ``[B, h, T', dh]``.
    """
    T, dh = x.shape[-2], x.shape[-1]
    half = dh // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(T, device=x.device, dtype=torch.float32).unsqueeze(1) * inv_freq  # [T', dh/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` with a key-padding
    mask (``[B, 1, 1, T']``) and optional rotary position embeddings on ``q`` and ``k``.

    Args:
        dim: ``d``.
        num_heads: ``h`` (``d`` divisible by ``h``; ``d/h`` even with RoPE).
        rope: apply rotary position embeddings.
        dropout: attention dropout (training only).
    """

    def __init__(self, dim: int, num_heads: int, rope: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} not divisible by num_heads {num_heads}")
        if rope and (dim // num_heads) % 2:
            raise ValueError(f"attention: RoPE needs an even head dim, got {dim // num_heads}")
        self.num_heads = num_heads
        self.rope = rope
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, s: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, T', d]``.
            valid: ``[B, T']`` bool key-padding mask (at least one True per row).

        Returns:
            ``[B, T', d]`` (rows of padded queries are garbage: the caller zeroes them).
        """
        B, T, d = s.shape
        h = self.num_heads
        q, k, v = self.qkv(s).view(B, T, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope:
            q, k = rotary(q), rotary(k)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=valid[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(o.transpose(1, 2).reshape(B, T, d))


class PFFN(nn.Module):
    """Personalized FFN: a ``d × d`` weight per example generated from the non-sequence
    summary, ``W_PFFN = reshape(flatten(X_sum) · W)``, applied to every position:
    ``PFFN(X_sum, S) = S · W_PFFN``.

    Args:
        num_summary: ``m`` tokens of ``X_sum``.
        dim: ``d``.
    """

    def __init__(self, num_summary: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.generator = nn.Linear(num_summary * dim, dim * dim)

    def forward(self, s: Tensor, x_sum: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, T', d]``.
            x_sum: ``[B, m, d]``.

        Returns:
            ``[B, T', d]``.
        """
        w = self.generator(x_sum.flatten(1)).view(-1, self.dim, self.dim)
        return torch.bmm(s, w)


class SequenceArch(nn.Module):
    """Context-aware sequence block, ``S^{l+1} = MHA(PFFN(X_sum, S^l))`` with post-norm
    residuals and a position-wise FFN as in a transformer block::

        S = LN(S + PFFN(X_sum, S))
        S = LN(S + MHA(S))
        S = LN(S + FFN(S))
        S = S ⊙ valid

    Args:
        num_summary: ``m`` tokens of ``X_sum``.
        dim: ``d``.
        num_heads: attention heads.
        ffn_hidden: hidden width of the position-wise FFN.
        rope: rotary position embeddings in the attention.
        dropout: dropout on attention weights and on the residual branches.
    """

    def __init__(
        self, num_summary: int, dim: int, num_heads: int, ffn_hidden: int, rope: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.pffn = PFFN(num_summary, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mha = MultiHeadSelfAttention(dim, num_heads, rope=rope, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MLP(dim, [ffn_hidden, dim], activation=nn.SiLU, activation_on_last=False)
        self.norm3 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, s: Tensor, x_sum: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, T', d]`` sequence (CLS positions first).
            x_sum: ``[B, m, d]`` non-sequence summary of the same layer.
            valid: ``[B, T']`` bool.

        Returns:
            ``[B, T', d]``, zeros at invalid positions.
        """
        s = self.norm1(s + self.drop(self.pffn(s, x_sum)))
        s = self.norm2(s + self.drop(self.mha(s, valid)))
        s = self.norm3(s + self.drop(self.ffn(s)))
        return torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
