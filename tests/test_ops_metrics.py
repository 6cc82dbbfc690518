"""interformer_rec.ops.metrics: the one AUC (ties averaged) against sklearn and TorchRec,
and the sort-and-segment gAUC against TorchRec's padded ``compute_gauc_3d``."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.gauc import compute_gauc_3d, to_3d

from interformer_rec.ops.metrics import auc, gauc, logloss


def reference_gauc(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The gAUC train/metrics.py computed before the sort-and-segment rewrite: TorchRec's
    ``compute_gauc_3d`` over a ``[tasks, groups, largest group]`` padding (float32)."""
    order = torch.argsort(groups, stable=True)
    _, counts = torch.unique_consecutive(groups[order], return_counts=True)
    max_len = int(counts.max())

    def pad(x: torch.Tensor) -> torch.Tensor:
        return to_3d(x[order].float(), counts, max_len).permute(2, 0, 1).double()

    states = compute_gauc_3d(pad(predictions), pad(labels), pad(torch.ones_like(labels)))
    return states["auc_sum"] / states["num_samples"]


def _sklearn_gauc(y: np.ndarray, p: np.ndarray, g: np.ndarray) -> float:
    aucs = [
        roc_auc_score(y[g == k], p[g == k])
        for k in np.unique(g)
        if 0 < y[g == k].mean() < 1 and len(np.unique(p[g == k])) > 1
    ]
    return float(np.mean(aucs))


@pytest.mark.parametrize("n,decimals", [(2, 1), (50, 1), (5000, 2), (5000, None)])
def test_auc_matches_sklearn_with_and_without_ties(n: int, decimals) -> None:
    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.3).astype(float)
    y[:2] = [1, 0]
    s = rng.random(n) + 0.4 * y
    if decimals is not None:
        s = np.round(s, decimals)  # many ties, across the labels too
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auc(torch.from_numpy(y), torch.from_numpy(s).float()) == pytest.approx(
        roc_auc_score(y, s.astype(np.float32)), abs=1e-12
    )


def test_auc_matches_torchrec_on_distinct_scores_and_is_nan_for_one_class() -> None:
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(20000, generator=g) < 0.2).double()
    p = torch.sigmoid(y + torch.randn(20000, generator=g, dtype=torch.float64))
    ref = compute_auc(1, [p[None]], [y[None]], [torch.ones_like(y)[None]])
    assert auc(y, p) == pytest.approx(float(ref[0]), abs=1e-12)
    assert math.isnan(auc(torch.ones(3), torch.rand(3))) and math.isnan(auc([], []))
    assert auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: chance


def test_logloss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.4).astype(float)
    p = rng.random(1000)
    assert logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)
    assert logloss([1.0], [0.0]) == pytest.approx(-math.log(1e-7))


def _grouped(n: int, n_groups: int, seed: int):
    """Scores on a float32 grid (the reference rounds to float32) where a score is shared
    by rows of one label only, so tie order cannot matter to TorchRec's count; plus a
    group of identical scores and groups with one label."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, n_groups, (n,), generator=g)
    labels = (torch.rand(n, generator=g) < 0.35).double()
    steps = torch.randint(0, 40, (n,), generator=g).double()
    scores = ((2 * steps + labels) / 100).float().double()  # positives odd, negatives even hundredths
    groups[:30] = n_groups  # one group of identical scores, with both labels
    scores[:30], labels[:30] = 0.5, (torch.arange(30) % 2).double()
    groups[30:40] = n_groups + 1  # one group of positives only
    labels[30:40] = 1
    return scores, labels, groups


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_equals_torchrec_padded_gauc(seed: int) -> None:
    scores, labels, groups = _grouped(4000, 150, seed)
    ref = reference_gauc(scores[:, None], labels[:, None], groups)
    assert gauc(labels, scores, groups) == pytest.approx(float(ref[0]), abs=1e-9)
    # continuous scores: no ties at all
    cont = torch.rand(4000, generator=torch.Generator().manual_seed(seed)).float().double() + 0.3 * labels
    ref = reference_gauc(cont.float().double()[:, None], labels[:, None], groups)
    assert gauc(labels, cont.float().double(), groups) == pytest.approx(float(ref[0]), abs=1e-9)


def test_gauc_averages_ties_across_labels_as_sklearn() -> None:
    rng = np.random.default_rng(3)
    g = rng.integers(0, 60, 3000)
    y = (rng.random(3000) < 0.3).astype(float)
    p = np.round(rng.random(3000) + 0.3 * y, 1)  # ties between positives and negatives
    assert gauc(y, p, g) == pytest.approx(_sklearn_gauc(y, p, g), abs=1e-12)
    assert math.isnan(gauc([1, 1, 0], [0.1, 0.2, 0.3], [0, 0, 1]))  # no group has both labels


@pytest.mark.timeout(120)
def test_gauc_of_one_huge_group_and_many_singletons_runs_in_small_memory() -> None:
    """One group of 10^6 rows and 10^5 groups of 1 row: the padded computation would hold
    [10^5 + 1, 10^6] float64 (800 GB); sort-and-segment needs a few arrays of N rows."""
    code = textwrap.dedent(
        """
        import resource, torch
        from interformer_rec.ops.metrics import auc, gauc
        g = torch.Generator().manual_seed(0)
        n_big, n_single = 10**6, 10**5
        groups = torch.cat([torch.zeros(n_big, dtype=torch.long), torch.arange(1, n_single + 1)])
        labels = (torch.rand(n_big + n_single, generator=g) < 0.3).double()
        scores = torch.rand(n_big + n_single, generator=g, dtype=torch.float64) + 0.2 * labels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        value = gauc(labels, scores, groups)
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert abs(value - auc(labels[:n_big], scores[:n_big])) < 1e-12, value  # singletons never qualify
        print(grown_mb)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    grown_mb = float(out.stdout.strip())
    assert grown_mb < 400, grown_mb  # ~1.1M rows: tens of MB per array
