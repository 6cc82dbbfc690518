"""Interaction variants and InterFormer's behaviour-aware Interaction Arch.

Each variant maps ``F`` tokens ``[B, F, d]`` to a flat ``[B, out_dim]`` vector and exposes
``out_dim``; they mirror TorchRec's DLRM interactions and reuse its modules:

* ``dot`` — ``torchrec.models.dlrm.InteractionArch`` (pairwise dot products, upper
  triangle) with token 0 in the "dense" slot, plus the other tokens flattened, so every
  token appears once: ``out_dim = F·d + F(F-1)/2``.
* ``dcn`` — ``torchrec.modules.crossnet.LowRankCrossNet`` (DCNv2) over the flattened
  tokens: ``out_dim = F·d``.
* ``projection`` — ``torchrec.models.dlrm.InteractionProjectionArch`` (DLRM_Projection:
  two MLP branches ``[B, F1, d]`` and ``[B, d, F2]``, bmm, flatten) with token 0 as
  "dense", plus the other tokens flattened: ``out_dim = F·d + F1·F2``.
* ``dhen`` — the paper's default (§3.2, after DHEN, Zhang et al. 2022): a stack of
  ``dhen_layers`` layers ``X' = LayerNorm(Ensemble(DOT(X), DCN(X)) + ShortCut(X))`` over
  the tokens, each module mapping ``[B, F, d]`` back to ``[B, F, d]``:
  ``out_dim = F·d``.
* ``dhen_flat`` — the ``dot`` and ``dcn`` outputs concatenated (one flat layer, no norm
  and no shortcut): what this project used before the paper's layer.
* ``infnet`` — INFNet's proxy tokens (:class:`~interformer_rec.modules.infnet.INFNetInteraction`):
  ``M`` proxies per token type (``X`` and ``S_sum``) fuse the types by cross-attention
  and gate their tokens: ``out_dim = (F + 2M)·d``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn
from torchrec.models.dlrm import InteractionArch as DLRMInteractionArch
from torchrec.models.dlrm import InteractionProjectionArch
from torchrec.modules.crossnet import LowRankCrossNet
from torchrec.modules.mlp import MLP

from interformer_rec.modules.infnet import INFNetInteraction


class DotInteraction(nn.Module):
    """All pairwise dot products ``<t_i, t_j>, i < j``, and the tokens themselves.

    Args:
        num_tokens: ``F``.
        dim: ``d``.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.dot = DLRMInteractionArch(num_sparse_features=num_tokens - 1)
        self.out_dim = num_tokens * dim + num_tokens * (num_tokens - 1) // 2

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, F·d + F(F-1)/2]``: token 0, the dot products, tokens 1..F-1.
        """
        return torch.cat([self.dot(tokens[:, 0], tokens[:, 1:]), tokens[:, 1:].flatten(1)], dim=1)


class DCNInteraction(nn.Module):
    """DCNv2 low-rank cross net over the flattened tokens,
    ``x_{l+1} = x_0 ⊙ (W_l V_l x_l + b_l) + x_l``.

    Args:
        num_tokens: ``F``.
        dim: ``d``.
        num_layers: cross layers.
        low_rank: rank of ``W_l V_l``.
    """

    def __init__(self, num_tokens: int, dim: int, num_layers: int, low_rank: int) -> None:
        super().__init__()
        self.out_dim = num_tokens * dim
        self.crossnet = LowRankCrossNet(in_features=self.out_dim, num_layers=num_layers, low_rank=low_rank)

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, F·d]``.
        """
        return self.crossnet(tokens.flatten(1))


