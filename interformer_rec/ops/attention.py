"""Local attention with global tokens (Longformer-style), blocked so that its cost is
linear in the sequence length.

The sequence is ``c`` global positions (InterFormer's CLS tokens) followed by ``T``
steps. The global positions attend to every position and every position attends to
them; the steps are cut into blocks of ``W``, and a step attends to the steps of its own
block and of the previous one (``W`` to ``2W - 1`` steps back, up to ``W - 1`` ahead).
Each block of queries then needs only ``c + 2W`` keys: :func:`window_keys` gathers them
and :func:`window_key_mask` says which of them are real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def num_blocks(num_steps: int, window: int) -> int:
    """``ceil(T / W)`` blocks of ``W`` steps (the last one padded)."""
    return -(-num_steps // window)


def step_blocks(x: Tensor, window: int) -> Tensor:
    """The steps cut into blocks of ``window``, zero-padded at the end.

    Args:
        x: ``[B, h, T, dh]`` steps only.
        window: ``W``.

    Returns:
        ``[B, h, nb, W, dh]``, ``nb = ceil(T / W)``.
    """
    B, h, T, dh = x.shape
    nb = num_blocks(T, window)
    return F.pad(x, (0, 0, 0, nb * window - T)).view(B, h, nb, window, dh)


def window_keys(x: Tensor, num_global: int, window: int) -> Tensor:
    """For each block of steps, the keys it may attend to: ``[global ; previous block ;
    own block]`` (the block before the first one is zeros).

    Args:
        x: ``[B, h, c + T, dh]`` keys or values.
        num_global: ``c``.
        window: ``W``.

    Returns:
        ``[B, h, nb, c + 2W, dh]``.
    """
    B, h, _, dh = x.shape
    c = num_global
    cur = step_blocks(x[:, :, c:], window)
    nb = cur.size(2)
    prev = F.pad(cur, (0, 0, 0, 0, 1, 0))[:, :, :nb]
    return torch.cat([x[:, :, :c].unsqueeze(2).expand(B, h, nb, c, dh), prev, cur], dim=3)


def window_key_mask(valid: Tensor, num_global: int, window: int) -> Tensor:
    """Which of the :func:`window_keys` of each block are real positions.

    Args:
        valid: ``[B, c + T]`` bool key-padding mask.
        num_global: ``c``.
        window: ``W``.

    Returns:
        ``[B, nb, c + 2W]`` bool (False at padded steps and at the zero padding).
    """
    B, L = valid.shape
    c = num_global
    T = L - c
    nb = num_blocks(T, window)
    steps = F.pad(valid[:, c:], (0, nb * window - T)).view(B, nb, window)
    prev = F.pad(steps, (0, 0, 1, 0))[:, :nb]
    return torch.cat([valid[:, :c].unsqueeze(1).expand(B, nb, c), prev, steps], dim=2)


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, valid: Tensor, num_global: int, window: int, dropout_p: float = 0.0
) -> Tensor:
    """Global + blocked local attention on ``F.scaled_dot_product_attention``.

    Args:
        q, k, v: ``[B, h, c + T, dh]``.
        valid: ``[B, c + T]`` bool key-padding mask (the global positions True, at least
            one True per row).
        num_global: ``c``.
        window: ``W`` (``>= 1``).
        dropout_p: attention dropout.

    Returns:
        ``[B, h, c + T, dh]`` (rows of padded queries are garbage).
    """
    B, h, L, dh = q.shape
    c, W = num_global, window
    T = L - c
    nb = num_blocks(T, W)
    K = c + 2 * W
    mask = window_key_mask(valid, c, W)  # [B, nb, K]
    local = F.scaled_dot_product_attention(
        step_blocks(q[:, :, c:], W).reshape(B, h * nb, W, dh),
        window_keys(k, c, W).reshape(B, h * nb, K, dh),
        window_keys(v, c, W).reshape(B, h * nb, K, dh),
        attn_mask=mask.unsqueeze(1).expand(B, h, nb, K).reshape(B, h * nb, 1, K),
        dropout_p=dropout_p,
    ).view(B, h, nb * W, dh)[:, :, :T]
    glob = F.scaled_dot_product_attention(q[:, :, :c], k, v, attn_mask=valid[:, None, None, :], dropout_p=dropout_p)
    return torch.cat([glob, local], dim=2)
