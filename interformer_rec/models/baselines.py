"""Baselines fed the same :class:`~interformer_rec.data.batch.Batch` as InterFormer.

* :class:`DLRMBaseline` wraps TorchRec's own ``DLRM``, ``DLRM_DCN`` and
  ``DLRM_Projection`` (``torchrec.models.dlrm``). A DLRM sees every feature as one pooled
  embedding: one ``EmbeddingBagCollection`` holds the pooled features, the target
  features and the behaviour sequences (each history MEAN-pooled, see :func:`dlrm_ebc`).
* :class:`BST` is the Behaviour Sequence Transformer (Chen et al., 2019): a transformer
  over ``[history ; target]`` whose flattened output, the pooled features and the dense
  floats feed an MLP.

Every model here follows the project's model contract::

    model = DLRMBaseline(schema, cfg, embedding_device)
    logits = model(dense, sparse, sequence)  # [B, len(schema.labels)]

Embedding modules are built on ``embedding_device`` (``meta`` under
DistributedModelParallel) and nothing else touches their weights at init.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRM_Projection
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from interformer_rec.config import ConfigError, ModelConfig, Schema
from interformer_rec.modules.continuous import mean_floats, require_floats, sequence_floats
from interformer_rec.modules.embeddings import build_ebc, build_ec, build_mc_ec, init_range, pooled_table_configs, unpooled_lookup
from interformer_rec.ops.sequences import right_align

DLRM_VARIANTS = ("dlrm", "dlrm_dcn", "dlrm_projection")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def target_slots(schema: Schema) -> List[Optional[str]]:
    """For each sequence of ``schema``, the target feature sharing its table (``None``
    if there is none): the features of a target "step" built like a history step."""
    return [next((f.name for f in schema.target_features if f.table == s.table), None) for s in schema.sequence]


def dlrm_ebc(schema: Schema, dim: int, device: Optional[torch.device] = None) -> EmbeddingBagCollection:
    """One ``EmbeddingBagCollection`` over every table, as a DLRM sees the features.

    Tables of pooled features use SUM pooling. Sequence tables use MEAN pooling: pooling
    is per table, so it applies to both feature names of a shared table; MEAN leaves a
    target feature (one id) equal to its embedding and makes a history the average of its
    steps, whose scale does not grow with its length (an empty history pools to zeros).
    """
    _check(
        not schema.managed_tables,
        f"model: the DLRM baselines pool every table in one EmbeddingBagCollection; its tables "
        f"{schema.managed_tables} have id_policy managed_collision, which TorchRec shards row-wise "
        "only, offered for pooled tables on CUDA only: use another id_policy for them, or a "
        "sequence model (interformer, din, bst, onetrans, infnet)",
    )
    tables = pooled_table_configs(schema, dim) + [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=dim,
            num_embeddings=schema.table(name).num_embeddings,
            feature_names=[f.name for f in schema.target_features if f.table == name]
            + [s.name for s in schema.sequence if s.table == name],
            pooling=PoolingType.MEAN,
            weight_init_min=-init_range(dim),
            weight_init_max=init_range(dim),
        )
        for name in schema.sequence_tables
    ]
    _check(bool(tables), "model: a DLRM baseline needs at least one sparse or sequence feature")
    return EmbeddingBagCollection(tables=tables, device=device)


class MergeFeatures(nn.Module):
    """``KeyedJaggedTensor.concat`` of the pooled and the unpooled features, skipping a
    KJT the schema gives no keys. It has no parameters, so TorchRec's train pipeline can
    run it in the input-dist stage (``TrainPipelineSparseDist(pipeline_postproc=True)``);
    otherwise the EBC's input dist simply runs inside ``forward``.

    Args:
        has_sparse: the schema has pooled features.
        has_sequence: the schema has target or sequence features.
    """

    def __init__(self, has_sparse: bool, has_sequence: bool) -> None:
        super().__init__()
        self.has_sparse = has_sparse
        self.has_sequence = has_sequence

    def forward(self, sparse: KeyedJaggedTensor, sequence: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """
        Args:
            sparse: pooled features, stride ``B``.
            sequence: target features and sequences, stride ``B``.

        Returns:
            one KJT with the keys of both, stride ``B``.
        """
        if not self.has_sparse:
            return sequence
        if not self.has_sequence:
            return sparse
        return KeyedJaggedTensor.concat([sparse, sequence])


class DLRMBaseline(nn.Module):
    """TorchRec's DLRM (``cfg.name == "dlrm"``), DLRM_DCN (``"dlrm_dcn"``, a
    ``LowRankCrossNet`` interaction) or DLRM_Projection (``"dlrm_projection"``) over
    :func:`dlrm_ebc`, which pools each history with MEAN.

    The DLRM dense arch is ``MLP(n_dense -> cfg.dlrm.dense_arch + [d])`` and its over arch
    ``cfg.dlrm.over_arch + [tasks]``, with dropout ``cfg.dlrm.dropout`` after each of its
    hidden layers. A schema without dense features gets one constant
    column of ones, so the dense arch learns a constant vector that joins the interaction
    as a bias token (TorchRec's DLRM always has a dense input). Sequence floats are
    pooled like the histories: each one's mean over the row's steps (after its
    ``transform``) joins the dense input.

    Args:
        schema: the data schema.
        cfg: ``cfg.name`` picks the variant; ``cfg.embedding_dim`` and ``cfg.dlrm`` size it.
        embedding_device: device of the embedding tables (``meta`` for DMP).
    """

    def __init__(
        self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        _check(cfg.name in DLRM_VARIANTS, f"model.name={cfg.name!r} is not one of {DLRM_VARIANTS}")
        d = cfg.embedding_dim
        dc = cfg.dlrm
        self.has_floats = bool(schema.sequence_floats)
        self.log1p = [f.transform == "log1p" for f in schema.sequence_floats]
        # position of the first sequence among the unpooled KJT's keys
        self.first_sequence = schema.unpooled_keys.index(schema.sequence[0].name) if schema.sequence else 0
        self.max_len = schema.max_len
        self.constant_dense = not schema.dense and not schema.sequence_floats
        self.merge = MergeFeatures(bool(schema.pooled_features), bool(schema.unpooled_keys))
        kwargs = dict(
            embedding_bag_collection=dlrm_ebc(schema, d, embedding_device),
            dense_in_features=max(len(schema.dense) + len(schema.sequence_floats), 1),
            dense_arch_layer_sizes=dc.dense_arch + [d],
            over_arch_layer_sizes=dc.over_arch + [len(schema.labels)],
        )
        if cfg.name == "dlrm":
            self.dlrm: DLRM = DLRM(**kwargs)
        elif cfg.name == "dlrm_dcn":
            self.dlrm = DLRM_DCN(
                **kwargs, dcn_num_layers=dc.dcn_num_layers, dcn_low_rank_dim=dc.dcn_low_rank
            )
        else:
            self.dlrm = DLRM_Projection(
                **kwargs,
                interaction_branch1_layer_sizes=dc.projection_branch1,
                interaction_branch2_layer_sizes=dc.projection_branch2,
            )
        if dc.dropout:
            mlp, last = self.dlrm.over_arch.model  # torchrec's OverArch: MLP, then the last Linear
            layers = [m for perceptron in mlp._mlp for m in (perceptron, nn.Dropout(dc.dropout))]
            self.dlrm.over_arch.model = nn.Sequential(*layers, last)

    @property
    def ebc(self) -> nn.Module:
        """The (possibly sharded) EmbeddingBagCollection inside the DLRM."""
        return self.dlrm.sparse_arch.embedding_bag_collection

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
        if self.has_floats:
            lengths = sequence.lengths().view(-1, sequence.stride())[self.first_sequence]  # key-major [keys, B]
            dense = torch.cat([dense, mean_floats(require_floats(floats), lengths, self.max_len, self.log1p)], dim=1)
        if self.constant_dense:
            dense = dense.new_ones(dense.size(0), 1)
        return self.dlrm(dense, self.merge(sparse, sequence))


class BSTSequenceArch(nn.Module):
    """Learned positional embeddings and a ``TransformerEncoder`` (post-norm, ReLU) over
    a padded token sequence. Padded positions are masked as keys and zeroed in the
    output, so whatever they hold never changes any output.

    The encoder's layers hold the weights; their attention runs through
    ``F.scaled_dot_product_attention`` over each ``nn.MultiheadAttention``'s own
    projections (the same function as the layer's forward): ``MultiheadAttention``'s
    packed in-projection makes ``torch.export`` guard ``batch != 1``, so the model
    would not export with a dynamic batch.

    Args:
        length: number of positions ``L`` (history steps + 1 target).
        dim: token dimension ``d`` (divisible by ``num_heads``).
        num_layers: encoder layers.
        num_heads: attention heads.
        dropout: dropout inside the encoder layers.
    """

    def __init__(self, length: int, dim: int, num_layers: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=num_heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor, padding_mask: Tensor) -> Tensor:
        """
        Args:
            tokens: ``[B, L, d]``.
            padding_mask: ``[B, L]`` bool, True at padded positions (never all True in a row).

        Returns:
            ``[B, L*d]`` the encoder outputs, zeros at padded positions, flattened.
        """
        x = tokens + self.position
        keep = ~padding_mask[:, None, None, :]  # [B, 1, 1, L]: SDPA attends where True
        for layer in self.encoder.layers:
            x = layer.norm1(x + layer.dropout1(self._attention(layer.self_attn, x, keep)))
            x = layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))
        return x.masked_fill(padding_mask.unsqueeze(-1), 0.0).flatten(1)

    def _attention(self, mha: nn.MultiheadAttention, x: Tensor, keep: Tensor) -> Tensor:
        """``mha``'s self-attention of ``x [B, L, d]`` by SDPA over its own weights."""
        B, L, d = x.shape
        q, k, v = (
            t.view(B, L, mha.num_heads, d // mha.num_heads).transpose(1, 2)
            for t in F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=mha.dropout if self.training else 0.0)
        return mha.out_proj(out.transpose(1, 2).reshape(B, L, d))


class BST(nn.Module):
    """Behaviour Sequence Transformer (Chen et al., 2019, arXiv 1905.06874).

    Each history step is one token: the ``k`` parallel sequences' embeddings of the step,
    concatenated and projected to ``d``. The target token is built the same way (same
    projection) from the target features that share each sequence's table (zeros for a
    sequence without one), so a target item equal to a history item gives the same token.
    ``[history (right-aligned, most recent at T-1) ; target]`` plus learned positions goes
    through :class:`BSTSequenceArch`; its flattened output, the target embeddings, the
    pooled features (read by name) and the dense floats feed ``MLP(cfg.bst.over_arch)``
    and a final linear layer to ``tasks`` logits. The encoder's feed-forward width is
    ``4*d``.

    Args:
        schema: the data schema; needs at least one sequence feature.
        cfg: ``cfg.embedding_dim`` and ``cfg.bst`` size it.
        embedding_device: device of the embedding tables (``meta`` for DMP).
    """

    def __init__(
        self, schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        d = cfg.embedding_dim
        bc = cfg.bst
        _check(bool(schema.sequence), "model.name='bst' needs at least one schema.sequence feature")
        self.max_len = schema.max_len
        self.pooled_names: List[str] = [f.name for f in schema.pooled_features]
        self.target_names: List[str] = [f.name for f in schema.target_features]
        self.sequence_names: List[str] = [s.name for s in schema.sequence]
        self.target_slots: List[Optional[str]] = target_slots(schema)
        self.ebc: Optional[EmbeddingBagCollection] = build_ebc(schema, d, embedding_device)
        self.ec = build_ec(schema, d, embedding_device)
        self.mc_ec = build_mc_ec(schema, d, embedding_device)
        self.floats = sequence_floats(schema, len(schema.sequence) * d, d)
        self.step_proj = nn.Linear(len(schema.sequence) * d if self.floats is None else self.floats.out_dim, d)
        self.sequence_arch = BSTSequenceArch(
            self.max_len + 1, d, bc.num_layers, bc.num_heads, bc.dropout
        )
        in_features = (
            (self.max_len + 1) * d
            + (len(self.target_names) + len(self.pooled_names)) * d
            + len(schema.dense)
        )
        self.over_arch = nn.Sequential(
            MLP(in_features, bc.over_arch), nn.Linear(bc.over_arch[-1], len(schema.labels))
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
        jts: Dict[str, JaggedTensor] = unpooled_lookup(self.ec, self.mc_ec, sequence)
        T = self.max_len
        lengths = jts[self.sequence_names[0]].lengths().to(torch.int64).clamp(max=T)
        steps = torch.cat([jts[n].to_padded_dense(desired_length=T) for n in self.sequence_names], dim=-1)
        # to_padded_dense with length 1 gives a zero vector for a missing target id
        targets = {n: jts[n].to_padded_dense(desired_length=1).squeeze(1) for n in self.target_names}
        zeros = steps.new_zeros(steps.size(0), steps.size(-1) // len(self.sequence_names))
        target_step = torch.cat(
            [targets[n] if n is not None else zeros for n in self.target_slots], dim=-1
        )
        if self.floats is not None:
            steps = self.floats(steps, require_floats(floats), lengths)
            target_step = self.floats.target(target_step)
        # fbgemm's jagged_to_padded_dense (to_padded_dense) pads on the right only: the
        # most recent step is moved to position T-1 by a gather
        steps = right_align(steps, lengths)
        tokens = self.step_proj(torch.cat([steps, target_step.unsqueeze(1)], dim=1))  # [B, T+1, d]
        positions = torch.arange(T + 1, device=lengths.device)
        padding_mask = positions < (T - lengths).unsqueeze(1)  # the target (position T) is never padded
        parts = [self.sequence_arch(tokens, padding_mask)]
        parts += [targets[n] for n in self.target_names]
        if self.ebc is not None:
            pooled = self.ebc(sparse).to_dict()
            parts += [pooled[n] for n in self.pooled_names]
        parts.append(dense)
        return self.over_arch(torch.cat(parts, dim=1))
