"""benchmarks/movielens_signals.py: the rating-signed item-CF feature on a hand-made set."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from movielens_signals import FEATURES, features, item_similarity  # noqa: E402

# users 1, 2 like items 10 and 11; user 3 likes 10 and dislikes 12
TRAIN = {"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 11, 10, 11, 10, 12], "label": [1, 1, 1, 1, 1, 0]}


def test_item_similarity_is_the_cosine_of_signed_columns() -> None:
    sim = item_similarity(TRAIN)
    assert sim[10, 11] == pytest.approx(2 / np.sqrt(6))  # columns (1, 1, 1) and (1, 1, 0)
    assert sim[10, 12] == pytest.approx(-1 / np.sqrt(3))  # (1, 1, 1) and (0, 0, -1)
    assert sim[11, 12] == 0 and sim[10, 10] == 0 and sim[5, 7] == 0


def test_item_cf_signs_similar_history_items_by_their_stars() -> None:
    rows = {
        "label": [1, 0, 0, 1],
        "item_id": [11, 11, 12, 11],
        "item_genre": [1, 1, 1, 1],
        "hist_item_ids": [[10, 12], [10], [10], []],
        "hist_ratings": [[5, 1], [2], [5], []],
        "hist_genre_ids": [[1, 2], [1], [1], []],
    }
    x = features(rows, TRAIN, item_similarity(TRAIN))
    cf = x[:, FEATURES.index("item_cf")]
    # liked a similar item (12 has similarity 0 to 11 and does not count) / disliked it
    assert cf[0] == pytest.approx(1, abs=2e-3) and cf[1] == pytest.approx(-1, abs=2e-3)
    # liked an item that people who disliked the target liked; no history at all
    assert cf[2] == pytest.approx(-1, abs=2e-3) and cf[3] == 0
    rate = 5 / 6
    assert x[0, FEATURES.index("item_prior")] == pytest.approx((2 + 10 * rate) / (2 + 10))
    assert x[0, FEATURES.index("user_pos")] == pytest.approx((1 + 2 * rate) / (2 + 2))
