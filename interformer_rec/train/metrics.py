"""Evaluation metrics over a whole split: AUC, gAUC, logloss, NE.

The formulas are TorchRec's (``torchrec.metrics.auc``, ``.gauc``, ``.ne``), applied to
the union of every rank's predictions (gathered first, see ``gather_predictions``), so
a 2-rank evaluation reports the AUC of all rows, never an average of per-rank AUCs.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.gauc import compute_gauc_3d, to_3d
from torchrec.metrics.ne import compute_cross_entropy, compute_ne

ETA = 1e-12


def gather_predictions(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """All-gather 1-row-per-sample tensors of unequal length from every rank.

    Args:
        tensors: each ``[N_rank, ...]`` on this rank.
    Returns:
        each ``[sum N_rank, ...]``, rank 0's rows first.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensors
    world = dist.get_world_size()
    n = torch.tensor([tensors[0].size(0)], dtype=torch.long, device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    max_n = int(max(s.item() for s in sizes))
    out = []
    for t in tensors:
        padded = torch.zeros((max_n, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.size(0)] = t
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]))
    return tuple(out)


def gauc(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Group AUC as ``torchrec.metrics.gauc`` defines it: the mean of per-group AUCs over
    groups that have both labels and not all-identical predictions.

    Args:
        predictions: ``[N, T]`` probabilities. labels: ``[N, T]``. groups: ``[N]`` ids.
    Returns:
        ``[T]`` gAUC per task (NaN where no group qualifies).
    """
    order = torch.argsort(groups, stable=True)
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    max_len = int(counts.max())
    # to_3d: [N, T] jagged by group -> [G, max_len, T] -> [T, G, max_len]
    # (fbgemm's jagged op has no float64 kernel; padded slots are 0 with weight 0,
    # which is how torchrec's gAUC marks padding)
    def pad(x: torch.Tensor) -> torch.Tensor:
        return to_3d(x[order].float(), counts, max_len).permute(2, 0, 1).double()

    states = compute_gauc_3d(pad(predictions), pad(labels), pad(torch.ones_like(labels)))
    return states["auc_sum"] / states["num_samples"]


def compute_metrics(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> Dict[str, float]:
    """AUC, gAUC, logloss (natural log, mean over rows) and NE of the first task, plus
    per-task AUCs when there are several tasks.

    Args:
        logits: ``[N, T]``. labels: ``[N, T]`` in {0, 1}. groups: ``[N]``.
    """
    logits, labels = logits.detach().double().cpu(), labels.detach().double().cpu()
    groups = groups.detach().cpu()
    probs = torch.sigmoid(logits)
    n_tasks = labels.size(1)
    weights = torch.ones_like(labels)
    auc = compute_auc(n_tasks, [probs.T], [labels.T], [weights.T])
    ce_sum = compute_cross_entropy(labels.T, probs.T, weights.T, ETA).sum(-1)
    pos = labels.T.sum(-1)
    ne = compute_ne(ce_sum, weights.T.sum(-1), pos, weights.T.sum(-1) - pos, ETA)
    logloss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
    out = {
        "auc": float(auc[0]),
        "gauc": float(gauc(probs, labels, groups)[0]),
        "logloss": float(logloss[0]),
        "ne": float(ne[0]),
        "pos_rate": float(pos[0] / labels.size(0)),
        "rows": int(labels.size(0)),
    }
    if n_tasks > 1:
        out["auc_per_task"] = [float(a) for a in auc]
    return out
