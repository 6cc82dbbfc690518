"""InterFormer's modules: shapes, masks, padding invariance, summaries that read the
right positions, MaskNet and LCE against their formulas, local attention in the module
and in the whole model, and interaction variants that learn a planted pairwise
interaction."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import InterFormerConfig, ModelConfig, Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.models.interformer import InterFormer
from interformer_rec.modules.cross import LCE, PMA, CrossArch, SelfGating, SequenceSummary
from interformer_rec.modules.embeddings import DenseTokens
from interformer_rec.modules.interaction import InteractionArch, build_interaction
from interformer_rec.modules.sequence import PFFN, MaskNet, MultiHeadSelfAttention, SequenceArch
from interformer_rec.ops.positions import apply_rotary, recency_positions, rotary_angles
from interformer_rec.ops.sequences import gather_recent

from test_baselines import _row

B, D, H = 4, 8, 2
C, P, K = 2, 2, 3  # CLS, PMA seeds, recent


def _lengths(T):
    return torch.tensor([0, 1, T // 2, T])


def _valid(lengths, T, c=C):
    steps = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return torch.cat([torch.ones(len(lengths), c, dtype=torch.bool), steps], dim=1)


def _garbage_padded(s, valid, scale=50.0):
    """``s`` with large random values at invalid positions."""
    return torch.where(valid.unsqueeze(-1), s, scale * torch.randn_like(s))


# --------------------------------------------------------------------------- shapes


def test_shapes_of_every_arch():
    T, n = 6, 5
    lengths = _lengths(T)
    valid = _valid(lengths, T)
    x = torch.randn(B, n, D)
    s = torch.randn(B, C + T, D)
    assert DenseTokens(3, D)(torch.randn(B, 3)).shape == (B, 3, D)
    assert LCE(n, C)(x).shape == (B, C, D)
    assert SelfGating(n, D)(x).shape == (B, n, D)
    assert PMA(P, D, H)(s, valid).shape == (B, P, D)
    x_sum, s_sum = CrossArch(n, C, P, K, D, H)(x, s, valid, lengths)
    assert x_sum.shape == (B, C, D) and s_sum.shape == (B, C + P + K, D)
    assert MaskNet(2 * D, 16, D)(torch.randn(B, T, 2 * D), valid[:, C:]).shape == (B, T, D)
    assert MultiHeadSelfAttention(D, H)(s, valid).shape == (B, C + T, D)
    assert PFFN(C, D)(s, x_sum).shape == (B, C + T, D)
    assert SequenceArch(C, D, H, 16)(s, x_sum, valid).shape == (B, C + T, D)
    for kind in ["dot", "dcn", "projection", "dhen", "dhen_flat"]:
        tokens = torch.cat([x, s_sum], dim=1)
        inter = build_interaction(kind, n + C + P + K, D, projection_branch1=[16], projection_branch2=[24])
        assert inter(tokens).shape == (B, inter.out_dim), kind
        assert InteractionArch(n, D, inter, [16])(x, s_sum).shape == (B, n, D)


def test_dot_interaction_holds_tokens_and_all_pairwise_dots():
    tokens = torch.randn(B, 4, D)
    out = build_interaction("dot", 4, D)(tokens)
    dots = torch.einsum("bid,bjd->bij", tokens, tokens)
    i, j = torch.triu_indices(4, 4, offset=1)
    ref = torch.cat([tokens[:, 0], dots[:, i, j], tokens[:, 1:].flatten(1)], dim=1)
    torch.testing.assert_close(out, ref)


def test_projection_rejects_branch_not_multiple_of_dim():
    with pytest.raises(ValueError, match="multiple of embedding_dim"):
        build_interaction("projection", 4, D, projection_branch1=[10])


# --------------------------------------------------------------------------- cross arch


def test_pma_ignores_padded_positions_and_equals_pma_on_truncated_sequence():
    torch.manual_seed(0)
    T = 6
    pma = PMA(P, D, H)
    lengths = torch.tensor([0, 2, 4, 6])
    valid = _valid(lengths, T)
    s = torch.randn(B, C + T, D)
    out = pma(s, valid)
    torch.testing.assert_close(pma(_garbage_padded(s, valid), valid), out, atol=1e-6, rtol=0)
    for b in range(B):
        L = C + int(lengths[b])
        ref = pma(s[b : b + 1, :L], torch.ones(1, L, dtype=torch.bool))
        torch.testing.assert_close(out[b : b + 1], ref, atol=1e-6, rtol=0)
    # a real step does matter
    s2 = s.clone()
    s2[3, C + 1] += 1.0
    assert not torch.allclose(pma(s2, valid)[3], out[3])


def test_target_aware_pma_shifts_each_examples_seeds_by_its_tokens():
    torch.manual_seed(0)
    T, n = 6, 3
    pma = PMA(P, D, H, context_tokens=n)
    lengths = torch.tensor([0, 2, 4, 6])
    valid = _valid(lengths, T)
    s, x = torch.randn(B, C + T, D), torch.randn(B, n, D)
    out = pma(s, valid, x)
    assert out.shape == (B, P, D)
    torch.testing.assert_close(pma(_garbage_padded(s, valid), valid, x), out, atol=1e-6, rtol=0)
    plain = PMA(P, D, H)
    plain.load_state_dict({k: v for k, v in pma.state_dict().items() if not k.startswith("context.")})
    for b in range(B):
        # the same as a plain PMA whose learned seeds are this example's shifted seeds
        with torch.no_grad():
            plain.seeds.copy_(pma.seeds + pma.context(x[b].flatten()).view(P, D))
        torch.testing.assert_close(out[b : b + 1], plain(s[b : b + 1], valid[b : b + 1]), atol=1e-6, rtol=0)
    x2 = x.clone()
    x2[1] += 1.0
    changed = pma(s, valid, x2)
    assert not torch.allclose(changed[1], out[1])
    torch.testing.assert_close(changed[[0, 2, 3]], out[[0, 2, 3]])
    with pytest.raises(ValueError, match="non-sequence tokens"):
        pma(s, valid)


def test_sequence_summary_reads_cls_positions_and_recent_steps():
    T = 5
    summ = SequenceSummary(C, P, K, D, H)
    lengths = torch.tensor([0, 1, 3, 5])
    valid = _valid(lengths, T)
    s = torch.randn(B, C + T, D) * valid.unsqueeze(-1)
    tokens = summ.tokens(s, valid, lengths)
    assert tokens.shape == (B, C + P + K, D)
    torch.testing.assert_close(tokens[:, :C], s[:, :C])
    torch.testing.assert_close(tokens[:, C + P :], gather_recent(s, lengths, K, offset=C))
    torch.testing.assert_close(tokens[2, C + P], s[2, C + 2])  # most recent real step of row 2


def test_lce_is_a_linear_map_over_the_token_axis():
    lce = LCE(3, 2)
    with torch.no_grad():
        lce.proj.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))
        lce.proj.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [1, 3 tokens, d = 2]
    # out[:, j] = sum_i W[j, i] X[:, i] + b[j]
    torch.testing.assert_close(lce(x), torch.tensor([[[6.5, 8.5], [5.0, 7.0]]]))
    torch.manual_seed(0)
    lce = LCE(5, 3)
    x = torch.randn(B, 5, D)
    want = torch.einsum("ji,bid->bjd", lce.proj.weight, x) + lce.proj.bias.view(1, 3, 1)
    torch.testing.assert_close(lce(x), want)


def test_self_gating_is_x_times_sigmoid_mlp():
    g = SelfGating(3, D)
    x = torch.randn(B, 3, D)
    ref = x * torch.sigmoid(g.gate(x.flatten(1))).view(B, 3, D)
    torch.testing.assert_close(g(x), ref)


# --------------------------------------------------------------------------- sequence arch


def test_attention_ignores_padded_keys():
    torch.manual_seed(0)
    T = 6
    mha = MultiHeadSelfAttention(D, H, rope=True)
    lengths = _lengths(T)
    valid = _valid(lengths, T)
    s = torch.randn(B, C + T, D)
    for pos in (None, recency_positions(lengths, C, T)):
        a, b = mha(s, valid, pos), mha(_garbage_padded(s, valid), valid, pos)
        torch.testing.assert_close(a[valid], b[valid], atol=1e-6, rtol=0)


def _window_allowed(c, T, W):
    """[c + T, c + T] bool: who may attend to whom under MultiHeadSelfAttention's local
    rule, written out position by position."""
    L = c + T
    allowed = torch.zeros(L, L, dtype=torch.bool)
    allowed[:c] = True
    allowed[:, :c] = True
    for i in range(T):
        for j in range(T):
            allowed[c + i, c + j] = j // W in (i // W, i // W - 1)
    return allowed


def _attention_reference(mha, s, valid, positions, mask):
    """MultiHeadSelfAttention written out with its own weights: qkv, RoPE at
    ``positions``, SDPA under ``mask [B, L, L]``, output projection."""
    B, L, d = s.shape
    h = mha.num_heads
    q, k, v = mha.qkv(s).view(B, L, 3, h, d // h).permute(2, 0, 3, 1, 4)
    cos, sin = (a.unsqueeze(1) for a in rotary_angles(positions, d // h))
    o = F.scaled_dot_product_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, attn_mask=mask[:, None])
    return mha.out(o.transpose(1, 2).reshape(B, L, d))


@pytest.mark.parametrize("T,W", [(7, 3), (9, 3), (12, 5)])
def test_local_attention_matches_the_reference_under_the_window_mask(T, W):
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(D, H, rope=True, num_global=C, window=W)
    lengths = _lengths(T)
    valid = _valid(lengths, T)
    pos = recency_positions(lengths, C, T)
    s = torch.randn(B, C + T, D)
    out = mha(s, valid, pos)
    padding = valid[:, None, :].expand(B, C + T, C + T)
    with torch.no_grad():
        # the reference is the full-attention module when only padding is masked
        full = MultiHeadSelfAttention(D, H, rope=True)
        full.load_state_dict(mha.state_dict())
        torch.testing.assert_close(full(s, valid, pos), _attention_reference(mha, s, valid, pos, padding))
        ref = _attention_reference(mha, s, valid, pos, _window_allowed(C, T, W)[None] & padding)
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=0)
    # padded keys are ignored on the local path too
    torch.testing.assert_close(mha(_garbage_padded(s, valid), valid, pos)[valid], out[valid], atol=1e-5, rtol=0)


def test_local_attention_is_full_attention_when_the_sequence_fits_the_window():
    torch.manual_seed(0)
    T = 6
    local = MultiHeadSelfAttention(D, H, num_global=C, window=T)
    full = MultiHeadSelfAttention(D, H)
    full.load_state_dict(local.state_dict())
    s, valid = torch.randn(B, C + T, D), _valid(_lengths(T), T)
    torch.testing.assert_close(local(s, valid), full(s, valid))


def test_sequence_arch_zeroes_padding_and_ignores_it():
    torch.manual_seed(0)
    T = 6
    arch = SequenceArch(C, D, H, 16)
    lengths = _lengths(T)
    valid = _valid(lengths, T)
    s, x_sum = torch.randn(B, C + T, D), torch.randn(B, C, D)
    pos = recency_positions(lengths, C, T)
    out = arch(s, x_sum, valid, pos)
    assert torch.all(out[~valid] == 0)
    torch.testing.assert_close(arch(_garbage_padded(s, valid), x_sum, valid, pos), out, atol=1e-6, rtol=0)


def test_pffn_depends_on_x_sum_and_trains_its_generator():
    torch.manual_seed(0)
    T = 5
    pffn = PFFN(C, D)
    s, x_sum = torch.randn(B, T, D), torch.randn(B, C, D, requires_grad=True)
    out = pffn(s, x_sum)
    assert not torch.allclose(out, pffn(s, x_sum + 0.5))
    # per-example weights: row 0's output changes only with row 0's summary
    x2 = x_sum.detach().clone()
    x2[0] += 1.0
    out2 = pffn(s, x2)
    assert not torch.allclose(out2[0], out[0]) and torch.allclose(out2[1:], out[1:])
    out.square().sum().backward()
    assert pffn.generator.weight.grad.abs().sum() > 0 and x_sum.grad.abs().sum() > 0
    # and the whole sequence block depends on X_sum
    arch = SequenceArch(C, D, H, 16)
    valid = _valid(_lengths(T), T)
    s = torch.randn(B, C + T, D)
    assert not torch.allclose(arch(s, x_sum.detach(), valid), arch(s, x_sum.detach() + 0.5, valid))


def test_masknet_zeroes_padded_steps():
    T = 5
    lengths = _lengths(T)
    valid = _valid(lengths, T, c=0)
    out = MaskNet(2 * D, 16, D)(torch.randn(B, T, 2 * D), valid)
    assert torch.all(out[~valid] == 0) and torch.all(out[valid].abs().sum(-1) > 0)


def test_masknet_is_lce_of_the_input_gated_by_its_instance_mask():
    torch.manual_seed(0)
    net = MaskNet(4, 3, 2)
    e = torch.randn(2, 3, 4)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    (hidden, last), lce = [p._linear for p in net.mlp_mask._mlp], net.mlp_lce
    # MaskNet(S) = MLP_lce(S ⊙ MLP_mask(S)), MLP_mask = Linear(SiLU(Linear(S)))
    mask = last(F.silu(hidden(e)))
    want = torch.where(valid.unsqueeze(-1), lce(e * mask), torch.zeros(2, 3, 2))
    torch.testing.assert_close(net(e, valid), want)
    # by hand: a constant mask (2, 0, 1, 1) scales the first input, drops the second
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([2.0, 0.0, 1.0, 1.0]))
        lce.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]]))
        lce.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[1.0, 7.0, 3.0, 4.0]]])
    torch.testing.assert_close(net(x, torch.ones(1, 1, dtype=torch.bool)), torch.tensor([[[2 + 3 + 0.5, -4.0]]]))


def test_masknet_mask_starts_near_one():
    """At init the last mask layer's bias is 1, so the mask is ``1 + W·SiLU(...)``."""
    net = MaskNet(4, 3, 2)
    torch.testing.assert_close(net.mlp_mask._mlp[-1]._linear.bias, torch.ones(4))


