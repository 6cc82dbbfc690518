"""benchmarks/significance.py: per-group AUCs by hand, and the bootstrap intervals."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from significance import compare, group_aucs  # noqa: E402


def test_group_aucs_by_hand_and_one_label_groups_left_out():
    labels = np.array([1, 0, 0, 1, 0, 1, 1], dtype=float)
    logits = np.array([0.9, 0.1, 0.5, 0.2, 0.3, 0.0, 0.4])
    groups = np.array([7, 7, 7, 8, 8, 9, 9])
    # group 7: the positive outranks both negatives (1.0); group 8: it is below its one
    # negative (0.0); group 9 has only positives
    assert group_aucs(logits, labels, groups) == {7: 1.0, 8: 0.0}


def _data(n_groups=60, rows=20, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), rows)
    truth = rng.normal(size=groups.size)
    labels = (truth + rng.normal(size=groups.size) > 0).astype(float)
    return truth, labels, groups, rng


def test_a_clearly_better_model_has_intervals_above_zero():
    truth, labels, groups, rng = _data()
    good, noisy = truth, truth + 3 * rng.normal(size=truth.size)
    r = compare(good, noisy, labels, groups, draws=200)
    assert r["auc"]["gap"] > 0.05 and r["auc"]["rows_95"][0] > 0 and r["auc"]["groups_95"][0] > 0
    assert r["gauc"]["gap"] > 0.05 and r["gauc"]["groups_95"][0] > 0
    assert r["gauc"]["groups"] == 60 and r["gauc"]["a_ahead"] > 40
    assert r["gauc"]["by_group_rows"].keys() == {"6-20 rows"}  # 20 rows each
    assert r["gauc"]["by_group_rows"]["6-20 rows"]["groups"] == 60


def test_the_same_model_twice_has_a_zero_gap():
    truth, labels, groups, _ = _data()
    r = compare(truth, truth.copy(), labels, groups, draws=50)
    assert r["auc"]["gap"] == 0 and r["auc"]["rows_95"] == [0.0, 0.0] and r["auc"]["groups_95"] == [0.0, 0.0]
    assert r["gauc"]["gap"] == 0 and r["gauc"]["groups_95"] == [0.0, 0.0] and r["gauc"]["a_ahead"] == 0
