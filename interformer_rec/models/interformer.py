"""InterFormer (Zeng et al., arXiv 2411.09852) on TorchRec embeddings.

::

    dense ─► DenseTokens ─┐
    sparse ─► ebc ────────┼─► X¹ [B, n, d]
    sequence ─► ec ─┬─ targets ┘
                    └─ steps [B, T, k·d] ─► MaskNet ─► [B, T, d]
    S¹ = [CLS = SelfGating(LCE(X¹)) ; steps]               [B, c + T, d]
    layer l = 1..L:  X_sum, S_sum = CrossArch(X^l, S^l)
                     X^{l+1} = InteractionArch(X^l, S_sum)
                     S^{l+1} = SequenceArch(S^l, X_sum)
    X_sum, S_sum = CrossArch(X^{L+1}, S^{L+1})
    logits = OverArch([flatten(X_sum) ; flatten(S_sum) ; a (; flatten(X^{L+1}))])  [B, tasks]

Beyond the paper (``model.interformer.target_attention``, on by default): the last token
of X¹ is ``a``, DIN's target attention over the raw history steps
(:class:`TargetAttentionToken`), which the over-arch also reads directly
(``target_attention_direct``); with ``target_attention: false`` the model is the paper's.
With ``readout_tokens`` the over-arch also reads the last layer's tokens ``X^{L+1}``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import ConfigError, InterFormerConfig, ModelConfig, Schema
from interformer_rec.models.baselines import target_slots
from interformer_rec.models.din import DINAttentionPooling
from interformer_rec.modules.continuous import require_floats, sequence_floats
from interformer_rec.modules.cross import CrossArch, NonSequenceSummary
from interformer_rec.modules.embeddings import (
    DenseTokens,
    ProjectedDenseToken,
    build_ebc,
    build_ec,
    build_mc_ec,
    pad_steps,
    padded_length,
    pooled_tokens,
    step_values,
    target_tokens,
    unpooled_lookup,
    unpooled_tokens,
)
from interformer_rec.modules.interaction import InteractionArch, build_interaction
from interformer_rec.modules.sequence import MaskNet, SequenceArch
from interformer_rec.modules.task_heads import build_task_heads
from interformer_rec.ops.positions import recency_positions
from interformer_rec.ops.sequences import match_tokens


class SimilarityTokens(nn.Module):
    """Target-history similarity tokens: for each pair ``(i, j)`` of a target feature and
    a sequence of the same table, the history's steps averaged with the signed weights
    ``w_t = cos(target_i, h_{t,j}) / Σ_t' |cos(target_i, h_{t',j})|``:
    ``token = Σ_t w_t · V(step_t)``, where ``step_t`` is the whole step (all ``k``
    sequences: the history item *with* its rating, say) and ``V`` a linear map to ``d``.

    This is item-based collaborative filtering made differentiable: with item embeddings
    whose cosines are co-rating similarities (``data.corating``), the token carries how
    the user rated the items most like the target, which a sum-pooled history cannot
    give. Unlike softmax target attention (DIN), the weights keep their sign and scale.

    Args:
        pairs: ``(target index, sequence index)`` pairs.
        num_sequences: ``k``.
        dim: ``d``.
    """

    def __init__(self, pairs: List[Tuple[int, int]], num_sequences: int, dim: int) -> None:
        super().__init__()
        self.pairs = pairs
        self.num_sequences = num_sequences
        self.target_idx, self.sequence_idx = (list(idx) for idx in zip(*pairs))
        self.values = nn.ModuleList([nn.Linear(num_sequences * dim, dim) for _ in pairs])

    def forward(self, targets: Tensor, steps: Tensor) -> Tensor:
        """
        Args:
            targets: ``[B, n_target, d]``.
            steps: ``[B, T, k·d]`` (zeros at padded steps, whose weight is then 0).

        Returns:
            ``[B, P, d]``, ``P = len(pairs)``.
        """
        B, T, _ = steps.shape
        history = F.normalize(steps.view(B, T, self.num_sequences, -1)[:, :, self.sequence_idx], dim=-1)  # [B, T, P, d]
        cos = (history * F.normalize(targets[:, self.target_idx], dim=-1).unsqueeze(1)).sum(-1)  # [B, T, P]
        w = cos / (cos.abs().sum(1, keepdim=True) + 1e-3)
        # every pair's V in one matmul: [B, T, P·d]
        weight = torch.cat([v.weight for v in self.values])
        bias = torch.cat([v.bias for v in self.values])
        values = F.linear(steps, weight, bias).view(B, T, len(self.pairs), -1)
        return (w.unsqueeze(-1) * values).sum(1)


class TargetAttentionToken(nn.Module):
    """DIN's target attention as one non-sequence token (not in the paper): the target
    "step" (for each of the ``k`` sequences, the embedding of the target feature sharing
    its table, zeros where none, as :class:`~interformer_rec.models.din.DIN` builds it)
    queries the raw history steps through DIN's local activation unit (``MLP([e ; v ;
    e − v ; e ⊙ v])``, weights not normalised, 0 at padded steps); the interest ``Σ_t a_t
    v_t`` is mapped to ``d``. The target meets the history in the embeddings' own space,
    before MaskNet, so matching an item need not be learned across two maps.

    Args:
        slots: per sequence, the index of its target feature in ``targets`` (or ``None``).
        dim: ``d``.
        hidden: the activation unit's hidden sizes.
    """

    def __init__(self, slots: List[Optional[int]], dim: int, hidden: List[int]) -> None:
        super().__init__()
        self.slots = slots
        self.dim = dim
        self.pooling = DINAttentionPooling(len(slots) * dim, hidden)
        self.out = nn.Linear(len(slots) * dim, dim)

    def forward(self, targets: Tensor, steps: Tensor, lengths: Tensor) -> Tensor:
        """
        Args:
            targets: ``[B, n_target, d]``.
            steps: ``[B, T, k·d]`` raw history steps (values at padded steps ignored).
            lengths: ``[B]`` real steps per row.

        Returns:
            ``[B, 1, d]``.
        """
        zeros = targets.new_zeros(targets.shape[0], self.dim)
        target = torch.cat([targets[:, i] if i is not None else zeros for i in self.slots], dim=-1)
        valid = torch.arange(steps.shape[1], device=steps.device).unsqueeze(0) < lengths.unsqueeze(1)
        return self.out(self.pooling(target, steps, valid)).unsqueeze(1)


class InterFormerLayer(nn.Module):
    """One InterFormer layer: Cross Arch first, then the Interaction and Sequence Arches,
    which depend only on this layer's summaries (and could run in parallel).

    Args:
        cross_arch: ``(X^l, S^l) -> (X_sum, S_sum)``.
        interaction_arch: ``(X^l, S_sum) -> X^{l+1}``.
        sequence_arch: ``(S^l, X_sum) -> S^{l+1}``.
    """

    def __init__(self, cross_arch: CrossArch, interaction_arch: InteractionArch, sequence_arch: SequenceArch) -> None:
        super().__init__()
        self.cross_arch = cross_arch
        self.interaction_arch = interaction_arch
        self.sequence_arch = sequence_arch

    def forward(self, x: Tensor, s: Tensor, valid: Tensor, lengths: Tensor, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """
        Args:
            x: ``[B, n, d]`` non-sequence tokens ``X^l``.
            s: ``[B, c + T, d]`` sequence ``S^l`` (CLS first, zeros at padded steps).
            valid: ``[B, c + T]`` bool.
            lengths: ``[B]`` real steps per row.
            positions: ``[B, c + T]`` rotary positions
                (:func:`~interformer_rec.ops.positions.recency_positions`).

        Returns:
            ``X^{l+1} [B, n, d]``, ``S^{l+1} [B, c + T, d]``.
        """
        x_sum, s_sum = self.cross_arch(x, s, valid, lengths)
        return self.interaction_arch(x, s_sum), self.sequence_arch(s, x_sum, valid, positions)


class InterFormerArch(nn.Module):
    """The dense part of InterFormer, everything after the embedding lookups: MaskNet,
    the CLS tokens, ``L`` layers, the final Cross Arch and the over-arch
    (:func:`build_arch` sizes them from the config).

    One module (not a list of siblings of the embedding modules) so that TorchRec's
    train pipeline treats it as a single leaf when it fx-traces the model.

    Args:
        masknet: ``[B, T, k·d] -> [B, T, d]`` per-step embeddings to ``S¹``'s steps.
        cls_summary: ``X¹ [B, n, d] -> [B, c, d]``, the CLS tokens of ``S¹``.
        layers: the ``L`` layers.
        final_cross_arch: summaries ``X_sum [B, c, d]``, ``S_sum [B, c + p + K, d]`` of
            the last layer's output.
        over_arch: ``[B, (2c + p + K + r (+ n))·d] -> [B, tasks]`` logits.
        num_direct: ``r``, the last ``r`` tokens of ``X¹`` that the over-arch also reads
            directly (the target-attention token, :class:`TargetAttentionToken`).
        readout_tokens: the over-arch also reads ``X^{L+1}`` (``n·d`` more inputs).
    """

    def __init__(
        self,
        masknet: MaskNet,
        cls_summary: NonSequenceSummary,
        layers: Sequence[InterFormerLayer],
        final_cross_arch: CrossArch,
        over_arch: nn.Module,
        num_direct: int = 0,
        readout_tokens: bool = False,
    ) -> None:
        super().__init__()
        self.num_cls = cls_summary.num_summary
        self.num_direct = num_direct
        self.readout_tokens = readout_tokens
        self.masknet = masknet
        self.cls_summary = cls_summary
        self.layers = nn.ModuleList(layers)
        self.final_cross_arch = final_cross_arch
        self.over_arch = over_arch

    def forward(self, x: Tensor, steps: Tensor, lengths: Tensor, T: Optional[int] = None) -> Tensor:
        """Everything after the lookups (the dense part of the model), on padded steps
        or, given ``T``, on jagged steps: MaskNet then runs on the real steps only (the
        EmbeddingCollection's values) and its output is padded to ``T``.

        Args:
            x: ``[B, n, d]`` non-sequence tokens ``X¹``.
            steps: ``[B, T, k·d]`` per-step sequence embeddings, left-aligned (values at
                padded steps are ignored); or, with ``T``, ``[V, k·d]`` every row's real
                steps, row-major (``sum(lengths) = V``).
            lengths: ``[B]`` real steps per row (``<= T``; with jagged steps, rows
                longer than ``T`` keep their first ``T`` steps).
            T: the padded length, for jagged ``steps``.

        Returns:
            ``[B, tasks]`` logits.
        """
        if T is not None:
            return self.forward_steps(x, pad_steps(self.masknet(steps), lengths, T), lengths.clamp(max=T))
        step_valid = torch.arange(steps.shape[1], device=steps.device).unsqueeze(0) < lengths.unsqueeze(1)
        return self.forward_steps(x, self.masknet(steps, step_valid), lengths)

    def forward_steps(self, x: Tensor, steps: Tensor, lengths: Tensor) -> Tensor:
        """Everything after MaskNet.

        Args:
            x: ``[B, n, d]``.
            steps: ``[B, T, d]`` MaskNet's output, zeros at padded steps.
            lengths: ``[B]`` real steps per row (``<= T``).

        Returns:
            ``[B, tasks]`` logits.
        """
        T = steps.shape[1]
        step_valid = torch.arange(T, device=steps.device).unsqueeze(0) < lengths.unsqueeze(1)
        # CLS positions are always valid
        valid = F.pad(step_valid, (self.num_cls, 0), value=True)
        positions = recency_positions(lengths, self.num_cls, T)
        s = torch.cat([self.cls_summary(x), steps], dim=1)  # S¹ [B, c + T, d]
        # the last r tokens of X¹, each [B, d] (unbind, not a flattened slice: no batch-1 guard under export)
        direct = list(x[:, x.shape[1] - self.num_direct :].unbind(1)) if self.num_direct else []
        for layer in self.layers:
            x, s = layer(x, s, valid, lengths, positions)
        x_sum, s_sum = self.final_cross_arch(x, s, valid, lengths)
        tokens = [x.flatten(1)] if self.readout_tokens else []
        return self.over_arch(torch.cat([x_sum.flatten(1), s_sum.flatten(1), *direct, *tokens], dim=1))


def build_arch(
    cfg: InterFormerConfig, num_tokens: int, step_dim: int, num_tasks: int, dim: int, num_direct: int = 0
) -> InterFormerArch:
    """:class:`InterFormerArch` sized by ``cfg`` (the one place the modules' sizes are read
    from the config).

    Args:
        cfg: InterFormer sizes.
        num_tokens: ``n`` non-sequence tokens.
        step_dim: width of a step before MaskNet (``k·d`` for ``k`` parallel sequences,
            more with sequence floats concatenated).
        num_tasks: logits per example.
        dim: ``d``.
        num_direct: the last tokens of ``X¹`` the over-arch also reads directly.
    """
    c, p, k = cfg.num_cls, cfg.num_pma, cfg.num_recent

    def cross_arch() -> CrossArch:
        return CrossArch(num_tokens, c, p, k, dim, cfg.num_heads, pma_context=cfg.pma_context)

    def layer() -> InterFormerLayer:
        cross = cross_arch()
        interaction = build_interaction(
            cfg.interaction,
            num_tokens + c + p + k,
            dim,
            dcn_layers=cfg.dcn_num_layers,
            low_rank=cfg.dcn_low_rank,
            projection_branch1=cfg.projection_branch1,
            projection_branch2=cfg.projection_branch2,
            dhen_layers=cfg.dhen_layers,
            dhen_ensemble=cfg.dhen_ensemble,
            token_types=(num_tokens, c + p + k),
            num_heads=cfg.num_heads,
            infnet_proxies=cfg.infnet_proxies,
            infnet_blocks=cfg.infnet_blocks,
        )
        return InterFormerLayer(
            cross,
            InteractionArch(num_tokens, dim, interaction, cfg.interaction_mlp, norm=cfg.interaction_norm),
            SequenceArch(
                c,
                dim,
                cfg.num_heads,
                ffn_hidden=cfg.ffn_hidden,
                rope=cfg.rope,
                dropout=cfg.dropout,
                window=cfg.attention_window,
                attention_dropout=cfg.attention_dropout,
                pffn_generator=cfg.pffn_generator,
            ),
        )

    # constructed in registration order: a seed's initial weights follow the module tree
    masknet = MaskNet(step_dim, cfg.masknet_hidden, dim)
    cls_summary = NonSequenceSummary(num_tokens, c, dim)
    layers = [layer() for _ in range(cfg.num_layers)]
    final_cross_arch = cross_arch()
    readout = num_tokens if cfg.readout_tokens else 0
    over_arch = build_task_heads(
        cfg.task_heads, (2 * c + p + k + num_direct + readout) * dim, cfg.over_arch, num_tasks, cfg.num_experts
    )
    return InterFormerArch(masknet, cls_summary, layers, final_cross_arch, over_arch, num_direct, cfg.readout_tokens)


class InterFormer(nn.Module):
    """InterFormer CTR model.

    Args:
        schema: feature roles; needs at least one sequence feature and one non-sequence
            token (dense, pooled or target feature).
        cfg: ``cfg.embedding_dim`` is ``d``; ``cfg.interformer`` the sizes.
        embedding_device: device of ``ebc`` / ``ec`` (``torch.device("meta")`` when
            DistributedModelParallel materializes them); nothing else reads their weights
            at init.

    Attributes:
        ebc: ``EmbeddingBagCollection`` of the pooled features (``None`` if there are none).
        ec: ``EmbeddingCollection`` of the target features and the sequences.
        num_tokens: ``n`` = dense (one per field, or one projected token) + pooled +
            target features (+ match, similarity and target-attention tokens).
    """

    def __init__(self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None) -> None:
        super().__init__()
        ic = cfg.interformer
        d = cfg.embedding_dim
        if not schema.sequence:
            raise ConfigError("model.name='interformer' needs at least one schema.sequence feature")
        self.pooled_names = [f.name for f in schema.pooled_features]
        self.target_names = [f.name for f in schema.target_features]
        self.sequence_names = [s.name for s in schema.sequence]
        self.max_len = schema.max_len
        shared = [(i, j) for i, f in enumerate(schema.target_features) for j, q in enumerate(schema.sequence) if q.table == f.table]
        # one match / similarity token per (target feature, sequence) pair that share a table
        self.match_pairs = shared if ic.match_tokens else []
        self.similarity = SimilarityTokens(shared, len(schema.sequence), d) if ic.similarity_tokens and shared else None
        slots = [None if n is None else self.target_names.index(n) for n in target_slots(schema)]
        self.target_attention = (
            TargetAttentionToken(slots, d, ic.target_attention_mlp)
            if ic.target_attention and any(i is not None for i in slots) else None
        )
        num_dense = (1 if schema.dense else 0) if ic.dense_tokens == "projected" else len(schema.dense)
        self.num_tokens = (
            num_dense + len(self.pooled_names) + len(self.target_names) + len(self.match_pairs)
            + (len(shared) if self.similarity is not None else 0) + (1 if self.target_attention is not None else 0)
        )
        if self.num_tokens == 0:
            raise ConfigError("model.name='interformer' needs at least one dense, pooled or target feature")

        self.ebc = build_ebc(schema, d, embedding_device)
        self.ec = build_ec(schema, d, embedding_device)
        self.mc_ec = build_mc_ec(schema, d, embedding_device)
        dense_cls = ProjectedDenseToken if ic.dense_tokens == "projected" else DenseTokens
        self.dense_tokens = dense_cls(len(schema.dense), d) if schema.dense else None
        self.floats = sequence_floats(schema, len(self.sequence_names) * d, d)
        step_dim = len(self.sequence_names) * d if self.floats is None else self.floats.out_dim
        direct = 1 if self.target_attention is not None and ic.target_attention_direct else 0
        self.arch = build_arch(ic, self.num_tokens, step_dim, len(schema.labels), d, direct)

    def _x(
        self, dense: Tensor, sparse: KeyedJaggedTensor, targets: Optional[Tensor], steps: Optional[Tensor], lengths: Tensor
    ) -> Tensor:
        """``X¹ [B, n, d]``: dense, pooled, target, match, similarity and target-attention
        tokens in that order (``steps [B, T, k·d]``, the raw padded steps, and ``lengths
        [B]``, only read by the last three)."""
        tokens = []
        if self.dense_tokens is not None:
            tokens.append(self.dense_tokens(dense))
        if self.ebc is not None:
            tokens.append(pooled_tokens(self.ebc(sparse), self.pooled_names))
        if targets is not None:
            tokens.append(targets)
            if self.match_pairs:
                tokens.append(match_tokens(targets, steps, len(self.sequence_names), self.match_pairs))
            if self.similarity is not None:
                tokens.append(self.similarity(targets, steps))
            if self.target_attention is not None:
                tokens.append(self.target_attention(targets, steps, lengths))
        return torch.cat(tokens, dim=1)

    @property
    def _needs_raw_steps(self) -> bool:
        return bool(self.match_pairs) or self.similarity is not None or self.target_attention is not None

    def embed(
        self, dense: Tensor, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor, floats: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Embedding lookups, the history padded to the batch's ``T``
        (:func:`~interformer_rec.modules.embeddings.padded_length`).

        Args:
            dense: ``[B, n_dense]``.
            sparse: pooled features (keys ``schema.pooled_features``).
            sequence: target features then sequences (keys ``schema.unpooled_keys``).
            floats: ``[V_f, n_float]`` sequence floats (``None`` without any).

        Returns:
            ``X¹ [B, n, d]`` (dense, pooled, target, match, similarity, target-attention
            tokens in that order),
            ``steps [B, T, k·d]`` (zeros at padded steps; with sequence floats merged,
            :class:`~interformer_rec.modules.continuous.SequenceFloats`), ``lengths [B]``.
        """
        targets, steps, lengths = unpooled_tokens(unpooled_lookup(self.ec, self.mc_ec, sequence), self.target_names, self.sequence_names, self.max_len)
        x = self._x(dense, sparse, targets, steps, lengths)
        if self.floats is not None:
            steps = self.floats(steps, require_floats(floats), lengths)
        return x, steps, lengths

    def embed_jagged(
        self, dense: Tensor, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor, floats: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor, Tensor, int]:
        """:meth:`embed` with the history left jagged: only real steps.

        Returns:
            ``X¹ [B, n, d]``, ``values [V, step_dim]`` every row's real steps, row-major
            (sequence floats merged), ``lengths [B]`` and the batch's padded length ``T``.
        """
        jts = unpooled_lookup(self.ec, self.mc_ec, sequence)
        values, lengths = step_values(jts, self.sequence_names)
        T = padded_length(lengths, self.max_len)
        targets = target_tokens(jts, self.target_names) if self.target_names else None
        steps = pad_steps(values, lengths, T) if self._needs_raw_steps else None
        x = self._x(dense, sparse, targets, steps, lengths)
        if self.floats is not None:
            values = self.floats.forward_jagged(values, require_floats(floats))
        return x, values, lengths, T

    def forward_embedded(self, x: Tensor, steps: Tensor, lengths: Tensor) -> Tensor:
        """Everything after the lookups on padded steps: :class:`InterFormerArch`."""
        return self.arch(x, steps, lengths)

    def forward(
        self, dense: Tensor, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor, floats: Optional[Tensor] = None
    ) -> Tensor:
        """MaskNet and the sequence floats run on the real steps only (jagged), the rest
        on the batch's padded length ``T``. Under ``torch.export`` the history is padded
        to ``max_len`` before MaskNet (:meth:`embed`): the same logits, a static size.

        Args:
            dense: ``[B, n_dense]`` float.
            sparse: pooled features KJT (keys ``schema.pooled_features``).
            sequence: unpooled KJT (keys ``schema.unpooled_keys``).
            floats: ``[V_f, n_float]`` sequence floats (``Batch.sequence_floats``).

        Returns:
            ``[B, len(schema.labels)]`` logits.
        """
        if torch.compiler.is_exporting():
            return self.arch(*self.embed(dense, sparse, sequence, floats))
        return self.arch(*self.embed_jagged(dense, sparse, sequence, floats))