# --------------------------------------------------------------------------- whole model padding


def _schema(max_len):
    return Schema(
        labels=["click"],
        dense=["d0"],
        sparse=[SparseFeature("user", "user"), SparseFeature("item", "item")],
        sequence=[SequenceFeature("hist_item", "item", max_len), SequenceFeature("hist_cat", "cat", max_len)],
        tables=[TableConfig("user", 50), TableConfig("item", 40), TableConfig("cat", 10)],
    )


def _model_cfg():
    return ModelConfig(
        embedding_dim=D,
        interformer=InterFormerConfig(
            num_layers=2, num_heads=H, num_cls=C, num_pma=P, num_recent=K, interaction_mlp=[16],
            dcn_low_rank=4, masknet_hidden=16, ffn_hidden=16, over_arch=[16],
        ),
    )


def _inputs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, total = len(lengths), int(lengths.sum())
    dense = torch.randn(n, 1, generator=g)
    sparse = KeyedJaggedTensor.from_lengths_sync(["user"], torch.randint(0, 50, (n,), generator=g), torch.ones(n, dtype=torch.long))
    values = torch.cat([
        torch.randint(0, 40, (n,), generator=g),
        torch.randint(0, 40, (total,), generator=g),
        torch.randint(0, 10, (total,), generator=g),
    ])
    sequence = KeyedJaggedTensor.from_lengths_sync(
        ["item", "hist_item", "hist_cat"], values, torch.cat([torch.ones(n, dtype=torch.long), lengths, lengths])
    )
    return dense, sparse, sequence


