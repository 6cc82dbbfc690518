"""OneTrans (``model.name: onetrans``), after "OneTrans: Unified Feature Interaction and
Sequence Modeling with One Transformer" (ByteDance, 2025): feature interaction and
sequence modelling in one causal transformer over one token sequence.

::

    X [B, n, d]  non-sequence (NS) tokens: dense, pooled and target features
    S [B, T, d]  one token per history step, right-aligned (most recent at T-1)
    h = [S ; X]  [B, T+n, d]  oldest step ... most recent step, NS_0 ... NS_{n-1}
    h = OneTransLayer_l(h)  l = 0..L-1   (pyramid: fewer sequence tokens each layer)
    logits = OverArch(flatten(NS tokens of the last layer))    [B, tasks]

* **Causal attention** (:func:`onetrans_mask`): a token attends to the tokens before it
  and itself, never to a padded history step. Every NS token thus sees the whole history
  and the NS tokens before it; a sequence token sees only the steps before it.
* **Mixed parameterisation**: the sequence tokens share one set of parameters (the
  pre-LayerNorms, the Q/K/V and output projections, the FFN); each NS token has its own
  (:class:`TokenLinear`, :class:`TokenLayerNorm`, :class:`TokenFFN`: weights
  ``[n, d_in, d_out]``, one batched matmul).
* **Pyramid stacking** (:func:`pyramid_schedule`): layer ``l`` uses as queries only the
  most recent ``q_l`` sequence tokens and every NS token, with keys and values from all
  the tokens of its input, and passes on only its query tokens: the first layer keeps
  all ``T`` steps, the last none.

The history is right-aligned (:func:`~interformer_rec.ops.sequences.right_align`), so the
most recent step sits right before the NS tokens and the pyramid keeps the most recent
steps; padded steps sit at the front, where the causal mask hides them from every real
token. A padded query attends only to itself: its output is garbage that no real token
reads. There are no position embeddings; the causal mask orders the steps.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import ConfigError, ModelConfig, Schema
from interformer_rec.models.din import _over_arch_layers
from interformer_rec.models.tokens import TokenModel
from interformer_rec.ops.sequences import right_align


def pyramid_schedule(max_len: int, num_layers: int) -> List[int]:
    """Sequence tokens each layer keeps as queries: ``q_l = ceil(T·(L-1-l) / (L-1))``.

    The first layer queries all ``T`` steps, the last layer none (only the NS tokens),
    the layers between a linearly shrinking tail of the most recent steps (rounded up,
    so that no layer but the last drops the whole history while ``T >= 1``). A single
    layer queries no step.

    Args:
        max_len: ``T``.
        num_layers: ``L >= 1``.

    Returns:
        ``[q_0, ..., q_{L-1}]``, non-increasing, ``q_0 = T`` (for ``L > 1``), ``q_{L-1} = 0``.
    """
    if num_layers == 1:
        return [0]
    span = num_layers - 1
    return [-(-max_len * (span - l) // span) for l in range(num_layers)]


def onetrans_mask(key_valid: Tensor, num_queries: int) -> Tensor:
    """The attention mask of one layer: the queries are the last ``num_queries`` of the
    keys (query ``i`` is key ``K - Q + i``); query ``i`` may read key ``j`` iff ``j`` is not
    after it (causal) and ``j`` is valid, or ``j`` is the query itself.

    Args:
        key_valid: ``[B, K]`` bool, False at padded history steps.
        num_queries: ``Q <= K``.

    Returns:
        ``[B, Q, K]`` bool, True where attention is allowed; every row has a True.
    """
    K = key_valid.size(1)
    query_pos = torch.arange(K - num_queries, K, device=key_valid.device).unsqueeze(1)  # [Q, 1]
    key_pos = torch.arange(K, device=key_valid.device).unsqueeze(0)  # [1, K]
    causal = key_pos <= query_pos  # [Q, K]
    return (causal.unsqueeze(0) & key_valid.unsqueeze(1)) | (key_pos == query_pos).unsqueeze(0)


class TokenLinear(nn.Module):
    """``n`` linear maps, one per token: ``y[:, i] = x[:, i] @ W_i + b_i``, as one ``bmm``.
    Initialised like ``nn.Linear`` (uniform in ``±1/sqrt(d_in)``).

    Args:
        num_tokens: ``n``.
        in_features: ``d_in``.
        out_features: ``d_out``.
    """

    def __init__(self, num_tokens: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_tokens, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_tokens, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d_in]``.

        Returns:
            ``[B, n, d_out]``.
        """
        # bmm over the tokens ([n, B, d_in] @ [n, d_in, d_out]); einsum would guard batch != 1 under export
        return torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1) + self.bias


