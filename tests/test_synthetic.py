"""Synthetic generator: schema = config file, determinism, a sane and honest click model."""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from interformer_rec.config import SyntheticConfig, load_config
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.synthetic import TERMS, generate, make_world, synthetic_schema, table_logit_terms

ROOT = Path(__file__).parents[1]
SMALL = SyntheticConfig(
    num_users=100, num_items=80, rows={"train": 500, "test": 200}, row_group_size=128
)


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    """The world of configs/synthetic.yaml at 40k / 8k / 8k rows (the default trains on
    200k; a split's rows do not depend on the other splits' sizes)."""
    cfg = load_config(ROOT / "configs" / "synthetic.yaml").data.synthetic
    cfg = dataclasses.replace(cfg, rows={"train": 40000, "valid": 8000, "test": 8000})
    out = tmp_path_factory.mktemp("synthetic")
    return cfg, out, generate(cfg, out)


def test_schema_matches_config_file() -> None:
    cfg = load_config(ROOT / "configs" / "synthetic.yaml")
    assert cfg.data.synthetic is not None
    assert cfg.data.schema == synthetic_schema(cfg.data.synthetic)
    assert [Path(p).name for p in (cfg.data.train, cfg.data.valid, cfg.data.test)] == [
        "train.parquet", "valid.parquet", "test.parquet"
    ]


def test_deterministic_by_seed(tmp_path: Path) -> None:
    generate(SMALL, tmp_path / "a")
    generate(SMALL, tmp_path / "b")
    generate(dataclasses.replace(SMALL, seed=1), tmp_path / "c")
    bigger = dataclasses.replace(SMALL, rows={"train": 900, "test": 200})
    generate(bigger, tmp_path / "d")
    read = lambda d, s="train": pq.read_table(tmp_path / d / f"{s}.parquet")  # noqa: E731
    assert read("a").equals(read("b"))
    assert not read("a").equals(read("c"))
    assert read("a", "test").equals(read("d", "test")), "a split does not depend on another's size"
    assert pq.ParquetFile(tmp_path / "a" / "train.parquet").metadata.num_row_groups == 4


def test_summary_figures_are_sane(default_data) -> None:
    cfg, _, summary = default_data
    assert set(summary["splits"]) == {"train", "valid", "test"}
    for split, s in summary["splits"].items():
        assert s["rows"] == cfg.rows[split]
        assert 0.1 < s["positive_rate"] < 0.4
        assert 0.8 < s["oracle_auc"] < 0.9


def test_true_prob_is_the_label_probability(default_data) -> None:
    _, out, _ = default_data
    t = pq.read_table(out / "train.parquet", columns=["click", "true_prob"])
    y, p = t.column("click").to_numpy(), t.column("true_prob").to_numpy()
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for k in range(10):
        m = bins == k
        se = np.sqrt(p[m].mean() * (1 - p[m].mean()) / m.sum())
        assert abs(y[m].mean() - p[m].mean()) < 4 * se + 1e-3, f"decile {k}"


def test_logit_terms_rebuilt_from_the_files_add_up_to_true_prob(default_data) -> None:
    """table_logit_terms (benchmarks/planted.py) recovers every row's planted logit from
    the columns alone: the terms plus the intercept give the written true_prob."""
    cfg, out, summary = default_data
    t = pq.read_table(out / "test.parquet")
    terms = table_logit_terms(t, cfg)
    assert list(terms) == list(TERMS)
    p = t.column("true_prob").to_numpy()
    logit = sum(terms.values()) + summary["intercept"]
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), p, atol=1e-3)  # the intercept is rounded to 1e-4
    assert terms["item in history"].any() and not terms["item in history"].all()
    assert np.ptp(terms["category match x recency"]) > 1.0


def test_history_carries_planted_signal(default_data) -> None:
    _, out, _ = default_data
    t = pq.read_table(out / "train.parquet").to_pydict()
    y = np.array(t["click"])
    in_hist = np.array([i in h for i, h in zip(t["item_id"], t["hist_item_ids"])])
    cats = zip(t["item_category"], t["hist_cat_ids"])
    last_cat = np.array([bool(h) and h[-1] == c for c, h in cats])
    assert 0.1 < in_hist.mean() < 0.5
    assert y[in_hist].mean() > y[~in_hist].mean() + 0.15
    assert y[last_cat].mean() > y[~last_cat].mean() + 0.15
    lengths = np.array([len(h) for h in t["hist_item_ids"]])
    assert lengths.min() == 0 and lengths.max() == 20


def test_reader_reads_generated_files(default_data) -> None:
    cfg, out, _ = default_data
    reader = ParquetBatchReader(out / "valid.parquet", synthetic_schema(cfg), 1000)
    assert sum(b.batch_size for b in reader) == 8000


def test_context_changes_which_part_of_history_matters(default_data) -> None:
    cfg, out, _ = default_data
    tau = make_world(cfg).ctx_tau
    t = pq.read_table(out / "train.parquet").to_pydict()
    y, ctx = np.array(t["click"]), np.array(t["context"])
    cats = list(zip(t["item_category"], t["hist_cat_ids"]))
    old_only = np.array([c in h[:-5] and c not in h[-5:] for c, h in cats])
    no_match = np.array([c not in h for c, h in cats])

    def uplift(contexts: np.ndarray) -> float:
        m = np.isin(ctx, contexts)
        return y[m & old_only].mean() - y[m & no_match].mean()

    order = np.argsort(tau)  # short memory first
    assert uplift(order[-2:]) > uplift(order[:2]) + 0.1


def test_lognormal_history_lengths_are_long_tailed_and_capped() -> None:
    import numpy as np

    from interformer_rec.data.synthetic import history_lengths

    cfg = SyntheticConfig(max_len=2000, min_len=0, length_dist="lognormal", mean_len=100.0, length_sigma=1.0)
    lengths = history_lengths(cfg, 200_000, np.random.default_rng(0))
    assert lengths.min() >= 0 and lengths.max() <= 2000
    assert abs(lengths.mean() - 100.0) < 2.0
    assert np.median(lengths) < 0.7 * lengths.mean()  # long tail: median exp(mu) = 0.61 * mean
    capped = history_lengths(dataclasses.replace(cfg, max_len=100), 200_000, np.random.default_rng(0))
    assert (capped == np.minimum(lengths, 100)).all(), "the same draws, cut to max_len"
    uniform = history_lengths(SyntheticConfig(max_len=20, min_len=3), 1000, np.random.default_rng(0))
    assert uniform.min() >= 3 and uniform.max() <= 20
