"""INFNet's proxy tokens: the gating unit equals its formula, proxy attention costs
linear FLOPs in the number of tokens, padded steps never change an output, the
heterogeneous flow carries one type's tokens into another type's proxies; the standalone
model builds from its configs and exports; InterFormer runs it as an interaction variant.
Shape, empty-history, no-dense, small-batch fitting, learning a target-in-history signal
and 1-rank DMP training are in tests/test_baselines.py (parametrized over the baselines)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from export_helpers import assert_kjt_program_matches_eager
from interformer_rec.config import INFNetConfig, ModelConfig, load_config
from interformer_rec.models import build_model
from interformer_rec.models.infnet import INFNet
from interformer_rec.modules.infnet import INFNetEncoder, INFNetInteraction, ProxyGatingUnit

from test_baselines import make_cfg, make_inputs, make_schema

ROOT = Path(__file__).resolve().parents[1]


def test_gating_unit_equals_its_formula() -> None:
    torch.manual_seed(0)
    pgu = ProxyGatingUnit(dim=8, num_proxies=3)
    x, proxies = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    xp = torch.cat([x, proxies.flatten(1).unsqueeze(1).expand(-1, 5, -1)], dim=-1)  # [x; p] per token
    W_g = torch.cat([pgu.gate_token.weight, pgu.gate_proxy.weight], dim=1)  # [d, d + M·d]
    W_h = torch.cat([pgu.hidden_token.weight, pgu.hidden_proxy.weight], dim=1)
    g = torch.sigmoid(xp @ W_g.T + pgu.gate_token.bias)
    expected = g * F.silu(xp @ W_h.T + pgu.hidden_token.bias) + (1 - g) * x
    torch.testing.assert_close(pgu(x, proxies), expected)


def _flops(encoder: INFNetEncoder, num_steps: int) -> int:
    n, tasks, d = encoder.type_sizes[0], encoder.type_sizes[2], encoder.proxies.size(-1)
    tokens = [torch.randn(2, n, d), torch.randn(2, num_steps, d), torch.randn(2, tasks, d)]
    # the math backend runs attention as matmuls, which the counter sees (the CPU's fused
    # kernel it does not count)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        encoder(tokens, [None, None, None])
    return counter.get_total_flops()


def test_proxy_attention_flops_grow_linearly_in_the_number_of_tokens() -> None:
    steps = [64, 128, 256, 512]
    flops = [_flops(INFNetEncoder([6, T, 1], 16, num_proxies=4, num_blocks=2, num_heads=2, ffn_hidden=32), T) for T in steps]
    increments = [b - a for a, b in zip(flops, flops[1:])]  # T doubles each time
    assert increments[0] > 0
    # linear: each doubling of T adds twice the previous increment (exactly: every term is
    # a constant or proportional to the number of tokens)
    assert increments[1] == 2 * increments[0] and increments[2] == 2 * increments[1], flops
    assert flops[-1] / flops[0] < 512 / 64  # against (512/64)² = 64 for full attention


@pytest.mark.parametrize("training", [True, False])
def test_padded_steps_never_change_an_output(training: bool) -> None:
    torch.manual_seed(0)
    encoder = INFNetEncoder([3, 6, 1], 8, num_proxies=2, num_blocks=2, num_heads=2, ffn_hidden=16).train(training)
    x, s, k = torch.randn(4, 3, 8), torch.randn(4, 6, 8), torch.randn(4, 1, 8)
    valid = torch.arange(6) < torch.tensor([0, 2, 6, 4]).unsqueeze(1)
    noisy = torch.where(valid.unsqueeze(-1), s, 100 * torch.randn_like(s))
    (x1, s1, k1), p1 = encoder([x, s, k], [None, valid, None])
    (x2, s2, k2), p2 = encoder([x, noisy, k], [None, valid, None])
    for a, b in ((x1, x2), (s1, s2), (k1, k2), (p1, p2)):
        torch.testing.assert_close(a, b)
    assert (s1[~valid] == 0).all()
    # a real step does change the outputs
    changed = s.clone()
    changed[2, 0] += 1.0
    (x3, _, _), p3 = encoder([x, changed, k], [None, valid, None])
    assert not torch.allclose(p3[2], p1[2]) and not torch.allclose(x3[2], x1[2])
    torch.testing.assert_close(p3[:2], p1[:2])  # rows are independent


def test_heterogeneous_flow_reaches_every_type_and_homogeneous_stays_in_type() -> None:
    """After the first heterogeneous step, the non-sequence proxies depend on the
    sequence tokens; one block's refined non-sequence tokens depend on the sequence only
    through their own type's proxies."""
    torch.manual_seed(0)
    encoder = INFNetEncoder([3, 5, 1], 8, num_proxies=2, num_blocks=1, num_heads=1, ffn_hidden=16)
    x, s, k = torch.randn(1, 3, 8), torch.randn(1, 5, 8, requires_grad=True), torch.randn(1, 1, 8)
    (x_out, _, _), proxies = encoder([x, s, k], [None, None, None])
    w = torch.randn(1, 2, 8)  # a weighted sum: a LayerNorm output's plain sum over d is constant
    (grad,) = torch.autograd.grad((proxies[:, :2] * w).sum(), s, retain_graph=True)  # the non-sequence type's proxies
    assert grad.abs().sum() > 0
    (grad,) = torch.autograd.grad((x_out * torch.randn(1, 3, 8)).sum(), s)
    assert grad.abs().sum() > 0


def _cfg() -> ModelConfig:
    return ModelConfig(name="infnet", embedding_dim=16, infnet=INFNetConfig(num_proxies=2, num_blocks=2, num_heads=2, ffn_hidden=32, over_arch=[32]))


@pytest.mark.parametrize("dataset", ["movielens", "synthetic", "amazon_grocery"])
def test_infnet_builds_from_its_config(dataset: str) -> None:
    cfg = load_config(ROOT / "configs" / f"{dataset}_infnet.yaml")
    base = load_config(ROOT / "configs" / f"{dataset}.yaml")
    assert cfg.model.name == "infnet" and cfg.train.out_dir == f"runs/{dataset}_infnet"
    assert cfg.data == base.data and cfg.model.infnet == INFNetConfig()
    model = build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("meta"))
    assert isinstance(model, INFNet) and all(p.is_meta for p in model.ec.parameters())


def test_exported_program_matches_eager() -> None:
    schema = make_schema()
    torch.manual_seed(0)
    assert_kjt_program_matches_eager(build_model(schema, _cfg()), schema)


def test_interformer_runs_infnet_as_its_interaction() -> None:
    schema = make_schema()
    cfg = make_cfg("interformer")
    cfg.interformer.interaction = "infnet"
    cfg.interformer.infnet_proxies = 3
    torch.manual_seed(0)
    model = build_model(schema, cfg)
    interaction = model.arch.layers[0].interaction_arch.interaction
    assert isinstance(interaction, INFNetInteraction)
    ic = cfg.interformer
    n, summaries = model.num_tokens, ic.num_cls + ic.num_pma + ic.num_recent
    assert interaction.type_sizes == [n, summaries]  # X and S_sum are the two types
    assert interaction.out_dim == (n + summaries + 2 * 3) * 16
    logits = model(*make_inputs(schema, 5))
    assert logits.shape == (5, 1) and torch.isfinite(logits).all()