def test_model_padding_invariance_larger_T_and_garbage():
    torch.manual_seed(0)
    model = InterFormer(_schema(6), _model_cfg()).eval()
    lengths = torch.tensor([0, 2, 5, 6])
    inputs = _inputs(lengths)
    out = model(*inputs)
    # same rows, a larger T (more padded steps), same parameters
    big = InterFormer(_schema(11), _model_cfg()).eval()
    big.load_state_dict(model.state_dict())
    torch.testing.assert_close(big(*inputs), out, atol=1e-6, rtol=0)
    # garbage at every padded step of the per-step embeddings, plus 4 extra padded steps
    x, steps, lens = model.embed(*inputs)
    steps = torch.cat([steps, torch.zeros(B, 4, steps.size(-1))], dim=1)
    step_valid = torch.arange(steps.size(1)).unsqueeze(0) < lens.unsqueeze(1)
    steps = torch.where(step_valid.unsqueeze(-1), steps, 100 * torch.randn_like(steps))
    torch.testing.assert_close(model.forward_embedded(x, steps, lens), out, atol=1e-6, rtol=0)


def test_model_pads_each_batch_to_its_longest_history_and_jagged_masknet_equals_padded():
    """A batch's steps are as long as its longest real history (at least 1), not
    max_len; the model's forward (MaskNet on the jagged real steps) equals the padded
    path at the batch's T and at max_len; the same row scores alike in batches of
    different T."""
    torch.manual_seed(0)
    model = InterFormer(_schema(20), _model_cfg()).eval()
    by_row = {}
    for seed, lengths in enumerate(([0, 2, 5, 6], [0, 0, 0, 0], [1, 3, 3, 2], [20, 0, 1, 7])):
        inputs = _inputs(torch.tensor(lengths), seed=seed)
        x, steps, lens = model.embed(*inputs)
        assert steps.size(1) == max(1, *lengths)
        out = model(*inputs)
        torch.testing.assert_close(model.forward_embedded(x, steps, lens), out, atol=1e-6, rtol=0)
        padded = F.pad(steps, (0, 0, 0, 20 - steps.size(1)))
        torch.testing.assert_close(model.forward_embedded(x, padded, lens), out, atol=1e-6, rtol=0)
        by_row[seed] = (inputs, out)
    # row 1 of the first batch (2 steps, T = 6) alone in a batch of T = 2
    dense, sparse, sequence = by_row[0][0]
    alone = (dense[1:2], _row(sparse, 1), _row(sequence, 1))
    assert model.embed(*alone)[1].size(1) == 2
    torch.testing.assert_close(model(*alone), by_row[0][1][1:2], atol=1e-6, rtol=0)


