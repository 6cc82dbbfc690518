"""Sequence side of InterFormer: MaskNet (unifies the parallel sequences), rotary
position embeddings (positions counted back from the most recent step), multi-head
self-attention on SDPA, the personalized FFN whose weights are generated from the
non-sequence summary, and the Sequence Arch block.

Sequences are ``[B, T', d]`` with a ``valid [B, T']`` boolean mask (True at CLS
positions and real steps). Padded positions are masked out of every attention and
zeroed at the output of each block, so they can never leak into later layers.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

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


def rotary_angles(positions: Tensor, head_dim: int, base: float = 10000.0) -> Tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the rotary angles at ``positions``.

    Args:
        positions: ``[T']`` or ``[B, T']`` (any integer or float positions).

    Returns:
        two ``[..., T', head_dim / 2]`` tensors (leading dims as ``positions``).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def recency_positions(lengths: Tensor, num_cls: int, max_len: int) -> Tensor:
    """Positions of ``[CLS ; steps]`` for rotary embeddings that make recency visible:
    the ``c`` CLS tokens sit at ``0..c-1`` and a real step at ``c + age``, where ``age``
    is 0 for the most recent step. With RoPE the CLS-to-step offset is then the step's
    age whatever the history length (left-aligned indices would give its distance from
    the *oldest* step instead). Padded steps get positions below ``c``; they are masked.

    Args:
        lengths: ``[B]`` real steps per row.
        num_cls: ``c``.
        max_len: ``T``.

    Returns:
        ``[B, c + T]`` int64.
    """
    t = torch.arange(max_len, device=lengths.device)
    steps = num_cls + lengths.to(torch.int64).unsqueeze(1) - 1 - t  # [B, T]
    cls = torch.arange(num_cls, device=lengths.device).expand(lengths.shape[0], num_cls)
    return torch.cat([cls, steps], dim=1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (RoFormer, rotate-half layout).

    Args:
        x: ``[..., T', dh]`` (any leading dims: queries and keys can be rotated at once).
        cos, sin: ``[T', dh / 2]`` or ``[B, 1, T', dh / 2]`` from :func:`rotary_angles`
            (broadcast against ``x``).

    Returns:
        ``[..., T', dh]``.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """:func:`apply_rotary` at positions ``0..T'-1`` of ``x [..., T', dh]`` (``dh`` even)."""
    cos, sin = rotary_angles(torch.arange(x.shape[-2], device=x.device), x.shape[-1], base)
    return apply_rotary(x, cos, sin)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` with a key-padding
    mask and optional rotary position embeddings on ``q`` and ``k``.

    With ``window > 0`` and more than ``window`` steps, attention is local with global
    tokens (Longformer-style), so its cost is linear in the sequence length: the
    ``num_global`` leading positions (the CLS tokens) attend to every position; the steps
    are cut into blocks of ``window``, and a step attends to the global positions and to
    the steps of its own and the previous block (``window`` to ``2·window - 1`` steps
    back, up to ``window - 1`` ahead). With ``window = 0`` or at most ``window`` steps it
    is full attention.

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
                :func:`recency_positions`).

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
        if self.window and L - self.num_global > self.window:
            o = self._local(q, k, v, valid)
        else:
            o = self._attend(q, k, v, valid[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(B, L, d))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)

    def _local(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
        """Global + blocked local attention; ``q, k, v [B, h, c + T, dh]`` -> ``[B, h, c + T, dh]``."""
        B, h, L, dh = q.shape
        c, W = self.num_global, self.window
        T = L - c
        nb = -(-T // W)
        pad = nb * W - T

        def blocks(x: Tensor) -> Tensor:  # [B, h, T, dh] -> [B, h, nb, W, dh]
            return F.pad(x, (0, 0, 0, pad)).view(B, h, nb, W, dh)

        def window_keys(x: Tensor) -> Tensor:  # [B, h, c + T, dh] -> [B, h, nb, c + 2W, dh]
            cur = blocks(x[:, :, c:])
            prev = F.pad(cur, (0, 0, 0, 0, 1, 0))[:, :, :nb]
            return torch.cat([x[:, :, :c].unsqueeze(2).expand(B, h, nb, c, dh), prev, cur], dim=3)

        steps_valid = F.pad(valid[:, c:], (0, pad)).view(B, nb, W)
        mask = torch.cat(
            [valid[:, :c].unsqueeze(1).expand(B, nb, c), F.pad(steps_valid, (0, 0, 1, 0))[:, :nb], steps_valid], dim=2
        )  # [B, nb, c + 2W]
        K = c + 2 * W
        local = self._attend(
            blocks(q[:, :, c:]).reshape(B, h * nb, W, dh),
            window_keys(k).reshape(B, h * nb, K, dh),
            window_keys(v).reshape(B, h * nb, K, dh),
            mask.unsqueeze(1).expand(B, h, nb, K).reshape(B, h * nb, 1, K),
        ).view(B, h, nb * W, dh)[:, :, :T]
        glob = self._attend(q[:, :, :c], k, v, valid[:, None, None, :])
        return torch.cat([glob, local], dim=2)


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
            positions: ``[B, c + T]`` rotary positions (:func:`recency_positions`).

        Returns:
            ``[B, c + T, d]``, zeros at invalid positions.
        """
        s = self.norm1(s + self.drop(self.pffn(s, x_sum)))
        s = self.norm2(s + self.drop(self.mha(s, valid, positions)))
        if self.ffn is not None:
            s = self.norm3(s + self.drop(self.ffn(s)))
        return torch.where(valid.unsqueeze(-1), s, torch.zeros_like(s))
