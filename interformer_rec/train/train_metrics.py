"""Training-time metrics: TorchRec's ``RecMetricModule``, updated every training step.

Windowed AUC, NE and calibration of every task over the rows of the last
``train.log_every`` steps (of all ranks), and throughput, computed every
``train.log_every`` steps. Computing is a collective (each rank's window states are
gathered), so every rank computes at the same steps; rank 0 logs the values to
TensorBoard (``train_metrics/<metric>-<task>/<window_…|lifetime_…>``) and shows them in
the progress bar. These are estimates of a moving model on the rows it is trained on;
the exact metrics of whole splits (:func:`~interformer_rec.train.metrics.compute_metrics`)
stay for validation and test.
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


def metric_module(
    tasks: Sequence[str], batch_size: int, world_size: int, rank: int, device: torch.device, every: int
) -> RecMetricModule:
    """TorchRec's metric module: the :data:`WINDOWED` metrics of each task over the last
    ``every`` steps (``every * batch_size * world_size`` rows), and throughput after
    ``every`` warm-up steps.

    Args:
        tasks: label column names. batch_size: rows per rank and step.
    """
    infos = task_infos(tasks)
    window = every * batch_size * world_size
    config = MetricsConfig(
        rec_tasks=infos,
        rec_metrics={m: RecMetricDef(rec_tasks=infos, window_size=window) for m in WINDOWED},
        throughput_metric=ThroughputDef(warmup_steps=every),
        compute_interval_steps=every,
    )
    return generate_metric_module(
        RecMetricModule, config, batch_size, world_size, rank, state_metrics_mapping={}, device=device
    )


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