def test_model_local_attention_changes_only_rows_longer_than_the_window():
    """Whole model: a window covering the sequence is full attention; a window of 2
    steps changes the rows whose history is longer than one window (their steps no longer
    see the oldest ones) and no other row."""
    def model(window):
        cfg = _model_cfg()
        cfg.interformer.attention_window = window
        return InterFormer(_schema(6), cfg).eval()

    torch.manual_seed(0)
    full = model(0)
    inputs = _inputs(torch.tensor([0, 2, 5, 6]))
    out = full(*inputs)
    for window, changed in ((6, []), (2, [2, 3])):
        local = model(window)
        local.load_state_dict(full.state_dict())
        got = local(*inputs)
        same = [b for b in range(B) if b not in changed]
        torch.testing.assert_close(got[same], out[same], atol=1e-6, rtol=0)
        assert all(not torch.allclose(got[b], out[b], atol=1e-4) for b in changed), window


def test_model_rows_are_independent_of_batch_mates():
    torch.manual_seed(0)
    model = InterFormer(_schema(6), _model_cfg()).eval()
    lengths = torch.tensor([0, 2, 5, 6])
    dense, sparse, sequence = _inputs(lengths)
    out = model(dense, sparse, sequence)
    x, steps, lens = model.embed(dense, sparse, sequence)
    for b in range(B):
        torch.testing.assert_close(
            model.forward_embedded(x[b : b + 1], steps[b : b + 1], lens[b : b + 1]), out[b : b + 1], atol=1e-6, rtol=0
        )


