"""The shared front of the token models (INFNet, OneTrans): every feature as a token of
width ``d``, on the same TorchRec embeddings as InterFormer.

* Sequence tokens ``S [B, T, d]``: one per history step, the ``k`` parallel sequences'
  embeddings of the step concatenated and projected to ``d`` (as in BST), left-aligned,
  with ``valid [B, T]`` marking the real steps.
* Non-sequence tokens ``X [B, n, d]``: one per dense field (:class:`DenseTokens`), per
  pooled feature (``EmbeddingBagCollection``), the *target step* and one per other
  target feature (``EmbeddingCollection``), read by name. The target step is built like
  a history step, by the same projection, from the target features that share each
  sequence's table (zeros for a sequence without one, as in BST and DIN): a target item
  equal to a history item gives the same token, so attention can match them from the
  first step (with the raw target embedding, a match has to be learned through two
  different maps and a planted target-in-history signal was not learned in 10 epochs).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import ConfigError, Schema
from interformer_rec.models.baselines import target_slots
from interformer_rec.modules.continuous import require_floats, sequence_floats
from interformer_rec.modules.embeddings import DenseTokens, build_ebc, build_ec, build_mc_ec, pooled_tokens, unpooled_lookup, unpooled_tokens


class TokenModel(nn.Module):
    """Base of the models that see the features as two token types.

    Args:
        schema: the data schema; needs a sequence feature and a non-sequence token.
        dim: ``d``.
        name: the model's config name, for error messages.
        embedding_device: device of ``ebc`` / ``ec`` (``meta`` under DMP).

    Attributes:
        ebc: pooled features (``None`` without any); ``ec``: target features and sequences.
        num_tokens: ``n`` non-sequence tokens.
        max_len: ``T``.
    """

    def __init__(self, schema: Schema, dim: int, name: str, embedding_device: Optional[torch.device] = None) -> None:
        super().__init__()
        if not schema.sequence:
            raise ConfigError(f"model.name={name!r} needs at least one schema.sequence feature")
        self.pooled_names: List[str] = [f.name for f in schema.pooled_features]
        self.target_names: List[str] = [f.name for f in schema.target_features]
        self.sequence_names: List[str] = [s.name for s in schema.sequence]
        self.max_len = schema.max_len
        self.dim = dim
        self.target_slots: List[Optional[str]] = target_slots(schema)
        self.has_target_step = any(n is not None for n in self.target_slots)
        # target features outside the target step (a second feature of a shared table)
        self.extra_target_names = [n for n in self.target_names if n not in self.target_slots]
        self.num_tokens = (
            len(schema.dense) + len(self.pooled_names) + int(self.has_target_step) + len(self.extra_target_names)
        )
        if self.num_tokens == 0:
            raise ConfigError(f"model.name={name!r} needs at least one dense, pooled or target feature")
        self.ebc: Optional[EmbeddingBagCollection] = build_ebc(schema, dim, embedding_device)
        self.ec = build_ec(schema, dim, embedding_device)
        self.mc_ec = build_mc_ec(schema, dim, embedding_device)
        self.dense_tokens = DenseTokens(len(schema.dense), dim) if schema.dense else None
        step_dim = len(self.sequence_names) * dim
        self.floats = sequence_floats(schema, step_dim, dim)
        self.step_proj = nn.Linear(step_dim if self.floats is None else self.floats.out_dim, dim)

    def tokens(
        self, dense: Tensor, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor, floats: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Embedding lookups as tokens.

        Args:
            dense: ``[B, n_dense]``.
            sparse: pooled features (keys ``schema.pooled_features``).
            sequence: target features then sequences (keys ``schema.unpooled_keys``).
            floats: ``[V_f, n_float]`` sequence floats, merged into each step before
                its projection (the target step gets the merge's neutral value).

        Returns:
            ``X [B, n, d]`` (dense, pooled, target step, other target tokens in that
            order),
            ``S [B, T, d]`` (left-aligned, zeros at padded steps) and
            ``valid [B, T]`` bool, True at real steps.
        """
        parts = []
        if self.dense_tokens is not None:
            parts.append(self.dense_tokens(dense))
        if self.ebc is not None:
            parts.append(pooled_tokens(self.ebc(sparse), self.pooled_names))
        jts = unpooled_lookup(self.ec, self.mc_ec, sequence)
        _, steps, lengths = unpooled_tokens(jts, [], self.sequence_names, self.max_len, batch_len=False)
        # to_padded_dense with length 1 gives a zero vector for a missing target id
        targets = {n: jts[n].to_padded_dense(desired_length=1) for n in self.target_names}  # each [B, 1, d]
        if self.has_target_step:
            zeros = steps.new_zeros(steps.size(0), 1, self.dim)
            target_step = torch.cat([targets[n] if n else zeros for n in self.target_slots], dim=-1)
            if self.floats is not None:
                target_step = self.floats.target(target_step)
            parts.append(self.step_proj(target_step))
        parts += [targets[n] for n in self.extra_target_names]
        valid = torch.arange(self.max_len, device=lengths.device) < lengths.unsqueeze(1)
        if self.floats is not None:
            steps = self.floats(steps, require_floats(floats), lengths)
        s = self.step_proj(steps).masked_fill(~valid.unsqueeze(-1), 0.0)
        return torch.cat(parts, dim=1), s, valid