class TokenLayerNorm(nn.Module):
    """LayerNorm over ``d`` with a gain and a bias per token (``[n, d]``).

    Args:
        num_tokens: ``n``.
        dim: ``d``.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_tokens, dim))
        self.bias = nn.Parameter(torch.zeros(num_tokens, dim))

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]``.

        Returns:
            ``[B, n, d]``.
        """
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class TokenFFN(nn.Module):
    """A feed-forward network per token: ``TokenLinear(d -> h)``, GELU, ``TokenLinear(h -> d)``.

    Args:
        num_tokens: ``n``.
        dim: ``d``.
        hidden: ``h``.
    """

    def __init__(self, num_tokens: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = TokenLinear(num_tokens, dim, hidden)
        self.down = TokenLinear(num_tokens, hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, n, d]``.

        Returns:
            ``[B, n, d]``.
        """
        return self.down(F.gelu(self.up(x)))


class OneTransLayer(nn.Module):
    """One pre-norm OneTrans block over ``[S ; X]``:
    ``h = h + Attn(LN(h))``, ``h = h + FFN(LN(h))``, with shared parameters for the
    sequence tokens (``seq_*``, ``nn`` modules) and token-specific ones for the NS tokens
    (``ns_*``). Keys and values come from every input token; the queries, and the
    output, are the last ``num_queries`` sequence tokens and the ``n`` NS tokens. A layer
    that keeps no sequence token (the last of a pyramid) has only the sequence tokens'
    first LayerNorm and K/V projection: no parameter goes unused (DDP needs every one).

    Args:
        dim: ``d`` (divisible by ``num_heads``).
        num_heads: attention heads.
        ffn_hidden: the FFNs' hidden width.
        num_ns: ``n`` NS tokens.
        num_inputs: sequence tokens in the input ``m``.
        num_queries: sequence tokens kept ``q <= m`` (the most recent ones).
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_hidden: int, num_ns: int, num_inputs: int, num_queries: int
    ) -> None:
        super().__init__()
        if dim % num_heads or not 0 <= num_queries <= num_inputs:
            raise ConfigError(
                f"OneTransLayer: num_heads={num_heads} must divide dim={dim} and "
                f"0 <= num_queries={num_queries} <= num_inputs={num_inputs}"
            )
        self.num_heads = num_heads
        self.num_inputs = num_inputs
        self.num_queries = num_queries
        # shared by every sequence token; a layer that keeps no sequence token (the last
        # of a pyramid) only needs their keys and values, and has no unused parameters
        self.seq_norm1 = nn.LayerNorm(dim)
        self.seq_kv = nn.Linear(dim, 2 * dim)
        self.seq_q: Optional[nn.Linear] = None
        self.seq_out: Optional[nn.Linear] = None
        self.seq_norm2: Optional[nn.LayerNorm] = None
        self.seq_ffn: Optional[nn.Sequential] = None
        if num_queries:
            self.seq_q = nn.Linear(dim, dim)
            self.seq_out = nn.Linear(dim, dim)
            self.seq_norm2 = nn.LayerNorm(dim)
            self.seq_ffn = nn.Sequential(nn.Linear(dim, ffn_hidden), nn.GELU(), nn.Linear(ffn_hidden, dim))
        # one set per NS token
        self.ns_norm1 = TokenLayerNorm(num_ns, dim)
        self.ns_q = TokenLinear(num_ns, dim, dim)
        self.ns_kv = TokenLinear(num_ns, dim, 2 * dim)
        self.ns_out = TokenLinear(num_ns, dim, dim)
        self.ns_norm2 = TokenLayerNorm(num_ns, dim)
        self.ns_ffn = TokenFFN(num_ns, dim, ffn_hidden)

    def _heads(self, t: Tensor) -> Tensor:
        """``[B, L, d] -> [B, H, L, d/H]``."""
        B, L, d = t.shape
        return t.view(B, L, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, s: Tensor, x: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            s: ``[B, m, d]`` sequence tokens, oldest first (padded ones at the front).
            x: ``[B, n, d]`` NS tokens.
            valid: ``[B, m]`` bool, True at real steps.

        Returns:
            ``s' [B, q, d]`` (the last ``q`` sequence tokens) and ``x' [B, n, d]``.
        """
        q = self.num_queries
        keep = self.num_inputs - q
        a_s, a_x = self.seq_norm1(s), self.ns_norm1(x)
        keys, values = torch.cat([self.seq_kv(a_s), self.ns_kv(a_x)], dim=1).chunk(2, dim=-1)  # [B, m+n, d]
        queries = self.ns_q(a_x)
        if self.seq_q is not None:
            queries = torch.cat([self.seq_q(a_s[:, keep:]), queries], dim=1)  # [B, q+n, d]
        key_valid = torch.cat([valid, valid.new_ones(x.shape[:2])], dim=1)  # [B, m+n]
        mask = onetrans_mask(key_valid, q + x.size(1)).unsqueeze(1)  # [B, 1, q+n, m+n]
        attn = F.scaled_dot_product_attention(
            self._heads(queries), self._heads(keys), self._heads(values), attn_mask=mask
        )  # [B, H, q+n, d/H]
        # merge the heads of each part by concatenation: a reshape, or a linear layer on a
        # slice of the merged [B, q+n, d], would guard batch != 1 under torch.export
        heads = attn.unbind(1)
        x = x + self.ns_out(torch.cat([h[:, q:] for h in heads], dim=-1))
        x = x + self.ns_ffn(self.ns_norm2(x))
        s = s[:, keep:]
        if self.seq_out is not None and self.seq_norm2 is not None and self.seq_ffn is not None:
            s = s + self.seq_out(torch.cat([h[:, :q] for h in heads], dim=-1))
            s = s + self.seq_ffn(self.seq_norm2(s))
        return s, x


class OneTransStack(nn.Module):
    """The layers of OneTrans, the ``l``-th keeping ``schedule[l]`` sequence tokens.

    Args:
        dim: ``d``.
        num_heads: attention heads.
        ffn_hidden: the FFNs' hidden width.
        num_ns: ``n`` NS tokens.
        max_len: ``T`` sequence tokens in the first layer's input.
        schedule: sequence tokens each layer keeps (non-increasing, each ``<= T``).
    """

    def __init__(
        self, dim: int, num_heads: int, ffn_hidden: int, num_ns: int, max_len: int, schedule: List[int]
    ) -> None:
        super().__init__()
        inputs = [max_len] + schedule[:-1]
        self.schedule = list(schedule)
        self.layers = nn.ModuleList(
            OneTransLayer(dim, num_heads, ffn_hidden, num_ns, m, q) for m, q in zip(inputs, schedule)
        )

    def forward(self, s: Tensor, x: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            s: ``[B, T, d]`` right-aligned sequence tokens (most recent at ``T-1``).
            x: ``[B, n, d]`` NS tokens.
            valid: ``[B, T]`` bool, True at real steps (the last ``len_b`` positions).

        Returns:
            ``[B, n, d]`` the last layer's NS tokens. Whatever ``s`` holds at padded steps
            never changes it.
        """
        for layer, q in zip(self.layers, self.schedule):
            s, x = layer(s, x, valid)
            valid = valid[:, valid.size(1) - q:]
        return x


class OneTrans(TokenModel):
    """OneTrans: one causal transformer over ``[S ; X]`` (see the module docstring), the
    last layer's NS tokens flattened into ``MLP(cfg.onetrans.over_arch)`` (ReLU, dropout
    ``cfg.onetrans.dropout`` after each hidden layer) and a linear layer to ``tasks``
    logits.

    Args:
        schema: the data schema; needs a sequence feature and a non-sequence token.
        cfg: ``cfg.embedding_dim`` and ``cfg.onetrans`` size it; ``pyramid: false`` keeps
            every sequence token in every layer.
        embedding_device: device of the embedding tables (``meta`` for DMP).
    """

    def __init__(self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None) -> None:
        super().__init__(schema, cfg.embedding_dim, "onetrans", embedding_device)
        c = cfg.onetrans
        d = cfg.embedding_dim
        T = self.max_len
        schedule = pyramid_schedule(T, c.num_layers) if c.pyramid else [T] * c.num_layers
        self.stack = OneTransStack(d, c.num_heads, c.ffn_hidden, self.num_tokens, T, schedule)
        self.over_arch = nn.Sequential(
            *_over_arch_layers(self.num_tokens * d, c.over_arch, c.dropout),
            nn.Linear(c.over_arch[-1], len(schema.labels)),
        )

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
        x, s, valid = self.tokens(dense, sparse, sequence, floats)  # s left-aligned, zeros at padded steps
        lengths = valid.sum(1)
        s = right_align(s, lengths)
        valid = torch.arange(self.max_len, device=s.device) >= (self.max_len - lengths).unsqueeze(1)
        return self.over_arch(self.stack(s, x, valid).flatten(1))
