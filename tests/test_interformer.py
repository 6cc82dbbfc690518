"""The InterFormer model end to end on a small schema: embedding modules, shapes,
gradients to every parameter, empty and full sequences, meta-device construction."""

import pytest
import torch
import torch.nn.functional as F
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from interformer_rec.config import InterFormerConfig, ModelConfig, Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.models import num_parameters
from interformer_rec.models.din import DINAttentionPooling
from interformer_rec.models.interformer import InterFormer, SimilarityTokens

T = 8
D = 8


def _schema(pooled=True):
    sparse = [SparseFeature("item_id", "item"), SparseFeature("item_cat", "cat")]
    tables = [TableConfig("item", 60), TableConfig("cat", 12)]
    if pooled:
        sparse = [SparseFeature("user_id", "user"), SparseFeature("tags", "tag"), *sparse]
        tables += [TableConfig("user", 30), TableConfig("tag", 20)]
    return Schema(
        labels=["click", "like"],
        dense=["d0", "d1"],
        sparse=sparse,
        sequence=[SequenceFeature("hist_item", "item", T), SequenceFeature("hist_cat", "cat", T)],
        tables=tables,
    )


def _cfg(interaction="dhen"):
    return ModelConfig(
        embedding_dim=D,
        interformer=InterFormerConfig(
            num_layers=2, num_heads=2, interaction=interaction, interaction_mlp=[16], dcn_low_rank=4,
            projection_branch1=[16], projection_branch2=[16], masknet_hidden=16, ffn_hidden=16, over_arch=[16],
        ),
    )


