"""Deep Interest Network (Zhou et al., 2018, arXiv 1706.06978) as a baseline.

DIN pools the behaviour history with *target attention*: a local activation unit (§4.3)
scores each history step against the target item, and the user interest is the sum of
the steps weighted by those scores, which are **not** softmax-normalised (the paper keeps
their scale, so the interest's norm says how much of the history is relevant).

The model follows the project's contract (see :mod:`interformer_rec.models.baselines`)::

    model = DIN(schema, cfg, embedding_device)
    logits = model(dense, sparse, sequence)  # [B, len(schema.labels)]

and builds its embeddings as :class:`~interformer_rec.models.baselines.BST` does: an
``EmbeddingCollection`` for the target features and the sequences (shared tables), an
``EmbeddingBagCollection`` for the other pooled features, read by name.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from interformer_rec.config import ModelConfig, Schema
from interformer_rec.models.baselines import _check, target_slots
from interformer_rec.modules.continuous import require_floats, sequence_floats
from interformer_rec.modules.embeddings import build_ebc, build_ec, build_mc_ec, unpooled_lookup, unpooled_tokens
from interformer_rec.ops.sequences import masked_mean


class LocalActivationUnit(nn.Module):
    """DIN's local activation unit (§4.3, Fig. 2): for each history step ``v`` and the
    target ``e``, ``a = MLP([e ; v ; e - v ; e ⊙ v])``, a scalar. Hidden layers are
    ``Linear`` + ``PReLU`` (one slope per unit; the paper uses PReLU or Dice), the last
    layer is ``Linear(-> 1)``. The weights are not normalised; padded steps get weight
    exactly 0, whatever their vectors hold.

    Args:
        dim: step / target vector size ``D``.
        hidden: hidden layer sizes (may be empty: one linear layer).
    """

    def __init__(self, dim: int, hidden: List[int]) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU(h)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, target: Tensor, steps: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            target: ``[B, D]`` the target vector ``e``.
            steps: ``[B, T, D]`` the history step vectors ``v``.
            valid: ``[B, T]`` bool, True at real steps.

        Returns:
            ``[B, T]`` attention weights, 0 at padded steps.
        """
        # padded steps are zeroed before the MLP too, so no value there reaches a gradient
        steps = steps.masked_fill(~valid.unsqueeze(-1), 0.0)
        e = target.unsqueeze(1).expand_as(steps)
        features = torch.cat([e, steps, e - steps, e * steps], dim=-1)  # [B, T, 4D]
        # PReLU's slopes are per channel of dim 1: run the MLP on [B*T, 4D]
        scores = self.mlp(features.flatten(0, 1)).view(valid.shape)
        return scores.masked_fill(~valid, 0.0)


class DINAttentionPooling(nn.Module):
    """User interest ``Σ_t a_t · v_t`` with ``a`` from :class:`LocalActivationUnit`;
    an empty history gives the zero vector.

    Args:
        dim: step / target vector size ``D``.
        hidden: the activation unit's hidden layer sizes.
    """

    def __init__(self, dim: int, hidden: List[int]) -> None:
        super().__init__()
        self.activation_unit = LocalActivationUnit(dim, hidden)

    def forward(self, target: Tensor, steps: Tensor, valid: Tensor) -> Tensor:
        """
        Args:
            target: ``[B, D]``.
            steps: ``[B, T, D]``.
            valid: ``[B, T]`` bool, True at real steps.

        Returns:
            ``[B, D]`` the user interest.
        """
        weights = self.activation_unit(target, steps, valid)  # [B, T], 0 at padded steps
        steps = steps.masked_fill(~valid.unsqueeze(-1), 0.0)
        return torch.bmm(weights.unsqueeze(1), steps).squeeze(1)


