"""Histories of up to 2,000 steps: InterFormer (local attention beyond its window, global
CLS tokens) and DIN train at max_len 2,000, each batch padded to its own longest
history, and a row scores the same whatever its batch mates' lengths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from interformer_rec.config import ModelConfig, SyntheticConfig
from interformer_rec.data.batch import Batch
from interformer_rec.data.synthetic import synthetic_schema
from interformer_rec.models import build_model
from interformer_rec.train.ranking import RankingTrain

MAX_LEN = 2000
SCHEMA = synthetic_schema(SyntheticConfig(num_users=30, num_items=50, num_categories=5, max_len=MAX_LEN))


def _batch(lengths: list[int], seed: int = 0) -> Batch:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed)
    B, total = len(lengths), sum(lengths)
    lens = torch.tensor(lengths, dtype=torch.int32)
    pooled = SCHEMA.pooled_features
    sparse = KeyedJaggedTensor.from_lengths_sync(
        [f.name for f in pooled],
        torch.cat([torch.randint(0, SCHEMA.table(f.table).num_embeddings, (B,), generator=g) for f in pooled]),
        torch.ones(B * len(pooled), dtype=torch.int32),
    )
    targets, seqs = SCHEMA.target_features, SCHEMA.sequence
    sequence = KeyedJaggedTensor.from_lengths_sync(
        [f.name for f in targets] + [s.name for s in seqs],
        torch.cat([torch.randint(0, SCHEMA.table(f.table).num_embeddings, (B,), generator=g) for f in targets]
                  + [torch.randint(0, SCHEMA.table(s.table).num_embeddings, (total,), generator=g) for s in seqs]),
        torch.cat([torch.ones(B * len(targets), dtype=torch.int32)] + [lens] * len(seqs)),
    )
    return Batch(torch.randn(B, len(SCHEMA.dense), generator=g), sparse, sequence,
                 torch.randint(0, 2, (B, 1), generator=g).float(), torch.zeros(B, dtype=torch.long))


def _rows(batch: Batch, rows: list[int]) -> Batch:
    """The rows ``rows`` of ``batch`` as a batch of their own."""
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

    def take(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        out = {}
        for k, jt in kjt.to_dict().items():
            o, vals = jt.offsets(), jt.values()
            out[k] = JaggedTensor(values=torch.cat([vals[o[r] : o[r + 1]] for r in rows]), lengths=jt.lengths()[rows])
        return KeyedJaggedTensor.from_jt_dict(out)

    return Batch(batch.dense[rows], take(batch.sparse), take(batch.sequence), batch.labels[rows], batch.groups[rows])


@pytest.mark.parametrize("name", ["interformer", "din"])
def test_trains_at_max_len_2000_and_rows_ignore_their_batch_mates(name: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, embedding_dim=8)
    if name == "interformer":
        cfg.interformer = dataclasses.replace(cfg.interformer, attention_window=64, dropout=0.0,
                                              interaction_mlp=[16], masknet_hidden=16, over_arch=[16])
    model = RankingTrain(build_model(SCHEMA, cfg))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _batch([0, 3, 700, MAX_LEN, 64])
    losses = []
    for _ in range(3):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        together = model(batch)[1][1]  # logits
        for rows in ([1], [2, 4], [0, 3]):  # T = 3, 700, 2000 instead of 2000
            torch.testing.assert_close(model(_rows(batch, rows))[1][1], together[rows], atol=2e-5, rtol=0)
