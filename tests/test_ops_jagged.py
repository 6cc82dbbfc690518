"""The ATen versions of fbgemm's jagged ops equal fbgemm's own ops: random jagged
inputs with empty rows, rows longer than the padded length (truncated), padding values,
1-D and 2-D values, int32 and int64 offsets, and an empty batch."""

from __future__ import annotations

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import pytest
import torch

from interformer_rec.ops.jagged import aten_decompositions, complete_cumsum, jagged_to_padded_dense


def random_lengths(batch: int, max_length: int, seed: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``[batch]`` lengths in ``0..max_length``, rows 0 and 1 empty and full when they exist."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_length + 1, (batch,), generator=g)
    lengths[:2] = torch.tensor([0, max_length])[:batch]
    return lengths.to(dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("batch", [0, 1, 7, 300])
def test_complete_cumsum_equals_fbgemm(dtype, batch):
    lengths = random_lengths(batch, 9, seed=batch, dtype=dtype)
    want = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    got = complete_cumsum(lengths)
    assert got.dtype == want.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("value_shape", [(), (3,)], ids=["1d", "2d"])
@pytest.mark.parametrize("padding_value", [0.0, -1.5])
@pytest.mark.parametrize("max_length,longest", [(5, 5), (4, 9), (8, 3)], ids=["exact", "truncated", "padded"])
def test_jagged_to_padded_dense_equals_fbgemm(offsets_dtype, value_shape, padding_value, max_length, longest):
    """Rows of 0..``longest`` values padded (or cut) to ``max_length``."""
    lengths = random_lengths(33, longest, seed=longest)
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths).to(offsets_dtype)
    values = torch.randn(int(lengths.sum()), *value_shape)
    want = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max_length], padding_value)
    got = jagged_to_padded_dense(values, [offsets], [max_length], padding_value)
    assert got.shape == want.shape == (33, max_length, *value_shape)
    assert torch.equal(got, want)
    assert (got[0] == padding_value).all()  # row 0 is empty


def test_jagged_to_padded_dense_all_empty_and_no_rows():
    for batch in (0, 4):
        offsets = torch.zeros(batch + 1, dtype=torch.int64)
        values = torch.randn(0, 2)
        want = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [3], 7.0)
        got = jagged_to_padded_dense(values, [offsets], [3], 7.0)
        assert got.shape == want.shape == (batch, 3, 2) and torch.equal(got, want)


def test_jagged_to_padded_dense_half_precision():
    lengths = random_lengths(16, 6, seed=1)
    offsets = complete_cumsum(lengths)
    for dtype in (torch.float16, torch.bfloat16):
        values = torch.randn(int(lengths.sum()), 4).to(dtype)
        want = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [4], 0.5)
        assert torch.equal(jagged_to_padded_dense(values, [offsets], [4], 0.5), want)


def test_jagged_to_padded_dense_one_jagged_dim_only():
    offsets = torch.tensor([0, 1, 2])
    with pytest.raises(NotImplementedError, match="one jagged dimension"):
        jagged_to_padded_dense(torch.randn(2, 1), [offsets, offsets], [1, 1])


def test_aten_decompositions_replace_the_fbgemm_ops_in_an_export():
    """An exported graph calling both fbgemm ops holds none after the decomposition,
    and gives fbgemm's outputs."""

    class Pad(torch.nn.Module):
        def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
            return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [4], -2.0)

    lengths = random_lengths(6, 7, seed=3)
    values = torch.randn(int(lengths.sum()), 2)
    ep = torch.export.export(Pad(), (values, lengths), strict=False).run_decompositions(aten_decompositions())
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if t.startswith("fbgemm.")], targets
    assert torch.equal(ep.module()(values, lengths), Pad()(values, lengths))
