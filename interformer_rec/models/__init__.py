"""Model builders: InterFormer and the baselines, all with the same contract::

    model = build_model(schema, cfg, embedding_device)
    logits = model(dense, sparse, sequence)  # [B, len(schema.labels)]
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from interformer_rec.config import ModelConfig, Schema
from interformer_rec.models.baselines import BST, DLRM_VARIANTS, DLRMBaseline
from interformer_rec.models.din import DIN

__all__ = ["BST", "DIN", "DLRMBaseline", "build_model", "compile_dense", "num_parameters"]


def build_model(
    schema: Schema, cfg: ModelConfig, embedding_device: Optional[torch.device] = None
) -> nn.Module:
    """The model named by ``cfg.name`` ("interformer", "dlrm", "dlrm_dcn",
    "dlrm_projection", "bst", "din", "infnet" or "onetrans"), its embedding modules on
    ``embedding_device``.
    ``cfg`` is checked again first (:meth:`ModelConfig.validate`): a config edited in code
    fails with a ``ConfigError`` naming the key, not inside a module."""
    cfg.validate()
    if cfg.name == "interformer":
        from interformer_rec.models.interformer import InterFormer

        return InterFormer(schema, cfg, embedding_device=embedding_device)
    if cfg.name in DLRM_VARIANTS:
        return DLRMBaseline(schema, cfg, embedding_device=embedding_device)
    if cfg.name == "bst":
        return BST(schema, cfg, embedding_device=embedding_device)
    if cfg.name == "infnet":
        from interformer_rec.models.infnet import INFNet

        return INFNet(schema, cfg, embedding_device=embedding_device)
    if cfg.name == "onetrans":
        from interformer_rec.models.onetrans import OneTrans

        return OneTrans(schema, cfg, embedding_device=embedding_device)
    return DIN(schema, cfg, embedding_device=embedding_device)  # validate() admits no other name


def num_parameters(model: nn.Module) -> int:
    """Number of parameters, embedding tables included (shared ones once); works on
    meta-device modules too."""
    return sum(p.numel() for p in model.parameters())


def compile_dense(model: nn.Module) -> List[str]:
    """``torch.compile`` in place (``nn.Module.compile``: names, parameters and
    state-dict keys unchanged) every largest submodule of ``model`` that holds no
    embedding collection, i.e. its dense arches; the lookups stay eager, where DMP and
    the train pipeline replace them. Returns the compiled submodules' names."""

    tables = (EmbeddingBagCollection, EmbeddingCollection)
    compiled: List[str] = []

    def visit(m: nn.Module, prefix: str) -> None:
        for name, child in m.named_children():
            if not any(isinstance(x, tables) for x in child.modules()):
                child.compile()
                compiled.append(prefix + name)
            elif not isinstance(child, tables):
                visit(child, f"{prefix}{name}.")

    visit(model, "")
    return compiled
