"""Parity of an exported model with the eager one: the batches compared
(:func:`parity_cases`) and the comparison (:func:`compare`)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from interformer_rec.export.inputs import random_encoded, with_sequences
from interformer_rec.serving.manifest import ExportError
from interformer_rec.serving.features import Encoded, FeatureSpec


def parity_cases(
    spec: FeatureSpec, data: Optional[Encoded], seed: int = 0, large: int = 2048, singles: int = 16
) -> Dict[str, List[Encoded]]:
    """Named lists of batches to compare exported and eager outputs on: held-out rows
    (``data``; random rows if ``None``) one at a time and all at once (up to ``large``),
    the same rows with every sequence empty or at its full length, and rows with every
    pooled bag empty. No batch has more than ``large`` rows."""
    rng = np.random.default_rng(seed)
    source = "heldout" if data is not None else "random"
    rows = data if data is not None else random_encoded(spec, large, rng)
    rows = rows.slice(0, min(len(rows), large))
    k = min(singles, len(rows))
    cases: Dict[str, List[Encoded]] = {
        f"{source}/batch_1": [rows.slice(i, i + 1) for i in range(k)],
        f"{source}/batch_{len(rows)}": [rows],
    }
    if spec.sequences:
        for mode in ("empty", "full"):
            changed = with_sequences(rows, spec, mode, rng)
            cases[f"{source}/{mode}_sequences/batch_1"] = [changed.slice(i, i + 1) for i in range(min(4, k))]
            cases[f"{source}/{mode}_sequences/batch_{len(rows)}"] = [changed]
    if spec.pooled:
        n = min(64, large)
        cases[f"{source}/empty_bags/batch_{n}"] = [random_encoded(spec, n, rng, bags="empty")]
    return cases


def compare(
    reference: Callable[..., Tensor],
    candidate: Callable[..., Tensor],
    cases: Dict[str, List[Encoded]],
    device: torch.device = torch.device("cpu"),
) -> Dict[str, Dict[str, float]]:
    """Max abs difference of logits and probabilities per case.

    Args:
        reference, candidate: ``(*Inputs) -> [B, tasks]`` logits.
        device: where both take their inputs.

    Returns:
        ``{case: {"rows", "max_abs_diff_logit", "max_abs_diff_prob"}}``.
    """
    out: Dict[str, Dict[str, float]] = {}
    with torch.no_grad():
        for name, batches in cases.items():
            dl = dp = 0.0
            rows = 0
            for enc in batches:
                x = [t.to(device) for t in enc.to_tensors()]
                a, b = reference(*x), candidate(*x)
                if a.shape != b.shape:
                    raise ExportError(f"parity case {name}: shapes {tuple(a.shape)} != {tuple(b.shape)}")
                dl = max(dl, (a - b).abs().max().item())
                dp = max(dp, (a.sigmoid() - b.sigmoid()).abs().max().item())
                rows += len(enc)
            out[name] = {"rows": rows, "max_abs_diff_logit": dl, "max_abs_diff_prob": dp}
    return out
