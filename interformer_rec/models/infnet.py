"""INFNet as a standalone model (``model.name: infnet``), on the same embeddings and
trainer as InterFormer.

::

    X [B, n, d]  non-sequence tokens (dense, pooled, target features)
    S [B, T, d]  one token per history step (+ a learned recency position)
    K [B, tasks, d]  learned task tokens
    (X', S', K'), P = INFNetEncoder([X, S, K])    M proxies per type, num_blocks blocks
    logits = OverArch([flatten(X') ; flatten(K') ; flatten(P)])    [B, tasks]

The encoder (:mod:`interformer_rec.modules.infnet`) costs ``O(M·(n + T + tasks)·d)`` per
block: linear in the history length. The readout never reads the sequence tokens
directly; the history reaches it through the proxies, which attend to every real step
(padded steps are never attended to).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import INFNetConfig, ModelConfig, Schema
from interformer_rec.models.din import _over_arch_layers
from interformer_rec.models.tokens import TokenModel
from interformer_rec.modules.infnet import INFNetEncoder


class INFNetArch(nn.Module):
    """Everything after the lookups: recency positions and task tokens, the encoder, the
    over arch. One module so that TorchRec's train pipeline, which fx-traces the model,
    sees it as one call returning one tensor.

    Args:
        num_tokens: ``n``.
        max_len: ``T``.
        num_tasks: task tokens and logits.
        dim: ``d``.
        cfg: ``model.infnet``.
    """

    def __init__(self, num_tokens: int, max_len: int, num_tasks: int, dim: int, cfg: INFNetConfig) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)  # by recency: 0 = most recent
        self.task_tokens = nn.Parameter(torch.randn(num_tasks, dim) / dim**0.5)
        self.encoder = INFNetEncoder(
            [num_tokens, max_len, num_tasks], dim, cfg.num_proxies, cfg.num_blocks, cfg.num_heads, cfg.ffn_hidden
        )
        in_features = (num_tokens + num_tasks + 3 * cfg.num_proxies) * dim
        self.over_arch = nn.Sequential(
            *_over_arch_layers(in_features, cfg.over_arch, cfg.dropout), nn.Linear(cfg.over_arch[-1], num_tasks)
        )

    def forward(self, x: Tensor, s: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]`` non-sequence tokens.
            s: ``[B, T, d]`` sequence tokens, left-aligned.
            valid: ``[B, T]`` bool, True at real steps.

        Returns:
            ``[B, tasks]`` logits.
        """
        T = s.size(1)
        recency = (valid.sum(1, keepdim=True) - 1 - torch.arange(T, device=s.device)).clamp(min=0)  # [B, T]
        s = s + self.position[recency]
        # materialised, not expand()ed: a stride-0 batch makes torch.export guard the batch size
        tasks = x.new_zeros(x.size(0), *self.task_tokens.shape) + self.task_tokens
        (x, _, tasks), proxies = self.encoder([x, s, tasks], [None, valid, None])
        return self.over_arch(torch.cat([x.flatten(1), tasks.flatten(1), proxies.flatten(1)], dim=1))


class INFNet(TokenModel):
    """INFNet-style ranking model: three token types (non-sequence, the behaviour
    sequence, tasks), each with ``cfg.infnet.num_proxies`` proxies, and
    ``cfg.infnet.num_blocks`` alternating heterogeneous / homogeneous blocks
    (:class:`INFNetArch`).

    Args:
        schema: the data schema; needs a sequence feature and a non-sequence token.
        cfg: ``cfg.embedding_dim`` and ``cfg.infnet`` size it.
        embedding_device: device of the embedding tables (``meta`` for DMP).
    """

    def __init__(self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None) -> None:
        super().__init__(schema, cfg.embedding_dim, "infnet", embedding_device)
        self.arch = INFNetArch(self.num_tokens, self.max_len, len(schema.labels), cfg.embedding_dim, cfg.infnet)

    def forward(
        self, dense: Tensor, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor, floats: Optional[Tensor] = None
    ) -> Tensor:
        """
        Args:
            dense: ``[B, n_dense]`` float.
            sparse: pooled features, keys ``schema.pooled_features``.
            sequence: keys ``schema.unpooled_keys`` (targets, then sequences).
            floats: ``[V_f, n_float]`` sequence floats (``None`` without any).

        Returns:
            ``[B, tasks]`` logits.
        """
        return self.arch(*self.tokens(dense, sparse, sequence, floats))
