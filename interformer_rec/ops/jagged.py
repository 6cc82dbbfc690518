"""fbgemm's jagged ops in ATen, for graphs that must run without fbgemm.

``torch.export`` of a model with KJT inputs records the fbgemm ops that TorchRec's
jagged types call. :func:`aten_decompositions` maps each of them to its ATen version
here, so that ``ExportedProgram.run_decompositions`` leaves a graph of ATen ops only
(an AOTInductor package of it loads with ``torch`` alone). Each function returns what
its fbgemm op returns (tested against fbgemm in ``tests/test_ops_jagged.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch
from torch import Tensor


def complete_cumsum(t: Tensor) -> Tensor:
    """ATen version of ``fbgemm::asynchronous_complete_cumsum``.

    Args:
        t: ``[N]`` integer lengths.

    Returns:
        ``[N + 1]`` offsets, ``0`` first, in ``t``'s dtype.
    """
    return torch.cat([t.new_zeros(1), torch.cumsum(t, 0, dtype=t.dtype)])


def jagged_to_padded_dense(
    values: Tensor, offsets: List[Tensor], max_lengths: List[int], padding_value: float = 0.0
) -> Tensor:
    """ATen version of ``fbgemm::jagged_to_padded_dense`` for one jagged dimension.

    Args:
        values: ``[V, *D]``.
        offsets: ``[offsets [B + 1]]``.
        max_lengths: ``[T]``; rows longer than ``T`` keep their first ``T`` values.
        padding_value: the value after each row's values.

    Returns:
        ``[B, T, *D]``.
    """
    if len(offsets) != 1:
        raise NotImplementedError("jagged_to_padded_dense: one jagged dimension only")
    off, T = offsets[0], max_lengths[0]
    B, V = off.size(0) - 1, values.size(0)
    lengths = off[1:] - off[:-1]
    rows = torch.repeat_interleave(torch.arange(B, device=values.device), lengths, output_size=V)
    pos = (torch.arange(V, device=values.device) - off[:-1].index_select(0, rows)).clamp(max=T)
    out = values.new_full((B, T + 1, *values.shape[1:]), padding_value)  # slot T takes the overflow
    return out.index_put((rows, pos), values)[:, :T]


def aten_decompositions() -> Dict[Any, Callable[..., Tensor]]:
    """The fbgemm ops an exported TorchRec graph can hold, each mapped to its ATen
    version (the argument of ``ExportedProgram.run_decompositions``)."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    return {
        torch.ops.fbgemm.asynchronous_complete_cumsum.default: complete_cumsum,
        torch.ops.fbgemm.jagged_to_padded_dense.default: jagged_to_padded_dense,
    }
