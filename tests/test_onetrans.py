"""OneTrans (``model.name: onetrans``): the causal mask, the pyramid schedule, padded
steps that change nothing, shared vs token-specific parameters, the configs, and
torch.export parity. Learning a signal that lives only in the history, small-batch
fitting and 1-rank DMP training are in tests/test_baselines.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import List

import pytest
import torch

from export_helpers import assert_kjt_program_matches_eager
from test_baselines import MAX_LEN, make_inputs, make_schema

from interformer_rec.config import ConfigError, ModelConfig, OneTransConfig, load_config
from interformer_rec.models import build_model, num_parameters
from interformer_rec.models.onetrans import (
    OneTrans,
    OneTransLayer,
    TokenLinear,
    onetrans_mask,
    pyramid_schedule,
)
from interformer_rec.ops.sequences import right_align

ROOT = Path(__file__).resolve().parents[1]
D = 16


def make_cfg(num_layers: int = 2, pyramid: bool = True, num_heads: int = 2) -> ModelConfig:
    return ModelConfig(
        name="onetrans",
        embedding_dim=D,
        onetrans=OneTransConfig(
            num_layers=num_layers, num_heads=num_heads, ffn_hidden=32, pyramid=pyramid, over_arch=[32]
        ),
    )


def make_model(num_layers: int = 2, pyramid: bool = True, labels: int = 1, seed: int = 0) -> OneTrans:
    torch.manual_seed(seed)
    model = build_model(make_schema(labels=labels), make_cfg(num_layers, pyramid))
    assert isinstance(model, OneTrans)
    return model


# --------------------------------------------------------------------------- the mask


def test_mask_is_causal_hides_padded_keys_and_lets_every_query_see_itself() -> None:
    # keys: 3 history steps (row 0: 2 real, right-aligned; row 1: empty) then 2 NS tokens;
    # queries: the last history step and the 2 NS tokens
    key_valid = torch.tensor([[False, True, True, True, True], [False, False, False, True, True]])
    expected = torch.tensor(
        [
            [  # row 0
                [0, 1, 1, 0, 0],  # step 2 (real): steps 1, 2
                [0, 1, 1, 1, 0],  # NS 0: the whole history and itself
                [0, 1, 1, 1, 1],  # NS 1: ... and NS 0
            ],
            [  # row 1: an empty history
                [0, 0, 1, 0, 0],  # step 2 (padded): only itself
                [0, 0, 0, 1, 0],
                [0, 0, 0, 1, 1],
            ],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(onetrans_mask(key_valid, 3), expected)
    full = onetrans_mask(key_valid, 5)  # every token a query: lower-triangular on valid keys
    assert torch.equal(full[:, 2:], expected)
    assert torch.equal(full[1, 0], torch.tensor([True, False, False, False, False]))  # a padded step sees itself
    assert full.any(-1).all()


# --------------------------------------------------------------------------- the pyramid


@pytest.mark.parametrize("T", [1, 2, 7, 8, 50])
@pytest.mark.parametrize("L", [1, 2, 3, 4, 6])
def test_pyramid_schedule_goes_from_all_steps_to_none(T: int, L: int) -> None:
    q = pyramid_schedule(T, L)
    assert len(q) == L and q[-1] == 0
    assert all(a >= b for a, b in zip(q, q[1:]))
    if L > 1:
        assert q[0] == T and all(x >= 1 for x in q[:-1])  # only the last layer drops the history


def test_pyramid_schedule_examples() -> None:
    assert pyramid_schedule(8, 1) == [0]
    assert pyramid_schedule(8, 2) == [8, 0]
    assert pyramid_schedule(8, 3) == [8, 4, 0]
    assert pyramid_schedule(8, 4) == [8, 6, 3, 0]


@pytest.mark.parametrize("pyramid", [True, False])
def test_layers_shrink_the_token_count(pyramid: bool) -> None:
    model = make_model(num_layers=3, pyramid=pyramid)
    seen: List[tuple] = []
    hooks = [
        layer.register_forward_hook(lambda m, inp, out: seen.append((inp[0].size(1), out[0].size(1), out[1].size(1))))
        for layer in model.stack.layers
    ]
    B = 4
    model(*make_inputs(make_schema(), B))
    for h in hooks:
        h.remove()
    n = model.num_tokens
    if pyramid:
        assert seen == [(MAX_LEN, MAX_LEN, n), (MAX_LEN, MAX_LEN // 2, n), (MAX_LEN // 2, 0, n)]
    else:
        assert seen == [(MAX_LEN, MAX_LEN, n)] * 3


# --------------------------------------------------------------------------- padding


@pytest.mark.parametrize("pyramid", [True, False])
def test_padded_steps_never_change_an_output(pyramid: bool) -> None:
    """Garbage at the padded history slots (the front, once right-aligned) changes
    neither the last layer's NS tokens nor the logits."""
    model = make_model(pyramid=pyramid).eval()
    g = torch.Generator().manual_seed(0)
    B, T, n = 6, MAX_LEN, model.num_tokens
    lengths = torch.tensor([0, 1, 3, T - 1, T, 5])
    valid = torch.arange(T) >= (T - lengths).unsqueeze(1)
    s = torch.randn(B, T, D, generator=g).masked_fill(~valid.unsqueeze(-1), 0.0)
    x = torch.randn(B, n, D, generator=g)
    garbage = torch.where(valid.unsqueeze(-1), s, 100 * torch.randn(B, T, D, generator=g))
    with torch.no_grad():
        clean, dirty = model.stack(s, x, valid), model.stack(garbage, x, valid)
        assert not torch.equal(s, garbage)
        torch.testing.assert_close(dirty, clean, rtol=0, atol=1e-6)
        logits = model.over_arch(clean.flatten(1))
        torch.testing.assert_close(model.over_arch(dirty.flatten(1)), logits, rtol=0, atol=1e-6)
        # and the history does matter to the real rows
        other = torch.where(valid.unsqueeze(-1), torch.randn(B, T, D, generator=g), s)
        assert (model.stack(other, x, valid) - clean)[lengths > 0].abs().amax() > 1e-3


