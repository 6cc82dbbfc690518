"""Evaluation metrics over a whole split: AUC, gAUC, logloss, NE.

AUC and gAUC are :mod:`interformer_rec.ops.metrics`' (TorchRec's definitions, ties
averaged), NE is TorchRec's (``torchrec.metrics.ne``), applied to the union of every
rank's predictions (gathered first, see ``gather_predictions``), so a 2-rank evaluation
reports the AUC of all rows, never an average of per-rank AUCs.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics.utilities.distributed import gather_all_tensors
from torchrec.metrics.ne import compute_cross_entropy, compute_ne

from interformer_rec.ops.metrics import auc, gauc

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
    return tuple(torch.cat(gather_all_tensors(t)) for t in tensors)


def compute_metrics(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, tasks: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """AUC, gAUC, logloss (natural log, mean over rows), NE and positive rate of every
    task. The first task's are the headline keys (``auc``, ``gauc``, ``logloss``,
    ``ne``, ``pos_rate``: what early stopping monitors); with several tasks each task's
    are also under ``<metric>/<task>`` (``auc/convert``), flat floats, so they reach the
    history, TensorBoard (``valid/auc/convert``) and the summary like the headline ones.
    Where a task has one class only, its AUC is 0.5 (TorchRec's no-signal value).

    Args:
        logits: ``[N, T]``. labels: ``[N, T]`` in {0, 1}. groups: ``[N]``.
        tasks: the ``T`` label names (default ``task0``, ``task1``, ...).
    """
    logits, labels = logits.detach().double().cpu(), labels.detach().double().cpu()
    groups = groups.detach().cpu()
    probs = torch.sigmoid(logits)
    n_tasks = labels.size(1)
    tasks = list(tasks) if tasks is not None else [f"task{t}" for t in range(n_tasks)]
    if len(tasks) != n_tasks:
        raise ValueError(f"compute_metrics: {len(tasks)} task names for {n_tasks} label columns")
    aucs = [auc(labels[:, t], probs[:, t]) for t in range(n_tasks)]
    aucs = [0.5 if math.isnan(a) else a for a in aucs]
    weights = torch.ones_like(labels)
    # (a copy: TorchRec's cross-entropy clamps its input in place)
    ce_sum = compute_cross_entropy(labels.T, probs.T.clone(), weights.T, ETA).sum(-1)
    pos = labels.T.sum(-1)
    ne = compute_ne(ce_sum, weights.T.sum(-1), pos, weights.T.sum(-1) - pos, ETA)
    logloss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
    per_task = [
        {
            "auc": aucs[t],
            "gauc": gauc(labels[:, t], probs[:, t], groups),
            "logloss": float(logloss[t]),
            "ne": float(ne[t]),
            "pos_rate": float(pos[t] / labels.size(0)),
        }
        for t in range(n_tasks)
    ]
    out: Dict[str, Any] = {**per_task[0], "rows": int(labels.size(0))}
    if n_tasks > 1:
        out.update({f"{k}/{task}": v for task, m in zip(tasks, per_task) for k, v in m.items()})
    return out
