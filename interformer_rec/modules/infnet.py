"""INFNet's information flow over heterogeneous token types (the project's seed notes
``../shared/seeds/002_*.txt``, §3.2-3.3).

The tokens come in *types* (non-sequence features, a behaviour sequence, tasks). Each type
``τ`` owns ``M`` proxy tokens ``P_τ [B, M, d]``, which start from a learned base plus a
map of the type's mean token (:class:`INFNetEncoder`), and one block alternates two
flows:

* **heterogeneous** (:class:`ProxyCrossAttention`): each type's proxies attend, by
  cross-attention, to the tokens of every type, its own and the others'
  (``P_τ ← LN(P_τ + MHA(P_τ, tokens))``, then ``LN(P_τ + FFN(P_τ))``). ``M`` queries
  over ``N`` tokens cost ``O(M·N·d)``: linear in the number of tokens, where full
  self-attention over them costs ``O(N²·d)``.
* **homogeneous** (:class:`ProxyGatingUnit`): each token is refined with its own type's
  proxies, ``g = σ(W_g[x; p]); x' = g ⊙ f(W_h[x; p]) + (1 − g) ⊙ x`` with
  ``p = flatten(P_τ)``; parameters are shared within a type and separate across types.

Padded tokens (``valid`` False) are never keys, so whatever they hold never changes a
proxy, and the refined tokens are zero there.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from interformer_rec.ops.sequences import masked_mean


class ProxyGatingUnit(nn.Module):
    """``x' = g ⊙ SiLU(W_h[x; p] + b_h) + (1 − g) ⊙ x``, ``g = σ(W_g[x; p] + b_g)``, with
    ``p = flatten(P) ∈ R^{M·d}`` the type's proxies. Each ``W[x; p]`` is held as its two
    blocks, ``W_x x + W_p p`` (``*_token`` and ``*_proxy``), the proxy term computed once
    per row, so that a long sequence does not copy ``p`` to every step.

    Args:
        dim: ``d``.
        num_proxies: ``M``.
    """

    def __init__(self, dim: int, num_proxies: int) -> None:
        super().__init__()
        self.gate_token = nn.Linear(dim, dim)
        self.gate_proxy = nn.Linear(num_proxies * dim, dim, bias=False)
        self.hidden_token = nn.Linear(dim, dim)
        self.hidden_proxy = nn.Linear(num_proxies * dim, dim, bias=False)

    def forward(self, x: Tensor, proxies: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, N, d]`` tokens of one type.
            proxies: ``[B, M, d]`` that type's proxies.

        Returns:
            ``[B, N, d]``.
        """
        p = proxies.flatten(1)
        g = torch.sigmoid(self.gate_token(x) + self.gate_proxy(p).unsqueeze(1))
        return g * F.silu(self.hidden_token(x) + self.hidden_proxy(p).unsqueeze(1)) + (1 - g) * x