def _batch(lengths, pooled=True, seed=0):
    """dense [B, 2], sparse KJT (user_id one-hot, tags multi-hot 0..3), sequence KJT."""
    g = torch.Generator().manual_seed(seed)
    B, total = len(lengths), int(lengths.sum())
    dense = torch.randn(B, 2, generator=g)
    if pooled:
        tag_lens = torch.arange(B) % 4
        sparse = KeyedJaggedTensor.from_lengths_sync(
            ["user_id", "tags"],
            torch.cat([torch.randint(0, 30, (B,), generator=g), torch.randint(0, 20, (int(tag_lens.sum()),), generator=g)]),
            torch.cat([torch.ones(B, dtype=torch.long), tag_lens]),
        )
    else:
        sparse = KeyedJaggedTensor.from_lengths_sync([], torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    values = torch.cat([
        torch.randint(0, 60, (B,), generator=g),
        torch.randint(0, 12, (B,), generator=g),
        torch.randint(0, 60, (total,), generator=g),
        torch.randint(0, 12, (total,), generator=g),
    ])
    ones = torch.ones(B, dtype=torch.long)
    sequence = KeyedJaggedTensor.from_lengths_sync(
        ["item_id", "item_cat", "hist_item", "hist_cat"], values, torch.cat([ones, ones, lengths, lengths])
    )
    return dense, sparse, sequence


def test_embedding_modules_follow_schema():
    schema = _schema()
    model = InterFormer(schema, _cfg())
    assert isinstance(model.ebc, EmbeddingBagCollection) and isinstance(model.ec, EmbeddingCollection)
    assert {t.name: t.feature_names for t in model.ebc.embedding_bag_configs()} == {"user": ["user_id"], "tag": ["tags"]}
    # target features share their table with the history
    assert {t.name: t.feature_names for t in model.ec.embedding_configs()} == {
        "cat": ["item_cat", "hist_cat"],
        "item": ["item_id", "hist_item"],
    }
    configs = [*model.ebc.embedding_bag_configs(), *model.ec.embedding_configs()]
    assert all(t.embedding_dim == D for t in configs)
    # init scale set in the configs (so sharded kernels use it), independent of table size
    assert all(t.get_weight_init_max() == -t.get_weight_init_min() == (3 / D) ** 0.5 for t in configs)
    assert 0.5 < model.ec.embeddings["item"].weight.abs().max() <= (3 / D) ** 0.5
    assert model.num_tokens == 2 + 2 + 2 + 1  # dense, pooled, target, the target-attention token


@pytest.mark.parametrize("interaction", ["dot", "dcn", "projection", "dhen", "dhen_flat", "infnet"])
def test_forward_shapes(interaction):
    torch.manual_seed(0)
    model = InterFormer(_schema(), _cfg(interaction))
    out = model(*_batch(torch.tensor([0, 1, 3, T, 5])))
    assert out.shape == (5, 2) and torch.isfinite(out).all()


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = InterFormer(_schema(), _cfg())
    out = model(*_batch(torch.tensor([0, 1, 3, T, 5, 2])))
    F.binary_cross_entropy_with_logits(out, torch.rand_like(out).round()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("ebc.") for n in names) and any(n.startswith("ec.") for n in names)


def test_readout_tokens_feed_the_last_layers_tokens_to_the_over_arch():
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.interformer.readout_tokens = True
    model = InterFormer(_schema(), cfg)
    seen = {}
    model.arch.layers[-1].interaction_arch.register_forward_hook(lambda m, i, o: seen.update(x=o))
    model.arch.over_arch.register_forward_pre_hook(lambda m, i: seen.update(inp=i[0]))
    out = model(*_batch(torch.tensor([0, 1, 3, T, 5])))
    n = model.num_tokens
    assert seen["inp"].shape[1] == (2 * 4 + 2 + 2 + 1 + n) * D  # X_sum, S_sum, a, X^{L+1}
    torch.testing.assert_close(seen["inp"][:, -n * D :], seen["x"].flatten(1))
    assert out.shape == (5, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("length", [0, T])
def test_empty_and_full_sequences(length):
    torch.manual_seed(0)
    model = InterFormer(_schema(), _cfg())
    out = model(*_batch(torch.full((4,), length)))
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_no_pooled_features():
    torch.manual_seed(0)
    model = InterFormer(_schema(pooled=False), _cfg())
    assert model.ebc is None and model.num_tokens == 2 + 2 + 1
    out = model(*_batch(torch.tensor([0, 2, T]), pooled=False))
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_pooled_embeddings_read_by_name_not_position():
    """A sharded EBC may return its keys in another order; the model must not care."""
    torch.manual_seed(0)
    model = InterFormer(_schema(), _cfg()).eval()
    batch = _batch(torch.tensor([0, 2, T]))
    out = model(*batch)

    def reorder(_module, _inputs, kt: KeyedTensor) -> KeyedTensor:
        d = kt.to_dict()
        keys = list(reversed(kt.keys()))
        return KeyedTensor.from_tensor_list(keys, [d[k] for k in keys])

    model.ebc.register_forward_hook(reorder)
    torch.testing.assert_close(model(*batch), out)


def test_meta_device_construction():
    model = InterFormer(_schema(), _cfg(), embedding_device=torch.device("meta"))
    assert all(p.is_meta for p in model.ebc.parameters()) and all(p.is_meta for p in model.ec.parameters())
    dense_params = [p for n, p in model.named_parameters() if not n.startswith(("ebc.", "ec."))]
    assert dense_params and not any(p.is_meta for p in dense_params)
    assert num_parameters(model) == num_parameters(InterFormer(_schema(), _cfg()))


def test_rejects_schema_without_sequences():
    schema = Schema(labels=["y"], dense=["d0"], sparse=[SparseFeature("u", "user")], tables=[TableConfig("user", 5)])
    with pytest.raises(ValueError, match="sequence"):
        InterFormer(schema, _cfg())


def _target_in_history(n, g):
    """A batch whose label is "the target item occurs in the history" (half the rows get
    a target copied from a random real step). Only a model that relates the target to
    the sequence fits it: a pooled history forgets which items it held."""
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    dense, sparse, seq = _batch(lengths, pooled=False, seed=int(torch.randint(0, 10**6, (1,), generator=g)))
    jt = seq.to_dict()
    hist, target = jt["hist_item"], jt["item_id"].values().clone()
    hit = torch.rand(n, generator=g) < 0.5
    pos = hist.offsets()[:-1] + (torch.rand(n, generator=g) * lengths).long()
    target[hit] = hist.values()[pos[hit]]
    y = (hist.to_padded_dense(desired_length=T, padding_value=-1) == target.unsqueeze(1)).any(1).float()
    values = torch.cat([target, jt["item_cat"].values(), hist.values(), jt["hist_cat"].values()])
    seq = KeyedJaggedTensor.from_lengths_sync(seq.keys(), values, seq.lengths())
    return (dense, sparse, seq), torch.stack([y, y], dim=1)


def _accuracy_after(steps: int, target_attention: bool) -> float:
    """Held-out accuracy of a 1-layer InterFormer (dot interaction) after ``steps`` Adam
    steps (lr 3e-3, batch 64) on :func:`_target_in_history` rows."""
    torch.manual_seed(0)
    cfg = _cfg("dot")
    cfg.interformer.num_layers = 1
    cfg.interformer.target_attention = target_attention
    model = InterFormer(_schema(pooled=False), cfg)
    g = torch.Generator().manual_seed(1)
    val_inputs, val_y = _target_in_history(512, g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        inputs, y = _target_in_history(64, g)
        loss = F.binary_cross_entropy_with_logits(model(*inputs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((model.eval()(*val_inputs) > 0).float() == val_y).float().mean().item()


def test_learns_target_in_history():
    """The paper's model (no target attention) learns it too, given the steps."""
    assert _accuracy_after(350, target_attention=False) > 0.85  # chance / majority class: ~0.56


def test_match_tokens_sum_target_times_history_per_shared_table():
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.interformer.match_tokens = True
    model = InterFormer(_schema(), cfg)
    plain = InterFormer(_schema(), _cfg())
    # pairs: (item_id, hist_item), (item_cat, hist_cat); 2 dense + 2 pooled + 2 target + 2 match
    assert model.match_pairs == [(0, 0), (1, 1)]
    assert model.num_tokens == plain.num_tokens + 2 == 9  # + 1 target-attention token, last
    lengths = torch.tensor([0, 1, 3, T])
    dense, sparse, sequence = _batch(lengths)
    x, steps, _ = model.embed(dense, sparse, sequence)
    targets = x[:, 4:6]
    jts = sequence.to_dict()
    emb = {"item": model.ec.embeddings["item"].weight, "cat": model.ec.embeddings["cat"].weight}
    for b, L in enumerate(lengths.tolist()):
        hist_item = jts["hist_item"].to_dense()[b]
        hist_cat = jts["hist_cat"].to_dense()[b]
        torch.testing.assert_close(x[b, 6], (targets[b, 0] * emb["item"][hist_item]).sum(0) if L else torch.zeros(D))
        torch.testing.assert_close(x[b, 7], (targets[b, 1] * emb["cat"][hist_cat]).sum(0) if L else torch.zeros(D))
    out = model(dense, sparse, sequence)
    assert out.shape == (4, 2) and torch.isfinite(out).all()


def test_similarity_tokens_average_steps_by_signed_cosine():
    # by hand: target [1, 0]; history items [1, 0], [1, 1], [-1, 0] have cosines 1, 1/√2, -1
    sim = SimilarityTokens([(0, 0)], num_sequences=2, dim=2)
    with torch.no_grad():  # V(step) = the second sequence's embedding (the "rating")
        sim.values[0].weight.copy_(torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]]))
        sim.values[0].bias.zero_()
    items = torch.tensor([[1.0, 0], [1, 1], [-1, 0]])
    ratings = torch.tensor([[2.0, 0], [0, 3], [5, 1]])
    steps = torch.cat([items, ratings], dim=1).unsqueeze(0)  # [1, 3, 4]
    targets = torch.tensor([[[1.0, 0]]])
    cos = torch.tensor([1.0, 2**-0.5, -1.0])
    want = (cos / (cos.abs().sum() + 1e-3)) @ ratings
    torch.testing.assert_close(sim(targets, steps), want.view(1, 1, 2))
    # padded steps (zeros) get weight 0: the token does not change
    padded = torch.cat([steps, torch.zeros(1, 2, 4)], dim=1)
    torch.testing.assert_close(sim(targets, padded), want.view(1, 1, 2))


def test_similarity_tokens_join_x_per_shared_table():
    torch.manual_seed(0)
    cfg = _cfg()
    cfg.interformer.similarity_tokens = True
    model = InterFormer(_schema(), cfg)
    # (item_id, hist_item), (item_cat, hist_cat): 2 dense + 2 pooled + 2 target + 2 similarity
    assert model.similarity.pairs == [(0, 0), (1, 1)]
    assert model.num_tokens == InterFormer(_schema(), _cfg()).num_tokens + 2 == 9
    lengths = torch.tensor([0, 1, 3, T])
    dense, sparse, sequence = _batch(lengths)
    x, steps, _ = model.embed(dense, sparse, sequence)
    torch.testing.assert_close(x[:, 6:8], model.similarity(x[:, 4:6], steps))
    assert torch.equal(x[0, 6:8], torch.zeros(2, D))  # no history: no similarity
    out = model(dense, sparse, sequence)
    out.sum().backward()
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    assert model.similarity.values[0].weight.grad.abs().sum() > 0


def test_target_attention_token_is_dins_interest_of_the_target_step():
    """The token is DIN's attention pooling of the raw history steps ([hist_item ;
    hist_cat]) queried by the target step ([item_id ; item_cat]), mapped to d; padded
    steps and batch neighbours never change it; an empty history gives the map's bias."""
    torch.manual_seed(0)
    model = InterFormer(_schema(), _cfg())
    ta = model.target_attention
    assert ta is not None and ta.slots == [0, 1] and isinstance(ta.pooling, DINAttentionPooling)
    lengths = torch.tensor([0, 1, 3, T])
    dense, sparse, sequence = _batch(lengths)
    x, steps, _ = model.embed(dense, sparse, sequence)
    jts = sequence.to_dict()
    emb = {"item": model.ec.embeddings["item"].weight, "cat": model.ec.embeddings["cat"].weight}
    for b, L in enumerate(lengths.tolist()):
        target = torch.cat([emb["item"][jts["item_id"].values()[b]], emb["cat"][jts["item_cat"].values()[b]]])
        hist = torch.cat([emb["item"][jts["hist_item"].to_dense()[b]], emb["cat"][jts["hist_cat"].to_dense()[b]]], 1)
        if not L:
            torch.testing.assert_close(x[b, -1], ta.out.bias)
            continue
        weights = ta.pooling.activation_unit(target.view(1, -1), hist.view(1, L, -1), torch.ones(1, L, dtype=torch.bool))
        torch.testing.assert_close(x[b, -1], ta.out(weights @ hist.view(L, -1)).view(-1))
    # the jagged training path gives the same token (padded to the batch's T, not max_len)
    x_jagged, *_ = model.embed_jagged(dense, sparse, sequence)
    torch.testing.assert_close(x_jagged, x)
    # off: the paper's model, one token fewer
    cfg = _cfg()
    cfg.interformer.target_attention = False
    paper = InterFormer(_schema(), cfg)
    assert paper.target_attention is None and paper.num_tokens == model.num_tokens - 1


def test_target_attention_learns_target_in_history_where_the_papers_model_has_not_yet():
    """The planted task of benchmarks/sample_efficiency.py at T = 8: after 250 Adam steps
    the default (target-aware) InterFormer separates the rows, the paper's model (no
    target attention) not yet. Measured (seed 0): accuracy 0.979 vs 0.774;
    the paper's model gets there ~50 steps later at this T, hundreds later at T = 50
    (docs/experiments/target_attention.md)."""
    with_attention, paper = _accuracy_after(250, True), _accuracy_after(250, False)
    print("target attention", with_attention, "paper", paper)
    assert with_attention > 0.9 and paper < 0.85, (with_attention, paper)