class ProjectionInteraction(nn.Module):
    """DLRM_Projection: two MLP branches over the flattened tokens give ``Y [B, F1, d]``
    and ``Z [B, d, F2]``; the output is ``flatten(Y·Z)`` and the tokens.

    Args:
        num_tokens: ``F`` (at least 2).
        dim: ``d``.
        branch1: layer sizes of branch 1; the last must be ``F1·d``.
        branch2: layer sizes of branch 2; the last must be ``F2·d``.
    """

    def __init__(self, num_tokens: int, dim: int, branch1: List[int], branch2: List[int]) -> None:
        super().__init__()
        if num_tokens < 2:
            raise ValueError("projection interaction needs at least 2 tokens")
        for name, sizes in (("projection_branch1", branch1), ("projection_branch2", branch2)):
            if not sizes or sizes[-1] % dim:
                raise ValueError(f"{name}={sizes}: the last layer size must be a multiple of embedding_dim {dim}")
        in_dim = num_tokens * dim
        self.projection = InteractionProjectionArch(
            num_sparse_features=num_tokens - 1,
            interaction_branch1=MLP(in_dim, branch1, activation=nn.SiLU, activation_on_last=False),
            interaction_branch2=MLP(in_dim, branch2, activation=nn.SiLU, activation_on_last=False),
        )
        self.out_dim = in_dim + (branch1[-1] // dim) * (branch2[-1] // dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, F·d + F1·F2]``: token 0, the projections, tokens 1..F-1.
        """
        return torch.cat([self.projection(tokens[:, 0], tokens[:, 1:]), tokens[:, 1:].flatten(1)], dim=1)


class DHENFlatInteraction(nn.Module):
    """The ``dot`` and ``dcn`` outputs concatenated (not the paper's layer: see
    :class:`DHENLayer`).

    Args:
        num_tokens: ``F``.
        dim: ``d``.
        num_layers: DCN cross layers.
        low_rank: DCN rank.
    """

    def __init__(self, num_tokens: int, dim: int, num_layers: int, low_rank: int) -> None:
        super().__init__()
        self.dot = DotInteraction(num_tokens, dim)
        self.dcn = DCNInteraction(num_tokens, dim, num_layers, low_rank)
        self.out_dim = self.dot.out_dim + self.dcn.out_dim

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, dot.out_dim + dcn.out_dim]``.
        """
        return torch.cat([self.dot(tokens), self.dcn(tokens)], dim=1)


class DHENLayer(nn.Module):
    """One DHEN layer (InterFormer §3.2): ``X' = LayerNorm(Ensemble(DOT(X), DCN(X)) +
    ShortCut(X))`` on ``F`` tokens of width ``d``.

    * ``DOT(X) = Linear(triu(X Xᵀ))``: the ``F(F-1)/2`` pairwise dot products mapped to
      ``F·d``.
    * ``DCN(X) = LowRankCrossNet(flatten(X))`` (DCNv2), ``F·d``.
    * ``Ensemble``: ``"concat"`` = ``Linear([DOT ; DCN])`` from ``2·F·d`` back to ``F·d``;
      ``"sum"`` = ``DOT + DCN``.
    * ``ShortCut(X) = Linear(flatten(X))``, ``F·d -> F·d``.
    * ``LayerNorm`` over each token's ``d``.

    Args:
        num_tokens: ``F``.
        dim: ``d``.
        dcn_layers: DCN cross layers.
        low_rank: DCN rank.
        ensemble: ``"concat"`` or ``"sum"``.
    """

    def __init__(self, num_tokens: int, dim: int, dcn_layers: int, low_rank: int, ensemble: str = "concat") -> None:
        super().__init__()
        if ensemble not in ("concat", "sum"):
            raise ValueError(f"model.interformer.dhen_ensemble={ensemble!r}: use concat or sum")
        if num_tokens < 2:
            raise ValueError("a DHEN layer needs at least 2 tokens")
        width = num_tokens * dim
        self.num_tokens, self.dim = num_tokens, dim
        self.pairs = DLRMInteractionArch(num_sparse_features=num_tokens - 1)
        self.dot = nn.Linear(num_tokens * (num_tokens - 1) // 2, width)
        self.dcn = LowRankCrossNet(in_features=width, num_layers=dcn_layers, low_rank=low_rank)
        self.ensemble = nn.Linear(2 * width, width) if ensemble == "concat" else None
        self.shortcut = nn.Linear(width, width)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, F, d]``.
        """
        flat = tokens.flatten(1)
        # torchrec's InteractionArch returns [dense ; triu dot products]: keep the products
        dots = self.pairs(tokens[:, 0], tokens[:, 1:])[:, self.dim :]
        dot, dcn = self.dot(dots), self.dcn(flat)
        mixed = self.ensemble(torch.cat([dot, dcn], dim=1)) if self.ensemble is not None else dot + dcn
        return self.norm((mixed + self.shortcut(flat)).view_as(tokens))


class DHENInteraction(nn.Module):
    """The paper's interaction: ``num_layers`` stacked :class:`DHENLayer`, flattened.

    Args:
        num_tokens: ``F``.
        dim: ``d``.
        num_layers: DHEN layers (the paper: 1-3).
        dcn_layers: DCN cross layers in each.
        low_rank: DCN rank.
        ensemble: ``"concat"`` or ``"sum"``.
    """

    def __init__(self, num_tokens: int, dim: int, num_layers: int, dcn_layers: int, low_rank: int, ensemble: str) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"model.interformer.dhen_layers={num_layers}: needs at least 1")
        self.layers = nn.Sequential(
            *(DHENLayer(num_tokens, dim, dcn_layers, low_rank, ensemble) for _ in range(num_layers))
        )
        self.out_dim = num_tokens * dim

    def forward(self, tokens: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, F, d]``.

        Returns:
            ``[B, F·d]``.
        """
        return self.layers(tokens).flatten(1)


def build_interaction(
    kind: str,
    num_tokens: int,
    dim: int,
    *,
    dcn_layers: int = 2,
    low_rank: int = 16,
    projection_branch1: Sequence[int] = (64, 64),
    projection_branch2: Sequence[int] = (64, 64),
    dhen_layers: int = 1,
    dhen_ensemble: str = "sum",
    token_types: Sequence[int] = (),
    num_heads: int = 1,
    infnet_proxies: int = 2,
    infnet_blocks: int = 1,
) -> nn.Module:
    """The interaction variant ``kind`` over ``num_tokens`` tokens of size ``dim``.

    Args:
        kind: ``"dot"``, ``"dcn"``, ``"projection"``, ``"dhen"``, ``"dhen_flat"`` or
            ``"infnet"``.
        num_tokens: ``F``.
        dim: ``d``.
        dcn_layers: DCN cross layers (``dcn``, ``dhen``, ``dhen_flat``).
        low_rank: DCN rank (``dcn``, ``dhen``, ``dhen_flat``).
        projection_branch1, projection_branch2: branch layer sizes (``projection``).
        dhen_layers: stacked DHEN layers (``dhen``).
        dhen_ensemble: ``"concat"`` or ``"sum"`` (``dhen``).
        token_types: tokens per type, summing to ``num_tokens`` (``infnet``; default: one
            type).
        num_heads: attention heads (``infnet``).
        infnet_proxies: proxies per type (``infnet``).
        infnet_blocks: alternating blocks (``infnet``; the proxies' FFN is ``4·d`` wide).
    """
    if kind == "dot":
        return DotInteraction(num_tokens, dim)
    if kind == "dcn":
        return DCNInteraction(num_tokens, dim, dcn_layers, low_rank)
    if kind == "projection":
        return ProjectionInteraction(num_tokens, dim, list(projection_branch1), list(projection_branch2))
    if kind == "dhen":
        return DHENInteraction(num_tokens, dim, dhen_layers, dcn_layers, low_rank, dhen_ensemble)
    if kind == "dhen_flat":
        return DHENFlatInteraction(num_tokens, dim, dcn_layers, low_rank)
    if kind == "infnet":
        types = list(token_types) or [num_tokens]
        if sum(types) != num_tokens:
            raise ValueError(f"token_types={types} do not sum to num_tokens={num_tokens}")
        return INFNetInteraction(types, dim, infnet_proxies, infnet_blocks, num_heads, 4 * dim)
    raise ValueError(f"interaction {kind!r}: use dot, dcn, projection, dhen, dhen_flat or infnet")


class InteractionArch(nn.Module):
    """Behaviour-aware interaction: ``X^{l+1} = LN(X^l + MLP(Interaction([X^l ; S_sum])))``
    (``LN``: a LayerNorm over each token's ``d``, if ``norm``); the MLP (hidden sizes
    ``mlp_layers``, last layer linear) maps the interaction vector back to ``n`` tokens.

    Args:
        num_tokens: ``n`` non-sequence tokens.
        dim: ``d``.
        interaction: a variant of :func:`build_interaction` over the ``n + k`` tokens
            ``[X ; S_sum]`` (``[B, n + k, d] -> [B, interaction.out_dim]``).
        mlp_layers: hidden sizes of the MLP.
        norm: LayerNorm on the residual stream.
    """

    def __init__(
        self, num_tokens: int, dim: int, interaction: nn.Module, mlp_layers: List[int], norm: bool = True
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.dim = dim
        self.interaction = interaction
        self.mlp = MLP(
            interaction.out_dim, [*mlp_layers, num_tokens * dim], activation=nn.SiLU, activation_on_last=False
        )
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: Tensor, s_sum: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]``.
            s_sum: ``[B, k, d]``.

        Returns:
            ``[B, n, d]``.
        """
        z = self.interaction(torch.cat([x, s_sum], dim=1))
        return self.norm(x + self.mlp(z).view(-1, self.num_tokens, self.dim))