# --------------------------------------------------------------------------- planted interaction


class _Flat(nn.Module):
    """No-interaction baseline: the tokens flattened (a linear model on top)."""

    def __init__(self, num_tokens, dim):
        super().__init__()
        self.out_dim = num_tokens * dim

    def forward(self, tokens):
        return tokens.flatten(1)


def _planted(n, g, num_tokens=3, dim=4):
    """Random tokens; label = [<t0, t1> > 0], a pure pairwise interaction (XOR-like:
    no linear function of the tokens beats chance)."""
    t = torch.randn(n, num_tokens, dim, generator=g)
    return t, ((t[:, 0] * t[:, 1]).sum(-1) > 0).float()


def _fit_accuracy(inter, steps=300, seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (xt, yt), (xv, yv) = _planted(2048, g), _planted(1024, g)
    model = nn.Sequential(inter, nn.Linear(inter.out_dim, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(xt).squeeze(1), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((model(xv).squeeze(1) > 0).float() == yv).float().mean().item()


def test_no_interaction_baseline_cannot_learn_planted_product():
    assert _fit_accuracy(_Flat(3, 4)) < 0.6


@pytest.mark.parametrize("kind", ["dot", "dcn", "projection", "dhen", "dhen_flat"])
def test_interaction_learns_planted_pairwise_product(kind):
    inter = build_interaction(kind, 3, 4, dcn_layers=2, low_rank=8, projection_branch1=[16], projection_branch2=[16])
    assert _fit_accuracy(inter) > 0.85