class ProxyCrossAttention(nn.Module):
    """One type's heterogeneous step: its proxies attend to all tokens,
    ``P ← LN(P + MHA(P, tokens)); P ← LN(P + FFN(P))``.

    Args:
        dim: ``d`` (divisible by ``num_heads``).
        num_heads: attention heads.
        ffn_hidden: hidden width of the FFN.
    """

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_hidden), nn.SiLU(), nn.Linear(ffn_hidden, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, proxies: Tensor, tokens: Tensor, key_mask: Tensor) -> Tensor:
        """
        Args:
            proxies: ``[B, M, d]``.
            tokens: ``[B, N, d]`` the tokens of every type.
            key_mask: ``[B, 1, 1, N]`` bool, True where a token may be attended to
                (at least one per row).

        Returns:
            ``[B, M, d]`` the updated proxies.
        """
        h, d = self.num_heads, proxies.size(-1)
        # unflatten / flatten, not views sized by B: a batch-sized reshape makes torch.export
        # add a guard that the batch is not 1
        q = self.q(proxies).unflatten(-1, (h, d // h)).transpose(1, 2)  # [B, h, M, d/h]
        k, v = self.kv(tokens).unflatten(-1, (2, h, d // h)).permute(2, 0, 3, 1, 4)  # each [B, h, N, d/h]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        proxies = self.norm1(proxies + self.out(attended.transpose(1, 2).flatten(2)))
        return self.norm2(proxies + self.ffn(proxies))


class INFNetBlock(nn.Module):
    """One alternating block over ``len(num_types)`` types: every type's proxies attend to
    all tokens (heterogeneous flow), then every type's tokens are refined by its proxies
    (homogeneous flow).

    Args:
        num_types: token types.
        dim: ``d``.
        num_proxies: ``M`` per type.
        num_heads: attention heads.
        ffn_hidden: the proxies' FFN width.
    """

    def __init__(self, num_types: int, dim: int, num_proxies: int, num_heads: int, ffn_hidden: int) -> None:
        super().__init__()
        self.fusion = nn.ModuleList(ProxyCrossAttention(dim, num_heads, ffn_hidden) for _ in range(num_types))
        self.gating = nn.ModuleList(ProxyGatingUnit(dim, num_proxies) for _ in range(num_types))

    def forward(
        self, tokens: List[Tensor], proxies: List[Tensor], valid: List[Optional[Tensor]], key_mask: Tensor
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            tokens: per type ``[B, N_τ, d]``.
            proxies: per type ``[B, M, d]``.
            valid: per type ``[B, N_τ]`` bool, or ``None`` if every token is real.
            key_mask: ``[B, 1, 1, ΣN_τ]`` bool, the valid tokens of all types.

        Returns:
            the refined tokens (zeros where not valid) and the updated proxies, per type.
        """
        everything = torch.cat(tokens, dim=1)
        proxies = [fusion(p, everything, key_mask) for fusion, p in zip(self.fusion, proxies)]
        refined = []
        for gating, x, p, mask in zip(self.gating, tokens, proxies, valid):
            x = gating(x, p)
            refined.append(x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0.0))
        return refined, proxies


class INFNetEncoder(nn.Module):
    """``num_blocks`` :class:`INFNetBlock` over token types of fixed sizes, starting from
    dynamic proxies (the seed notes' 动态代理, proxies that follow the content): per type
    ``P_τ⁰ = E_τ + reshape(W_τ · mean(tokens_τ))``, ``E_τ [M, d]`` learned, the mean over
    the type's valid tokens (zeros for an empty history).

    Args:
        type_sizes: ``N_τ`` per type.
        dim: ``d``.
        num_proxies: ``M``.
        num_blocks: alternating blocks.
        num_heads: attention heads.
        ffn_hidden: the proxies' FFN width.
    """

    def __init__(
        self, type_sizes: Sequence[int], dim: int, num_proxies: int, num_blocks: int, num_heads: int, ffn_hidden: int
    ) -> None:
        super().__init__()
        self.type_sizes = list(type_sizes)
        self.num_proxies = num_proxies
        self.proxies = nn.Parameter(torch.randn(len(self.type_sizes), num_proxies, dim) / dim**0.5)
        self.proxy_init = nn.ModuleList(nn.Linear(dim, num_proxies * dim) for _ in self.type_sizes)
        self.blocks = nn.ModuleList(
            INFNetBlock(len(self.type_sizes), dim, num_proxies, num_heads, ffn_hidden) for _ in range(num_blocks)
        )

    def forward(self, tokens: List[Tensor], valid: List[Optional[Tensor]]) -> Tuple[List[Tensor], Tensor]:
        """
        Args:
            tokens: per type ``[B, N_τ, d]``.
            valid: per type ``[B, N_τ]`` bool, or ``None`` if every token is real.

        Returns:
            the refined tokens per type, and all proxies ``[B, types·M, d]``.
        """
        B = tokens[0].size(0)
        masks = [m if m is not None else torch.ones(B, x.size(1), dtype=torch.bool, device=x.device) for x, m in zip(tokens, valid)]
        key_mask = torch.cat(masks, dim=1)[:, None, None, :]
        tokens = [x if m is None else x.masked_fill(~m.unsqueeze(-1), 0.0) for x, m in zip(tokens, valid)]
        proxies = [
            base + init(masked_mean(x, m)).unflatten(-1, (self.num_proxies, -1))
            for base, init, x, m in zip(self.proxies, self.proxy_init, tokens, masks)
        ]
        for block in self.blocks:
            tokens, proxies = block(tokens, proxies, valid, key_mask)
        return tokens, torch.cat(proxies, dim=1)


class INFNetInteraction(nn.Module):
    """INFNet as an InterFormer interaction variant (``interaction: infnet``): the ``F``
    tokens ``[X ; S_sum]`` split into types of ``type_sizes`` (non-sequence tokens and the
    sequence summaries), :class:`INFNetEncoder` over them, then the refined tokens and
    the proxies flattened: ``out_dim = (F + types·M)·d``.

    Args:
        type_sizes: tokens per type (sum ``F``).
        dim: ``d``.
        num_proxies: ``M``.
        num_blocks: alternating blocks.
        num_heads: attention heads.
        ffn_hidden: the proxies' FFN width.
    """

    def __init__(
        self, type_sizes: Sequence[int], dim: int, num_proxies: int, num_blocks: int, num_heads: int, ffn_hidden: int
    ) -> None:
        super().__init__()
        self.type_sizes = [n for n in type_sizes if n > 0]
        self.encoder = INFNetEncoder(self.type_sizes, dim, num_proxies, num_blocks, num_heads, ffn_hidden)
        self.out_dim = (sum(self.type_sizes) + len(self.type_sizes) * num_proxies) * dim

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, (F + types·M)·d]``.
        """
        parts = list(tokens.split(self.type_sizes, dim=1))
        refined, proxies = self.encoder(parts, [None] * len(parts))
        return torch.cat([*refined, proxies], dim=1).flatten(1)
