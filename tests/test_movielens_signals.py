"""benchmarks/movielens_signals.py: the rating-signed item-CF feature on a hand-made set."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from movielens_signals import FEATURES, centred, features, item_similarity, rate_by_position, within_groups  # noqa: E402

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


def test_within_groups_sees_only_what_orders_a_groups_own_rows() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10)
    x = rng.normal(size=(200, 2))
    offsets = rng.normal(scale=5.0, size=20)[groups]  # one level per group: not within-group variation
    fit = within_groups(offsets + 1.5 * x[:, 0] - 0.5 * x[:, 1], x, groups)
    assert fit["coef"] == pytest.approx([1.5, -0.5]) and fit["r2"] == pytest.approx(1.0)
    # a term constant within each group explains nothing of a group's own rows
    noise = rng.normal(size=200)
    fit = within_groups(noise, offsets[:, None], groups)
    assert fit["r2"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(centred(x, groups).reshape(20, 10, 2).mean(1), 0.0, atol=1e-12)


def test_rate_by_position_follows_each_users_time_order() -> None:
    # user 7: 4 rows, liked first (times 1, 2), disliked last; user 9: 2 rows, disliked then liked;
    # rows interleaved and out of time order in the file
    groups = np.array([7, 9, 7, 7, 9, 7])
    ts = np.array([4, 50, 1, 3, 40, 2])
    labels = np.array([0, 1, 1, 0, 0, 1])
    halves = rate_by_position(labels, groups, ts, bins=2)
    assert [h["rows"] for h in halves] == [3, 3]
    assert halves[0]["rate"] == pytest.approx(2 / 3) and halves[1]["rate"] == pytest.approx(1 / 3)
