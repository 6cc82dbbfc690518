"""Metrics agree with independent references (2 ranks reporting the union's metrics:
tests/test_distributed_setup.py)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from interformer_rec.train.metrics import compute_metrics


def _data(n: int = 3000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 40, (n,), generator=g)
    labels = (torch.rand(n, generator=g) < 0.3).double().unsqueeze(1)
    logits = labels * 1.2 + torch.randn(n, 1, generator=g) + 0.02 * groups.unsqueeze(1)
    return logits, labels, groups


def test_metrics_match_sklearn():
    logits, labels, groups = _data()
    m = compute_metrics(logits, labels, groups)
    p, y, g = torch.sigmoid(logits).squeeze(1).numpy(), labels.squeeze(1).numpy(), groups.numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    per_group = [roc_auc_score(y[g == k], p[g == k]) for k in np.unique(g) if 0 < y[g == k].mean() < 1]
    assert m["gauc"] == pytest.approx(np.mean(per_group), abs=1e-12)
    base = y.mean()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert m["ne"] == pytest.approx(log_loss(y, p) / entropy, rel=1e-6)
    assert m["rows"] == len(y)


TASKS = ["click", "convert"]


def _two_task_data():
    """test_metrics' data plus a second label column with its own logits."""
    logits, labels, groups = _data()
    g = torch.Generator().manual_seed(5)
    second = (torch.rand(len(labels), 1, generator=g) < 0.1).double()
    logits2 = torch.cat([logits, second * 0.7 + torch.randn(len(labels), 1, generator=g)], 1)
    return logits2, torch.cat([labels, second], 1), groups


def assert_per_task_metrics(m: dict, logits, labels, groups) -> None:
    """Every ``<metric>/<task>`` equals the single-task metrics of that column (checked
    against sklearn above), and the headline keys are the first task's."""
    for t, task in enumerate(TASKS):
        alone = compute_metrics(logits[:, t : t + 1], labels[:, t : t + 1], groups)
        for k in ("auc", "gauc", "logloss", "ne", "pos_rate"):
            assert m[f"{k}/{task}"] == pytest.approx(alone[k], abs=1e-9), (task, k)
            if t == 0:
                assert m[k] == pytest.approx(alone[k], abs=1e-9), k


def test_two_tasks_report_each_task_s_metrics():
    logits, labels, groups = _two_task_data()
    m = compute_metrics(logits, labels, groups, TASKS)
    assert_per_task_metrics(m, logits, labels, groups)
    p, y = torch.sigmoid(logits).numpy(), labels.numpy()
    assert m["auc/convert"] == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]), abs=1e-12)
    assert m["logloss/convert"] == pytest.approx(log_loss(y[:, 1], p[:, 1]), abs=1e-9)
    assert m["auc/convert"] != m["auc/click"] and m["pos_rate/convert"] < 0.2 < m["pos_rate/click"]
    with pytest.raises(ValueError, match="1 task names for 2 label columns"):
        compute_metrics(logits, labels, groups, ["click"])


def test_one_task_has_no_per_task_keys():
    assert not any("/" in k for k in compute_metrics(*_data(), ["click"]))


def test_a_split_with_one_class_has_auc_one_half():
    m = compute_metrics(torch.randn(10, 1), torch.ones(10, 1), torch.zeros(10, dtype=torch.long))
    assert m["auc"] == 0.5 and math.isnan(m["gauc"])


def test_gauc_differs_from_auc_when_groups_shift_scores():
    # a per-group offset inflates global AUC but not within-group ranking
    g = torch.Generator().manual_seed(1)
    groups = torch.arange(20).repeat_interleave(50)
    labels = (torch.rand(1000, generator=g) < (groups.float() / 20)).double().unsqueeze(1)
    logits = groups.double().unsqueeze(1) + torch.randn(1000, 1, generator=g) * 0.01
    m = compute_metrics(logits, labels, groups)
    assert m["auc"] > 0.75
    assert abs(m["gauc"] - 0.5) < 0.1
