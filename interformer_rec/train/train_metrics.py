"""Training-time metrics: TorchRec's ``RecMetricModule``, fed every few training steps.

Windowed AUC, NE and calibration of every task over the rows of the last
``train.log_every`` steps (of all ranks), and throughput, computed every
``train.log_every`` steps. Computing is a collective (each rank's window states are
gathered), so every rank computes at the same steps; rank 0 logs the values to
TensorBoard (``train_metrics/<metric>-<task>/<window_…|lifetime_…>``) and shows them in
the progress bar. These are estimates of a moving model on the rows it is trained on;
the exact metrics of whole splits (:func:`~interformer_rec.train.metrics.compute_metrics`)
stay for validation and test.

The module is not updated every step: :class:`StepBuffer` keeps each step's predictions
and labels on the device and feeds the module the rows of ``k`` steps at once (``k``
divides ``train.log_every``), so its per-update work (window bookkeeping, one small op
per metric and task) is paid once per ``k`` steps. The windows hold the same rows.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import (
    MetricsConfig,
    RecMetricDef,
    RecMetricEnum,
    RecTaskInfo,
    ThroughputDef,
)

WINDOWED = (RecMetricEnum.AUC, RecMetricEnum.NE, RecMetricEnum.CALIBRATION)


def task_infos(tasks: Sequence[str]) -> List[RecTaskInfo]:
    """One :class:`RecTaskInfo` per label column; its model-output keys are
    ``<task>/label``, ``<task>/prediction`` and ``<task>/weight``."""
    return [
        RecTaskInfo(name=t, label_name=f"{t}/label", prediction_name=f"{t}/prediction", weight_name=f"{t}/weight")
        for t in tasks
    ]


def steps_per_update(every: int, most: int = 10) -> int:
    """``k``: the largest divisor of ``every`` (``train.log_every``) up to ``most``."""
    return max(k for k in range(1, min(every, most) + 1) if every % k == 0)


def metric_module(
    tasks: Sequence[str], batch_size: int, world_size: int, rank: int, device: torch.device, every: int
) -> RecMetricModule:
    """TorchRec's metric module: the :data:`WINDOWED` metrics of each task over the last
    ``every`` steps (``every * batch_size * world_size`` rows), and throughput after
    ``every`` warm-up steps; updated with :func:`steps_per_update` steps' rows at a
    time (:class:`StepBuffer`).

    Args:
        tasks: label column names. batch_size: rows per rank and step.
    """
    infos = task_infos(tasks)
    window = every * batch_size * world_size
    k = steps_per_update(every)
    config = MetricsConfig(
        rec_tasks=infos,
        rec_metrics={m: RecMetricDef(rec_tasks=infos, window_size=window) for m in WINDOWED},
        throughput_metric=ThroughputDef(warmup_steps=every // k),
        compute_interval_steps=every // k,
    )
    return generate_metric_module(
        RecMetricModule, config, batch_size * k, world_size, rank, state_metrics_mapping={}, device=device
    )


class StepBuffer:
    """Feeds a :func:`metric_module` the rows of ``k`` training steps at once.

    Args:
        module: the metric module. tasks: label names.
        k: steps per update (:func:`steps_per_update` of ``train.log_every``).
    """

    def __init__(self, module: RecMetricModule, tasks: Sequence[str], k: int) -> None:
        self.module = module
        self.tasks = list(tasks)
        self.k = k
        self.logits: List[Tensor] = []
        self.labels: List[Tensor] = []

    def add(self, logits: Tensor, labels: Tensor) -> None:
        """One step's ``logits [B, T]`` and ``labels [B, T]``; every ``k``-th call
        updates the module."""
        self.logits.append(logits.detach())
        self.labels.append(labels)
        if len(self.logits) >= self.k:
            self.flush()

    def flush(self) -> None:
        """Update the module with the steps held (before computing it)."""
        if self.logits:
            self.module.update(model_out(self.tasks, torch.cat(self.logits), torch.cat(self.labels)))
            self.logits, self.labels = [], []


def model_out(tasks: Sequence[str], logits: Tensor, labels: Tensor) -> Dict[str, Tensor]:
    """The ``RecMetricModule.update`` input of one step.

    Args:
        logits: ``[B, T]``. labels: ``[B, T]``.
    Returns:
        ``{<task>/prediction, <task>/label, <task>/weight: [B]}`` (probabilities, labels,
        ones) for each of the ``T`` tasks.
    """
    probs = torch.sigmoid(logits.detach().float())
    out: Dict[str, Tensor] = {}
    for i, t in enumerate(tasks):
        out[f"{t}/prediction"] = probs[:, i]
        out[f"{t}/label"] = labels[:, i].float()
        out[f"{t}/weight"] = torch.ones_like(probs[:, i])
    return out


def scalars(computed: Dict[str, Tensor]) -> Dict[str, float]:
    """``RecMetricModule.compute()``'s values as TensorBoard tags: ``auc-click|window_auc``
    becomes ``train_metrics/auc-click/window_auc``."""
    return {f"train_metrics/{k.replace('|', '/')}": float(v) for k, v in computed.items()}


def mean_over_ranks(values: List[Tensor], device: torch.device) -> List[float]:
    """Element-wise mean of equal-length per-rank lists of scalar tensors (one stack, one
    all-reduce, one copy to the host; ``device``: where the backend reduces, CUDA for
    nccl)."""
    if not values:
        return []
    t = torch.stack(values).to(device=device, dtype=torch.float64)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t.cpu().tolist()
    dist.all_reduce(t)
    return (t / dist.get_world_size()).cpu().tolist()
