"""Quantized embedding tables for inference, with TorchRec's own utilities.

``quantize_embeddings(model, "int8")`` swaps every ``EmbeddingBagCollection`` /
``EmbeddingCollection`` for TorchRec's ``QuantEmbeddingBagCollection`` /
``QuantEmbeddingCollection`` (``torchrec.inference.modules.quantize_inference_model``):
row-wise int8 (a scale and bias per row) or fp16 weights in fbgemm's inference TBE,
dequantized to float32 outputs. The dense arches stay float32.

Two things make the result exportable with ``torch.export`` (non-strict):

* the fake classes of fbgemm's TorchBind objects (``AtomicCounter``, ``TensorQueue``)
  are registered (``torchrec.pt2.utils.register_fake_classes``);
* the TBE's index bounds check is turned off: its fake kernel guards on data-dependent
  sizes and cannot be traced. Ids are checked (or hashed) before they reach the model by
  the schema's ``id_policy`` (``interformer_rec.serving.features``), so nothing is lost.

The compiled package then calls fbgemm kernels: load it after ``import fbgemm_gpu``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from interformer_rec.export.inputs import random_encoded
from interformer_rec.serving.features import Encoded, FeatureSpec
from interformer_rec.ops.metrics import auc, logloss

DTYPES = {"int8": torch.qint8, "fp16": torch.float16}
_FAKES_REGISTERED = False


def _register_fake_classes() -> None:
    global _FAKES_REGISTERED
    if _FAKES_REGISTERED:
        return
    from torchrec.pt2.utils import register_fake_classes

    try:
        register_fake_classes()
    except RuntimeError as e:  # already registered by someone else
        if "already" not in str(e):
            raise
    _FAKES_REGISTERED = True


def quantize_embeddings(model: nn.Module, dtype: str) -> nn.Module:
    """``model`` (modified in place and returned, eval mode) with its embedding tables
    quantized to ``dtype`` (``int8`` or ``fp16``)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen,
    )
    from torchrec.inference.modules import quantize_inference_model

    from interformer_rec.train.dist import embedding_tables

    if dtype not in DTYPES:
        raise ValueError(f"quantize: {dtype!r} is not one of {sorted(DTYPES)}")
    _register_fake_classes()
    qdtype = DTYPES[dtype]
    model = quantize_inference_model(
        model.eval(),
        per_table_weight_dtype={t: qdtype for t in embedding_tables(model)},
        quantization_dtype=qdtype,
    ).eval()
    for m in model.modules():
        if isinstance(m, IntNBitTableBatchedEmbeddingBagsCodegen):
            m.bounds_check_mode_int = BoundsCheckMode.NONE.value
    return model


def embedding_bytes(model: nn.Module) -> int:
    """Bytes of the embedding tables' storage (float or quantized; each storage once)."""
    from torchrec import EmbeddingBagCollection, EmbeddingCollection
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC
    from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEC

    kinds = (EmbeddingBagCollection, EmbeddingCollection, QuantEBC, QuantEC)
    seen = set()
    total = 0
    for m in model.modules():
        if not isinstance(m, kinds):
            continue
        for t in [*m.parameters(), *m.buffers()]:
            storage = t.untyped_storage()
            if storage.nbytes() and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


# --------------------------------------------------------------------------- quality


def quality_report(
    reference: nn.Module,
    quantized: nn.Module,
    spec: FeatureSpec,
    data: Optional[Encoded],
    labels: Optional[np.ndarray],
    batch_size: int = 1024,
    random_rows: int = 2048,
) -> Dict[str, Any]:
    """Quality loss of ``quantized`` against ``reference`` (both serving modules): on
    held-out ``data`` (AUC and logloss per task when ``labels`` are given) and on random
    rows, the max and mean abs difference of the predicted probabilities."""
    def probs(module: nn.Module, enc: Encoded) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in range(0, len(enc), batch_size):
                out.append(module(*enc.slice(s, min(s + batch_size, len(enc))).to_tensors()).sigmoid())
        return torch.cat(out).numpy()

    report: Dict[str, Any] = {}
    sets = {"random": random_encoded(spec, random_rows, np.random.default_rng(1))}
    if data is not None:
        sets = {"heldout": data, **sets}
    for name, enc in sets.items():
        p_ref, p_q = probs(reference, enc), probs(quantized, enc)
        diff = np.abs(p_ref - p_q)
        entry: Dict[str, Any] = {
            "rows": len(enc),
            "max_abs_diff_prob": float(diff.max()),
            "mean_abs_diff_prob": float(diff.mean()),
        }
        if name == "heldout" and labels is not None:
            for t, task in enumerate(spec.labels):
                a_ref, a_q = auc(labels[:, t], p_ref[:, t]), auc(labels[:, t], p_q[:, t])
                l_ref, l_q = logloss(labels[:, t], p_ref[:, t]), logloss(labels[:, t], p_q[:, t])
                entry[task] = {
                    "auc_float": a_ref,
                    "auc_quantized": a_q,
                    "auc_delta": a_q - a_ref,
                    "logloss_float": l_ref,
                    "logloss_quantized": l_q,
                    "logloss_delta": l_q - l_ref,
                }
        report[name] = entry
    return report
