"""The pure tensor functions of ``interformer_rec.ops``, each against a hand-computed case
or a brute-force reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from interformer_rec.ops.attention import local_attention, num_blocks, step_blocks, window_key_mask, window_keys
from interformer_rec.ops.positions import apply_rotary, recency_positions, rotary, rotary_angles
from interformer_rec.ops.sequences import gather_recent, masked_mean, match_tokens, right_align

# --------------------------------------------------------------------------- positions


def test_rotary_rotates_each_pair_by_position_times_frequency():
    # head dim 2: one frequency, 1; position pi/2 turns (1, 0) into (0, 1)
    cos, sin = rotary_angles(torch.tensor([0.0, math.pi / 2, math.pi]), 2)
    out = apply_rotary(torch.tensor([[1.0, 0.0]]).expand(3, 2), cos, sin)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), atol=1e-6, rtol=0)
    # head dim 4: frequencies 1 and base^(-1/2) = 0.01; pairs are (x0, x2) and (x1, x3)
    cos, sin = rotary_angles(torch.tensor([2.0]), 4)
    torch.testing.assert_close(cos, torch.tensor([[math.cos(2.0), math.cos(0.02)]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    c0, c1, s0, s1 = math.cos(2.0), math.cos(0.02), math.sin(2.0), math.sin(0.02)
    want = torch.tensor([[1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 1 * s0 + 3 * c0, 2 * s1 + 4 * c1]])
    torch.testing.assert_close(apply_rotary(x, cos, sin), want)


def test_rotary_preserves_norms_and_is_the_identity_at_position_zero():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    out = rotary(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :])
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :])


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)

    def score(m, n):
        cos, sin = rotary_angles(torch.tensor([float(m), float(n)]), 8)
        rq, rk = apply_rotary(q.expand(2, 8), cos, sin), apply_rotary(k.expand(2, 8), cos, sin)
        return rq[0] @ rk[1]

    torch.testing.assert_close(score(1, 4), score(3, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(score(0, 0), score(5, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(score(0, 0), q @ k, atol=1e-5, rtol=0)
    torch.testing.assert_close(score(-2.5, 1), score(10, 13.5), atol=1e-4, rtol=0)
    assert not torch.allclose(score(0, 1), score(0, 3))
    # rotary() uses positions 0..T'-1
    rq, rk = rotary(q.expand(6, 8)), rotary(k.expand(6, 8))
    torch.testing.assert_close(rq[2] @ rk[5], score(2, 5), atol=1e-5, rtol=0)


def test_recency_positions_count_back_from_the_most_recent_step():
    pos = recency_positions(torch.tensor([2, 4, 0]), num_cls=2, max_len=4)
    assert pos.dtype == torch.int64
    assert pos.tolist() == [
        [0, 1, 3, 2, 1, 0],  # 2 steps: the most recent (index 1) at c = 2, padded below c
        [0, 1, 5, 4, 3, 2],
        [0, 1, 1, 0, -1, -2],  # no steps: all padded
    ]


def test_recency_positions_make_the_cls_to_step_score_depend_on_age_not_length():
    """Same query at CLS 0, same key at every step: under RoPE with recency positions the
    CLS-to-step score of the step of age a is the same in histories of any length; with
    left-aligned indices it is not (the most recent step moves with the length)."""
    torch.manual_seed(0)
    c, T, D = 2, 6, 8
    lengths = torch.tensor([2, 4, 6])
    q, k = torch.randn(D), torch.randn(D)
    x = torch.cat([q.expand(3, c, D), k.expand(3, T, D)], dim=1)  # [3, c + T, D]

    def cls_scores(positions):
        rx = apply_rotary(x, *rotary_angles(positions, D))
        return (rx[:, c:] * rx[:, :1]).sum(-1)  # [3, T]: CLS 0 against every step

    by_age = cls_scores(recency_positions(lengths, c, T))
    for age in range(2):  # ages 0 and 1 exist in every row
        at = [by_age[b, lengths[b] - 1 - age] for b in range(3)]
        torch.testing.assert_close(at[0], at[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(at[0], at[2], atol=1e-5, rtol=0)
    by_index = cls_scores(torch.arange(c + T))
    most_recent = [by_index[b, lengths[b] - 1] for b in range(3)]
    assert not torch.allclose(most_recent[0], most_recent[2], atol=1e-3)


# --------------------------------------------------------------------------- sequences


def test_gather_recent_takes_the_last_real_steps_most_recent_first():
    B, C, T, K, D = 4, 2, 5, 3, 2
    lengths = torch.tensor([0, 1, 2, 5])
    # value at row b, step t = 100 b + t + 1 (CLS positions hold -1)
    steps = (100 * torch.arange(B).view(B, 1) + torch.arange(T).view(1, T) + 1).float()
    s = torch.cat([-torch.ones(B, C), steps], dim=1).unsqueeze(-1).expand(B, C + T, D)
    out = gather_recent(s, lengths, K, offset=C)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # no real steps: all zeros
            [101.0, 0.0, 0.0],  # one step
            [202.0, 201.0, 0.0],  # two steps, most recent first
            [305.0, 304.0, 303.0],  # full: the last real steps, not padding
        ]
    )
    torch.testing.assert_close(out, expected.unsqueeze(-1).expand(B, K, D))
    # whatever the padded positions hold
    valid = torch.arange(C + T) < (C + lengths).unsqueeze(1)
    garbage = torch.where(valid.unsqueeze(-1), s, 50 * torch.randn(B, C + T, D))
    torch.testing.assert_close(gather_recent(garbage, lengths, K, offset=C), out)


def test_right_align_moves_the_real_steps_to_the_end():
    left = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0], [9.0, 0.0, 0.0, 0.0]])
    out = right_align(left.unsqueeze(-1).expand(4, 4, 3), torch.tensor([2, 0, 4, 1]))
    want = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 0.0, 9.0]])
    torch.testing.assert_close(out, want.unsqueeze(-1).expand(4, 4, 3))


def test_masked_mean_averages_the_real_steps_only():
    steps = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[-7.0, 7.0], [50.0, 50.0], [50.0, 50.0]]])
    steps = torch.cat([steps, torch.full((1, 3, 2), 9.0)])
    valid = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(steps, valid), torch.tensor([[2.0, 3.0], [-7.0, 7.0], [0.0, 0.0]]))


def test_match_tokens_sum_target_times_history_over_real_steps():
    # k = 2 sequences of d = 2; pairs (target 0, sequence 0) and (target 1, sequence 1)
    targets = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    steps = torch.tensor([[[1.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 5.0], [0.0, 0.0, 0.0, 0.0]]])  # last step padded
    out = match_tokens(targets, steps, num_sequences=2, pairs=[(0, 0), (1, 1)])
    # pair 0: [1, 2] * ([1, 1] + [0, 3]) = [1, 8]; pair 1: [3, -1] * ([2, 0] + [1, 5]) = [9, -5]
    torch.testing.assert_close(out, torch.tensor([[[1.0, 8.0], [9.0, -5.0]]]))
    # a pair may read any target against any sequence
    cross = match_tokens(targets, steps, num_sequences=2, pairs=[(1, 0)])
    torch.testing.assert_close(cross, torch.tensor([[[3.0, -4.0]]]))


# --------------------------------------------------------------------------- local attention


def _brute_force_allowed(c, T, W):
    """[c + T, c + T] bool: who may attend to whom, written out position by position."""
    L = c + T
    allowed = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            if i < c or j < c:
                allowed[i, j] = True
            else:
                allowed[i, j] = (j - c) // W in ((i - c) // W, (i - c) // W - 1)
    return allowed


def _valid(lengths, c, T):
    return torch.cat([torch.ones(len(lengths), c, dtype=torch.bool), torch.arange(T) < lengths.unsqueeze(1)], dim=1)


@pytest.mark.parametrize("c,T,W", [(2, 7, 3), (1, 9, 3), (2, 12, 5), (0, 4, 1)])
def test_window_keys_and_mask_select_exactly_the_allowed_real_keys(c, T, W):
    lengths = torch.tensor([0, 1, T // 2, T])
    B, L = len(lengths), c + T
    valid = _valid(lengths, c, T)
    # each key holds its position + 1, so the zero padding of the blocks reads 0
    x = (torch.arange(L) + 1).float().view(1, 1, L, 1).expand(B, 1, L, 1)
    keys = window_keys(x, c, W)[:, 0, :, :, 0]  # [B, nb, c + 2W]
    mask = window_key_mask(valid, c, W)
    nb = num_blocks(T, W)
    assert keys.shape == mask.shape == (B, nb, c + 2 * W)
    assert not mask[keys == 0].any()  # padding is never attended to
    allowed = _brute_force_allowed(c, T, W)
    for b in range(B):
        for i in range(c, L):
            block = (i - c) // W
            got = sorted(int(p) - 1 for p in keys[b, block][mask[b, block]])
            want = [j for j in range(L) if allowed[i, j] and valid[b, j]]
            assert got == want, (b, i)
    # queries are blocked the same way
    blocks = step_blocks(x[:, :, c:], W)[:, 0, :, :, 0]
    torch.testing.assert_close(blocks.flatten(1)[:, :T], x[:, 0, c:, 0])


@pytest.mark.parametrize("c,T,W", [(2, 7, 3), (2, 9, 3), (3, 12, 5)])
def test_local_attention_equals_full_attention_under_the_brute_force_mask(c, T, W):
    torch.manual_seed(0)
    lengths = torch.tensor([0, 1, T // 2, T])
    B, h, dh, L = len(lengths), 2, 4, c + T
    valid = _valid(lengths, c, T)
    q, k, v = torch.randn(3, B, h, L, dh).unbind(0)
    out = local_attention(q, k, v, valid, c, W)
    mask = _brute_force_allowed(c, T, W)[None] & valid[:, None, :]  # [B, L, L]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    torch.testing.assert_close(out[valid.unsqueeze(1).expand(B, h, L)], ref[valid.unsqueeze(1).expand(B, h, L)])
    # the global rows attend to everything valid: exactly full attention there
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
    torch.testing.assert_close(out[:, :, :c], full[:, :, :c])
