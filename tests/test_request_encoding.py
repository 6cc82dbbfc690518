"""A ranking request's user history is cut to ``max_len`` before the candidates share it
(issue 33, item 1): time and memory follow ``max_len``, not what the client sends."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from interformer_rec.config import SyntheticConfig
from interformer_rec.data.synthetic import synthetic_schema
from interformer_rec.serving.features import FeatureSpec, InputError, encode_request

SPEC = FeatureSpec(synthetic_schema(SyntheticConfig(num_users=50, num_items=40, num_categories=5, num_contexts=3,
                                                     num_segments=3, num_dense=2, max_len=6)))


def _request(history: int, candidates: int, cat_history: int | None = None) -> dict:
    rng = np.random.default_rng(0)
    return {
        "user": {
            "dense_0": 0.5, "dense_1": -1.0, "user_id": 3, "user_segment": 1, "user_interests": [1, 2], "context": 2,
            "hist_item_ids": rng.integers(0, 40, history).tolist(),
            "hist_cat_ids": rng.integers(0, 5, history if cat_history is None else cat_history).tolist(),
        },
        "candidates": [{"item_id": int(i), "item_category": int(i) % 5} for i in rng.integers(0, 40, candidates)],
    }


def test_a_huge_user_history_is_cut_before_the_candidates_share_it() -> None:
    body = _request(300_000, 1024)
    tracemalloc.start()
    start = time.perf_counter()
    encoded = encode_request(SPEC, body)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # before: 1,024 copies of 2 x 300,000 ids (4.9 GB) before the cut
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB"
    assert seconds < 10, seconds
    cut = _request(300_000, 1024)
    for k in ("hist_item_ids", "hist_cat_ids"):
        cut["user"][k] = cut["user"][k][-6:]
    for a, b in zip(encoded.model_inputs(), encode_request(SPEC, cut).model_inputs()):
        np.testing.assert_array_equal(a, b)


def test_parallel_lengths_are_checked_before_the_cut() -> None:
    with pytest.raises(InputError, match="unequal lengths"):
        encode_request(SPEC, _request(1000, 3, cat_history=999))