class DIN(nn.Module):
    """Deep Interest Network (Zhou et al., 2018, arXiv 1706.06978).

    Each history step's vector is the concatenation of the ``k`` parallel sequences'
    embeddings at that step (``D = k*d``); the target vector is the concatenation of the
    target features that share each sequence's table (zeros for a sequence without one),
    as in :class:`~interformer_rec.models.baselines.BST`, so a target equal to a history
    step gives the same vector. :class:`DINAttentionPooling` turns the history into the
    user interest; ``MLP(cfg.din.over_arch)`` (ReLU, dropout ``cfg.din.dropout`` after
    each hidden layer) and a final linear layer to ``tasks`` logits read
    ``[interest ; target vector ; mean-pooled history ; pooled features (by name) ;
    dense floats]``, plus any target feature the target vector leaves out (a second
    target feature of one shared table), so none is fed twice.

    Args:
        schema: the data schema; needs at least one sequence feature.
        cfg: ``cfg.embedding_dim`` and ``cfg.din`` size it.
        embedding_device: device of the embedding tables (``meta`` for DMP).
    """

    def __init__(
        self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        d = cfg.embedding_dim
        dc = cfg.din
        _check(bool(schema.sequence), "model.name='din' needs at least one schema.sequence feature")
        self.max_len = schema.max_len
        self.dim = d
        self.pooled_names: List[str] = [f.name for f in schema.pooled_features]
        self.target_names: List[str] = [f.name for f in schema.target_features]
        self.sequence_names: List[str] = [s.name for s in schema.sequence]
        self.target_slots: List[Optional[str]] = target_slots(schema)
        # target features outside the target vector (a second feature of a shared table)
        self.extra_target_names: List[str] = [n for n in self.target_names if n not in self.target_slots]
        self.ebc: Optional[EmbeddingBagCollection] = build_ebc(schema, d, embedding_device)
        self.ec = build_ec(schema, d, embedding_device)
        self.mc_ec = build_mc_ec(schema, d, embedding_device)
        self.floats = sequence_floats(schema, len(self.sequence_names) * d, d)
        step_dim = len(self.sequence_names) * d if self.floats is None else self.floats.out_dim
        self.attention = DINAttentionPooling(step_dim, dc.attention_mlp)
        in_features = (
            3 * step_dim
            + (len(self.extra_target_names) + len(self.pooled_names)) * d
            + len(schema.dense)
        )
        self.over_arch = nn.Sequential(
            *_over_arch_layers(in_features, dc.over_arch, dc.dropout),
            nn.Linear(dc.over_arch[-1], len(schema.labels)),
        )

    def history(self, jts: Dict[str, JaggedTensor], floats: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The padded history and its mask from the EmbeddingCollection output.

        Args:
            jts: EC output by feature name (values ``[sum(lengths), d]``).
            floats: ``[V_f, n_float]`` sequence floats, merged into each step.

        Returns:
            ``steps [B, T, D]`` (``D = k*d`` or the merged width; left-aligned, zeros at
            padded steps) and ``valid [B, T]`` bool, True at real steps.
        """
        _, steps, lengths = unpooled_tokens(jts, [], self.sequence_names, self.max_len)  # T: the batch's longest
        T = steps.size(1)
        valid = torch.arange(T, device=lengths.device) < lengths.unsqueeze(1)
        if self.floats is not None:
            steps = self.floats(steps, require_floats(floats), lengths)
        return steps, valid

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
        jts: Dict[str, JaggedTensor] = unpooled_lookup(self.ec, self.mc_ec, sequence)
        steps, valid = self.history(jts, floats)  # [B, T, D], [B, T]
        # to_padded_dense with length 1 gives a zero vector for a missing target id
        targets = {n: jts[n].to_padded_dense(desired_length=1).squeeze(1) for n in self.target_names}
        zeros = steps.new_zeros(steps.size(0), self.dim)
        target = torch.cat([targets[n] if n is not None else zeros for n in self.target_slots], dim=-1)
        if self.floats is not None:
            target = self.floats.target(target)
        parts = [self.attention(target, steps, valid), target, masked_mean(steps, valid)]
        parts += [targets[n] for n in self.extra_target_names]
        if self.ebc is not None:
            pooled = self.ebc(sparse).to_dict()
            parts += [pooled[n] for n in self.pooled_names]
        parts.append(dense)
        return self.over_arch(torch.cat(parts, dim=1))


def _over_arch_layers(in_features: int, sizes: List[int], dropout: float) -> List[nn.Module]:
    """``MLP(in_features, sizes)`` (TorchRec perceptrons, ReLU) with ``Dropout`` after each
    hidden layer; one layer layout whatever ``dropout`` is (``0``: identity), so that
    parameter names do not depend on it.

    Args:
        in_features: input width.
        sizes: hidden layer sizes (non-empty).
        dropout: dropout probability after each hidden layer.
    """
    layers: List[nn.Module] = []
    for size in sizes:
        layers += [MLP(in_features, [size]), nn.Dropout(dropout)]
        in_features = size
    return layers
