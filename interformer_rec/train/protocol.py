"""The training protocol of BARS / FuxiCTR around the loop: the monitored metric, the
learning-rate schedule, early stopping, and the embedding regularizer.

* :class:`Monitor` — which validation metric picks the best epoch (``auc``, ``gauc``:
  higher is better; ``logloss``: lower is better).
* :class:`LRSchedule` — a multiplier of every optimizer's configured learning rate,
  written into each param group (TorchRec's fused embedding optimizers pass
  ``param_groups[0]["lr"]`` to the TBE kernels in ``step()``, so a change reaches the
  fused update from the next step on). ``plateau`` acts after each validation, ``cosine``
  after each step.
* :class:`EmbeddingRegularizer` — FuxiCTR's ``embedding_regularizer``: ``λ · Σ ||e||² / B``
  over the embedding vectors the batch looks up, collected from the outputs of the
  sharded embedding modules, so the gradient reaches only the rows looked up, through
  whichever kernel (fused, dense, data-parallel) the planner chose.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn
from torchrec.distributed.types import Awaitable
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from interformer_rec.config import LRScheduleConfig

HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False}


class Monitor:
    """Tracks the best value of one validation metric.

    Args:
        metric: ``auc``, ``gauc`` or ``logloss``.
    """

    def __init__(self, metric: str) -> None:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"train.monitor={metric!r}: use one of {sorted(HIGHER_IS_BETTER)}")
        self.metric = metric
        self.higher = HIGHER_IS_BETTER[metric]

    def improved(self, value: float, best: Optional[float]) -> bool:
        """Whether ``value`` beats ``best`` (``None``: nothing yet)."""
        if best is None:
            return True
        return value > best if self.higher else value < best

    def epochs_since_best(self, history: List[Dict[str, Any]]) -> int:
        """Validations after the best one in ``history`` (rows with ``valid_<metric>``)."""
        best, since = None, 0
        for row in history:
            value = row[f"valid_{self.metric}"]
            if self.improved(value, best):
                best, since = value, 0
            else:
                since += 1
        return since


class LRSchedule:
    """Learning-rate multiplier of every param group of ``optimizer``.

    Args:
        cfg: the schedule.
        optimizer: TorchRec's ``CombinedOptimizer`` (or any optimizer); each group's
            configured rate is kept as ``group["initial_lr"]``.
        total_steps: training steps of the whole run (``cosine``).
    """

    def __init__(self, cfg: LRScheduleConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        if cfg.name not in ("constant", "plateau", "cosine"):
            raise ValueError(f"train.lr_schedule.name={cfg.name!r}: use constant, plateau or cosine")
        if not 0 < cfg.factor < 1:
            raise ValueError(f"train.lr_schedule.factor={cfg.factor}: must lie in (0, 1)")
        self.cfg = cfg
        self.optimizer = optimizer
        self.total_steps = max(total_steps, 1)
        self.scale = 1.0
        self.bad_validations = 0  # plateau: validations without improvement since the last change
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def cosine_scale(self, step: int) -> float:
        """The ``cosine`` multiplier for the step after ``step`` steps were trained."""
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        span = max(self.total_steps - c.warmup_steps, 1)
        progress = min((step - c.warmup_steps) / span, 1.0)
        return c.min_scale + (1 - c.min_scale) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.scale

    def start(self, step: int) -> None:
        """Set the rates for training from ``step`` (a fresh start or a resume)."""
        if self.cfg.name == "cosine":
            self.scale = self.cosine_scale(step)
        self._apply()

    def after_step(self, step: int) -> None:
        """Called after training step ``step`` (1-based count of steps done)."""
        if self.cfg.name == "cosine":
            self.scale = self.cosine_scale(step)
            self._apply()

    def after_validation(self, improved: bool) -> bool:
        """Called after each validation; returns whether the rate was reduced."""
        if self.cfg.name != "plateau":
            return False
        self.bad_validations = 0 if improved else self.bad_validations + 1
        if self.bad_validations <= self.cfg.patience or self.scale <= self.cfg.min_scale:
            return False
        self.scale = max(self.scale * self.cfg.factor, self.cfg.min_scale)
        self.bad_validations = 0
        self._apply()
        return True

    def state_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.bad_validations = int(state["bad_validations"])
        self._apply()


def _squares(out: Any) -> Tensor:
    """``Σ ||e||²`` over every embedding vector of a pooled or unpooled lookup output."""
    if isinstance(out, KeyedTensor):
        return out.values().pow(2).sum()
    if isinstance(out, dict):
        return sum(jt.values().pow(2).sum() for jt in out.values() if isinstance(jt, JaggedTensor))
    raise TypeError(f"embedding regularizer: unexpected lookup output {type(out).__name__}")


class EmbeddingRegularizer:
    """Collects ``Σ ||e||²`` of the lookups of every embedding module of one forward.

    For an unpooled lookup (``EmbeddingCollection``: sequences and target features) and
    a bag of one id, the vectors are the looked-up rows themselves; for a bag of several
    ids it is the pooled vector. Attach it to the sharded model; each ``pop()`` returns
    the sum since the last one.

    Args:
        modules: the (sharded) embedding modules whose outputs are regularized.
    """

    def __init__(self, modules: List[nn.Module]) -> None:
        if not modules:
            raise ValueError("train.embedding_regularizer: the model has no embedding module")
        self._terms: List[Tensor] = []
        for m in modules:
            m.register_forward_hook(self._hook)

    def _collect(self, out: Any) -> Any:
        self._terms.append(_squares(out))
        return out

    def _hook(self, module: nn.Module, inputs: Any, out: Any) -> None:
        # sharded modules return an awaitable: collect when the model waits on it
        if isinstance(out, Awaitable):
            out.callbacks.append(self._collect)
        else:
            self._collect(out)

    def pop(self) -> Tensor:
        """``Σ ||e||²`` over the lookups since the last call (a scalar tensor; zero when
        there were none, as while TorchRec's pipeline traces the model)."""
        terms, self._terms = self._terms, []
        if not terms:
            return torch.zeros(())
        return torch.stack([t.float() for t in terms]).sum()
