"""Co-rating item embeddings: initial values for an item table (``TableConfig.init``)
whose dot products are item-item collaborative-filtering similarities.

The signed user × item matrix ``R`` of a training split (``+1`` for a positive label,
``-1`` for a negative one, 0 where the user did not rate the item) has item columns
whose cosines are the classic item-CF similarities. With ``Rn`` its column-normalised
form, ``Rn = U S Vᵀ`` and ``E = V[:, :d] S[:d]``, ``E Eᵀ`` is the best rank-``d``
approximation of that cosine matrix; rows are then scaled to unit norm (the norm the
random init has in expectation, ``modules.embeddings.init_range``), so a dot product is
a cosine of the approximated similarities. On MovieLens-100K the rank-16 similarities
score item-CF on the test split at AUC 0.7395 against 0.7420 for the exact ones (README,
"Why InterFormer did not lead on MovieLens").

The SVD is randomised (``torch.svd_lowrank`` on a sparse matrix, a fixed seed), so it
scales to tables far larger than a dense SVD would.
"""

from __future__ import annotations

import numpy as np
import torch


def corating_embeddings(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, num_users: int, num_items: int, dim: int, seed: int = 0
) -> np.ndarray:
    """Co-rating item embeddings from one training split.

    Args:
        users, items: ``[N]`` int ids in ``[0, num_users)`` / ``[0, num_items)``; a
            repeated (user, item) pair keeps its last label.
        labels: ``[N]``, positive where ``> 0``.
        dim: ``d``, at most ``min(num_users, num_items)``.
        seed: seed of the randomised SVD.

    Returns:
        ``[num_items, dim]`` float32, unit-norm rows (zero rows for items never rated).
    """
    if not 0 < dim <= min(num_users, num_items):
        raise ValueError(f"corating_embeddings: dim {dim} must be in [1, {min(num_users, num_items)}]")
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    # keep the last label of a repeated pair, then one entry per pair
    key = users * num_items + items
    _, last = np.unique(key[::-1], return_index=True)
    keep = len(key) - 1 - last
    u, i = users[keep], items[keep]
    sign = np.where(np.asarray(labels)[keep] > 0, 1.0, -1.0)
    counts = np.bincount(i, minlength=num_items)  # ±1 entries: a column's squared norm is its count
    values = sign / np.sqrt(counts[i])
    r = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([u, i])), torch.from_numpy(values), (num_users, num_items), dtype=torch.float64,
        check_invariants=True,
    ).coalesce()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(r, q=min(dim + 10, num_users, num_items), niter=8)
    e = (v[:, :dim] * s[:dim]).numpy()
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    return np.where(norm > 1e-9, e / np.maximum(norm, 1e-9), 0.0).astype(np.float32)
