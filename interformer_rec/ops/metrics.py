"""Ranking metrics of scores: AUC, group AUC (gAUC) and logloss.

The project's one AUC: the Mann-Whitney statistic with ties given the mean rank of
their run, so tied scores count half (as ``sklearn.metrics.roc_auc_score`` does).
TorchRec's ``compute_auc`` and ``compute_gauc_3d`` agree with it on distinct scores but
break ties by the (unstable) sort order; torchmetrics' ``binary_auroc`` accumulates its
curve in float32 (errors of ~1e-8). Everything here is float64 and O(N log N) in time
and O(N) in memory, whatever the group sizes.

Imports torch only (no torchrec): the serving predictor uses it. Inputs may be tensors
or NumPy arrays; labels are 0 / 1.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor


def _as_double(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().reshape(-1).to(device="cpu", dtype=torch.float64)


def group_rank_stats(
    labels: Tensor, scores: Tensor, groups: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-group Mann-Whitney statistics, by one sort by (group, score) and segment sums.

    Args:
        labels: ``[N]`` float64 in {0, 1}. scores: ``[N]`` float64.
        groups: ``[N]`` integer group ids (``None``: one group).
    Returns:
        ``(auc [G], positives [G], negatives [G], distinct [G])`` for the ``G`` groups in
        ascending id order: each group's AUC (NaN without both labels), its label counts
        and its number of distinct scores.
    """
    order = torch.argsort(scores, stable=True)
    if groups is not None:
        order = order[torch.argsort(groups[order], stable=True)]
    s, y = scores[order], labels[order]
    n = s.numel()
    new_group = torch.zeros(n, dtype=torch.bool)
    new_group[:1] = True
    if groups is not None:
        g = groups[order]
        new_group[1:] = g[1:] != g[:-1]
    new_run = new_group.clone()
    new_run[1:] |= s[1:] != s[:-1]
    group_of = torch.cumsum(new_group, 0) - 1  # [N] group index of each sorted row
    run_of = torch.cumsum(new_run, 0) - 1  # [N] tie-run index of each sorted row
    position = torch.arange(n, dtype=torch.float64)
    run_length = torch.bincount(run_of).to(torch.float64)
    # 1-based rank within the group, ties at the mean rank of their run
    rank = position[new_run][run_of] - position[new_group][group_of] + (run_length[run_of] + 1) / 2
    num_groups = int(group_of[-1]) + 1 if n else 0
    positives = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_of, y)
    rank_sum = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, group_of, y * rank)
    negatives = torch.bincount(group_of, minlength=num_groups).to(torch.float64) - positives
    distinct = torch.bincount(group_of[new_run], minlength=num_groups)
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return auc, positives, negatives, distinct


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` (``[N]``, any monotone scale) for ``labels`` (``[N]``), ties
    averaged; NaN if a class is absent."""
    y, s = _as_double(labels), _as_double(scores)
    if y.numel() == 0:
        return float("nan")
    return float(group_rank_stats(y, s)[0][0])


def gauc(labels: Any, scores: Any, groups: Any) -> float:
    """Group AUC as ``torchrec.metrics.gauc`` defines it: the mean AUC of the groups that
    have both labels and not all-identical scores (ties averaged, see :func:`auc`).

    Args:
        labels: ``[N]``. scores: ``[N]``. groups: ``[N]`` integer ids.
    Returns:
        the gAUC; NaN if no group qualifies.
    """
    y, s = _as_double(labels), _as_double(scores)
    g = torch.as_tensor(groups).reshape(-1).cpu()
    if y.numel() == 0:
        return float("nan")
    per_group, positives, negatives, distinct = group_rank_stats(y, s, g)
    qualifies = (positives > 0) & (negatives > 0) & (distinct > 1)
    return float(per_group[qualifies].mean()) if bool(qualifies.any()) else float("nan")


def logloss(labels: Any, probs: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log) of probabilities clipped to
    ``[eps, 1 - eps]``."""
    y, p = _as_double(labels), _as_double(probs).clamp(eps, 1 - eps)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