def test_the_model_right_aligns_the_history() -> None:
    """The model's forward equals the stack fed the right-aligned tokens."""
    model = make_model().eval()
    schema = make_schema()
    inputs = make_inputs(schema, 6, lengths=torch.tensor([0, 1, 3, MAX_LEN - 1, MAX_LEN, 5]))
    with torch.no_grad():
        x, s, valid = model.tokens(*inputs)
        lengths = valid.sum(1)
        right = right_align(s, lengths)
        assert torch.equal(right[torch.arange(6), -1][lengths > 0], s[torch.arange(6), lengths - 1][lengths > 0])
        valid_right = torch.arange(MAX_LEN) >= (MAX_LEN - lengths).unsqueeze(1)
        expected = model.over_arch(model.stack(right, x, valid_right).flatten(1))
        torch.testing.assert_close(model(*inputs), expected)


# --------------------------------------------------------------------------- parameters


def test_token_linear_is_one_linear_map_per_token() -> None:
    torch.manual_seed(0)
    lin = TokenLinear(3, 4, 5)
    x = torch.randn(2, 3, 4)
    expected = torch.stack([x[:, i] @ lin.weight[i] + lin.bias[i] for i in range(3)], dim=1)
    torch.testing.assert_close(lin(x), expected)
    same = lin(torch.ones(1, 3, 4))
    assert (same[0, 0] - same[0, 1]).abs().amax() > 1e-3  # same input, different parameters


