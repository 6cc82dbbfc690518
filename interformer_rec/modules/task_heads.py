"""Multi-task heads: one logit per task from a shared summary vector.

- ``shared``: one MLP with ``T`` outputs (the over arch every model has).
- ``towers``: one MLP per task, each with one output.
- ``mmoe``: Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): ``E`` expert MLPs shared
  by the tasks, a softmax gate per task over the experts, computed from the summary,
  and a linear head per task on its mixture.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchrec.modules.mlp import MLP

from interformer_rec.config import ConfigError


class TaskTowers(nn.Module):
    """A separate MLP per task: ``[B, D] -> [B, T]``.

    Args:
        in_features: ``D``. hidden: each tower's hidden layer sizes. num_tasks: ``T``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_tasks: int) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            MLP(in_features, [*hidden, 1], activation=nn.SiLU, activation_on_last=False) for _ in range(num_tasks)
        )

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([tower(z) for tower in self.towers], dim=1)


class MMoE(nn.Module):
    """Multi-gate Mixture-of-Experts: ``[B, D] -> [B, T]``.

    ``e_j = Expert_j(z)`` (``[B, h]``, ``j < E``), ``g_t = softmax(W_t z)`` (``[B, E]``),
    ``logit_t = w_tᵀ Σ_j g_t[j]·e_j + b_t``.

    Args:
        in_features: ``D``. hidden: each expert's layer sizes (``h = hidden[-1]``).
        num_tasks: ``T``. num_experts: ``E``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_tasks: int, num_experts: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            MLP(in_features, list(hidden), activation=nn.SiLU) for _ in range(num_experts)
        )
        self.gates = nn.Linear(in_features, num_tasks * num_experts)
        self.head_weight = nn.Parameter(torch.randn(num_tasks, hidden[-1]) / hidden[-1] ** 0.5)
        self.head_bias = nn.Parameter(torch.zeros(num_tasks))
        self.num_tasks, self.num_experts = num_tasks, num_experts

    def forward(self, z: Tensor) -> Tensor:
        experts = torch.stack([e(z) for e in self.experts], dim=1)  # [B, E, h]
        gates = self.gates(z).unflatten(1, (self.num_tasks, self.num_experts)).softmax(-1)  # [B, T, E]
        mixed = torch.bmm(gates, experts)  # [B, T, h]
        return (mixed * self.head_weight).sum(-1) + self.head_bias


def build_task_heads(kind: str, in_features: int, hidden: Sequence[int], num_tasks: int, num_experts: int = 4) -> nn.Module:
    """The heads ``kind`` (``shared``, ``towers``, ``mmoe``): ``[B, D] -> [B, T]``."""
    if kind == "shared":
        return MLP(in_features, [*hidden, num_tasks], activation=nn.SiLU, activation_on_last=False)
    if not hidden:
        raise ConfigError(f"task_heads={kind!r} needs at least one over_arch layer")
    if kind == "towers":
        return TaskTowers(in_features, hidden, num_tasks)
    if kind == "mmoe":
        return MMoE(in_features, hidden, num_tasks, num_experts)
    raise ConfigError(f"task_heads={kind!r}: expected shared, towers or mmoe")
