"""Rotary position embeddings (RoFormer) and the recency positions InterFormer feeds
them, so that the attention sees how long ago a step happened."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def rotary_angles(positions: Tensor, head_dim: int, base: float = 10000.0) -> Tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of the rotary angles ``position · base^(-i / (head_dim/2))``.

    Args:
        positions: ``[T']`` or ``[B, T']`` (any integer or float positions).
        head_dim: ``dh`` (even).
        base: frequency base.

    Returns:
        two ``[..., T', dh / 2]`` tensors (leading dims as ``positions``).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (rotate-half layout): the pairs ``(x_i, x_{i + dh/2})``
    are rotated by the angles of :func:`rotary_angles`.

    Args:
        x: ``[..., T', dh]`` (any leading dims: queries and keys can be rotated at once).
        cos, sin: ``[T', dh / 2]`` or ``[B, 1, T', dh / 2]`` (broadcast against ``x``).

    Returns:
        ``[..., T', dh]``.
    """
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def rotary(x: Tensor, base: float = 10000.0) -> Tensor:
    """:func:`apply_rotary` at positions ``0..T'-1``.

    Args:
        x: ``[..., T', dh]`` (``dh`` even).
        base: frequency base.

    Returns:
        ``[..., T', dh]``.
    """
    cos, sin = rotary_angles(torch.arange(x.shape[-2], device=x.device), x.shape[-1], base)
    return apply_rotary(x, cos, sin)


def recency_positions(lengths: Tensor, num_cls: int, max_len: int) -> Tensor:
    """Positions of ``[CLS ; steps]`` for rotary embeddings that make recency visible:
    the ``c`` CLS tokens sit at ``0..c-1`` and a real step at ``c + age``, where ``age``
    is 0 for the most recent step. With RoPE the CLS-to-step offset is then the step's
    age whatever the history length (left-aligned indices would give its distance from
    the *oldest* step instead). Padded steps get positions below ``c``; they are masked.

    Args:
        lengths: ``[B]`` real steps per row (left-aligned, most recent last).
        num_cls: ``c``.
        max_len: ``T``.

    Returns:
        ``[B, c + T]`` int64.
    """
    t = torch.arange(max_len, device=lengths.device)
    steps = num_cls + lengths.to(torch.int64).unsqueeze(1) - 1 - t  # [B, T]
    cls = torch.arange(num_cls, device=lengths.device).expand(lengths.shape[0], num_cls)
    return torch.cat([cls, steps], dim=1)