def test_ns_tokens_have_their_own_parameters_and_sequence_tokens_share_theirs() -> None:
    """In one layer: perturbing NS token j's own parameters changes NS token j (and the
    later NS tokens, which read it) but no earlier NS token and no sequence token; a
    history of identical steps gives identical sequence outputs (one shared parameter
    set, and each step sees only copies of itself)."""
    torch.manual_seed(0)
    n, T, j = 4, 6, 2
    layer = OneTransLayer(D, 2, 32, n, T, T).eval()
    s = torch.randn(3, T, D)
    x = torch.randn(3, n, D)
    valid = torch.ones(3, T, dtype=torch.bool)
    with torch.no_grad():
        s0, x0 = layer(s, x, valid)
        moved = copy.deepcopy(layer)
        for module in (moved.ns_q, moved.ns_kv, moved.ns_out, moved.ns_ffn.up, moved.ns_ffn.down):
            module.weight[j] += 0.5 * torch.randn_like(module.weight[j])
        s1, x1 = moved(s, x, valid)
        assert torch.equal(s1, s0)
        assert torch.equal(x1[:, :j], x0[:, :j])
        assert (x1[:, j:] - x0[:, j:]).abs().amax(dim=(0, 2)).min() > 1e-3

        same = torch.randn(1, 1, D).expand(3, T, D)
        s2, _ = layer(same, x, valid)
        torch.testing.assert_close(s2, s2[:, :1].expand_as(s2), rtol=0, atol=1e-5)


def test_sequence_parameters_do_not_grow_with_the_history_ns_parameters_grow_with_n() -> None:
    """Mixed parameterisation: one sequence parameter set whatever ``T``; one set per NS
    token."""
    a = OneTransLayer(D, 2, 32, num_ns=3, num_inputs=4, num_queries=4)
    b = OneTransLayer(D, 2, 32, num_ns=3, num_inputs=40, num_queries=20)
    c = OneTransLayer(D, 2, 32, num_ns=6, num_inputs=4, num_queries=4)

    def count(layer: OneTransLayer, prefix: str) -> int:
        return sum(p.numel() for name, p in layer.named_parameters() if name.startswith(prefix))

    assert count(a, "seq_") == count(b, "seq_") == count(c, "seq_")
    assert count(c, "ns_") == 2 * count(a, "ns_") and count(a, "ns_") == 3 * count(a, "seq_")


# --------------------------------------------------------------------------- the model


def test_forward_shape_meta_build_and_empty_histories() -> None:
    schema = make_schema(labels=2)
    model = make_model(labels=2)
    lengths = torch.tensor([0, 0, MAX_LEN, 1, 4])
    logits = model(*make_inputs(schema, 5, lengths=lengths))
    assert logits.shape == (5, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.stack.parameters())
    meta = build_model(schema, make_cfg(), embedding_device=torch.device("meta"))
    assert num_parameters(meta) == num_parameters(model)
    assert all(p.is_meta for p in meta.ec.parameters()) and not any(p.is_meta for p in meta.stack.parameters())


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        build_model(make_schema(), make_cfg(num_heads=3))
    with pytest.raises(ConfigError, match="num_heads"):
        OneTrans(make_schema(), make_cfg(num_heads=3))


@pytest.mark.parametrize("dataset", ["movielens", "synthetic", "amazon_grocery"])
def test_onetrans_builds_from_its_config(dataset: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{dataset}_onetrans.yaml")
    base = load_config(ROOT / "configs" / f"{dataset}.yaml")
    assert cfg.model.name == "onetrans" and cfg.train.out_dir == f"runs/{dataset}_onetrans"
    assert cfg.data == base.data and cfg.model.onetrans == OneTransConfig()
    model = build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("meta"))
    assert isinstance(model, OneTrans)
    assert all(p.is_meta for p in model.ec.parameters())
    T, L = cfg.data.schema.max_len, OneTransConfig().num_layers
    assert model.stack.schedule == pyramid_schedule(T, L) and model.stack.schedule[0] == T


def test_export_matches_eager() -> None:
    schema = make_schema(labels=2)
    assert_kjt_program_matches_eager(make_model(labels=2), schema)
