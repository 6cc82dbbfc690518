import numpy as np
import pytest

from interformer_rec.data.corating import corating_embeddings


def _cosines(users, items, labels, num_users, num_items):
    r = np.zeros((num_users, num_items))
    r[users, items] = np.where(labels > 0, 1.0, -1.0)
    n = np.linalg.norm(r, axis=0)
    return (r.T @ r) / np.outer(n, n)


def test_full_rank_dot_products_are_item_cf_cosines():
    rng = np.random.default_rng(0)
    users, items, labels = rng.integers(0, 30, 200), rng.integers(0, 6, 200), rng.integers(0, 2, 200)
    e = corating_embeddings(users, items, labels, 30, 6, dim=6)
    assert e.shape == (6, 6) and e.dtype == np.float32
    np.testing.assert_allclose(e @ e.T, _cosines(users, items, labels, 30, 6), atol=1e-5)


def test_low_rank_keeps_the_strongest_similarities():
    # two blocks of items: users like all of one block and dislike all of the other
    users = np.repeat(np.arange(40), 8)
    items = np.tile(np.arange(8), 40)
    labels = ((items < 4) == (users % 2 == 0)).astype(int)
    e = corating_embeddings(users, items, labels, 40, 10, dim=2)
    sim = e @ e.T
    assert sim[0, 1] > 0.99 and sim[5, 6] > 0.99  # same block
    assert sim[0, 5] < -0.99  # opposite blocks
    assert np.array_equal(e[8:], np.zeros((2, 2)))  # never rated: zero rows
    np.testing.assert_allclose(np.linalg.norm(e[:8], axis=1), 1.0, rtol=1e-5)


def test_a_repeated_pair_keeps_its_last_label():
    users, items = np.array([0, 1, 0, 0]), np.array([0, 0, 1, 1])
    first = corating_embeddings(users[:3], items[:3], np.array([1, 1, 1]), 2, 2, dim=2)
    last = corating_embeddings(users, items, np.array([1, 1, 1, 0]), 2, 2, dim=2)
    assert (first @ first.T)[0, 1] > 0 > (last @ last.T)[0, 1]


def test_rejects_a_dim_out_of_range():
    with pytest.raises(ValueError, match="dim 5"):
        corating_embeddings(np.array([0]), np.array([0]), np.array([1]), 3, 4, dim=5)
