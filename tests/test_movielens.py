"""MovieLens-100K converter: leakage-free histories, a clean time split, the schema."""

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from interformer_rec.config import load_config
from interformer_rec.data.corating import corating_embeddings
from interformer_rec.data.converters.movielens import NUM_ITEMS, NUM_USERS, convert_movielens
from interformer_rec.data.reader import ParquetBatchReader

ROOT = Path(__file__).parents[1]
RAW = Path(__file__).parents[1].parent / "shared" / "data" / "ml-100k"
MAX_LEN = 50
SPLITS = ["train", "valid", "test"]

pytestmark = pytest.mark.skipif(
    not (RAW / "u.data").is_file(),
    reason=f"MovieLens-100K not found at {RAW} (the shared data directory beside the repo)",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("movielens")
    summary = convert_movielens(RAW, out, max_len=MAX_LEN)
    tables = {s: pq.read_table(out / f"{s}.parquet").to_pydict() for s in SPLITS}
    return out, summary, tables


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    """``[100000, 4]``: user, item, rating, timestamp, in file order."""
    return np.loadtxt(RAW / "u.data", dtype=np.int64)


def test_rows_and_labels(converted, raw) -> None:
    _, summary, tables = converted
    rows = {s: len(tables[s]["label"]) for s in SPLITS}
    assert sum(rows.values()) == 100000
    assert rows == {s: summary["splits"][s]["rows"] for s in SPLITS}
    assert abs(rows["train"] - 80000) < 500 and abs(rows["test"] - 10000) < 500
    labels = np.concatenate([tables[s]["label"] for s in SPLITS])
    assert labels.sum() == (raw[:, 2] >= 4).sum()
    assert 0.5 < labels.mean() < 0.6


def test_time_split_has_no_overlap(converted) -> None:
    _, _, tables = converted
    ts = {s: np.array(tables[s]["timestamp"]) for s in SPLITS}
    assert ts["train"].max() < ts["valid"].min() <= ts["valid"].max() < ts["test"].min()
    assert all((np.diff(ts[s]) >= 0).all() for s in SPLITS), "rows in time order"


def test_history_is_strictly_in_the_past(converted, raw) -> None:
    _, _, tables = converted
    rated_at = np.full((raw[:, 0].max() + 1, raw[:, 1].max() + 1), -1, np.int64)
    rated_at[raw[:, 0], raw[:, 1]] = raw[:, 3]
    assert (rated_at >= 0).sum() == len(raw), "each (user, item) is rated once"
    genre_of = np.zeros(rated_at.shape[1], np.int64)
    for t in tables.values():
        genre_of[t["item_id"]] = t["item_genre"]
    for s in SPLITS:
        t = tables[s]
        lengths = np.array([len(h) for h in t["hist_item_ids"]])
        users = np.repeat(t["user_id"], lengths)
        items = np.array([x for h in t["hist_item_ids"] for x in h], np.int64)
        steps = rated_at[users, items]
        assert (steps >= 0).all(), "history items were rated by the same user"
        assert (steps < np.repeat(t["timestamp"], lengths)).all(), "no step at or after the row"
        same_row = np.diff(np.repeat(np.arange(len(lengths)), lengths)) == 0
        assert (np.diff(steps)[same_row] >= 0).all(), "steps in time order"
        assert lengths.max() == MAX_LEN
        genres = np.array([x for h in t["hist_genre_ids"] for x in h], np.int64)
        assert (genres == genre_of[items]).all(), "parallel genres are the items' genres"


def test_history_matches_a_reference(converted, raw) -> None:
    """The last MAX_LEN items the user rated strictly earlier, ties in file order."""
    _, _, tables = converted
    t = tables["test"]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(t["label"]), 200, replace=False):
        u, when = t["user_id"][i], t["timestamp"][i]
        mine = raw[raw[:, 0] == u]
        mine = mine[np.argsort(mine[:, 3], kind="stable")]
        earlier = mine[mine[:, 3] < when][-MAX_LEN:]
        assert t["hist_item_ids"][i] == earlier[:, 1].tolist()
        assert t["hist_ratings"][i] == earlier[:, 2].tolist(), "the stars of each history item"
        assert t["hist_stars"][i] == earlier[:, 2].astype(float).tolist(), "the same stars as floats"
        assert t["hist_age_days"][i] == pytest.approx(((when - earlier[:, 3]) / 86400).tolist(), rel=1e-6)


def test_schema_matches_config_and_reader_accepts_files(converted) -> None:
    out, _, _ = converted
    cfg = load_config(ROOT / "configs" / "movielens.yaml")
    assert {s.max_len for s in cfg.data.schema.sequence} == {MAX_LEN}
    corating = load_config(ROOT / "configs" / "movielens_corating.yaml")
    item = next(t for t in cfg.data.schema.tables if t.name == "item")
    # the co-rating config is the plain one with the item table started from its embeddings
    assert corating.data.schema == dataclasses.replace(cfg.data.schema, tables=[
        dataclasses.replace(t, init="data/movielens/item_corating16.npy") if t is item else t
        for t in cfg.data.schema.tables
    ])
    assert corating.model.interformer.similarity_tokens and not cfg.model.interformer.similarity_tokens
    reader = ParquetBatchReader(out / "valid.parquet", cfg.data.schema, 4096)
    batches = list(reader)
    rows = pq.ParquetFile(out / "valid.parquet").metadata.num_rows
    assert sum(b.batch_size for b in batches) == rows
    genres = batches[0].sparse["item_genres"].lengths()
    assert genres.min() >= 1 and genres.max() > 1


def test_corating_embeddings_come_from_the_training_split_only(converted) -> None:
    out, summary, tables = converted
    e = np.load(summary["corating"])
    assert summary["corating"] == str(out / "item_corating16.npy") and e.shape == (NUM_ITEMS, 16)
    train = tables["train"]
    want = corating_embeddings(train["user_id"], train["item_id"], train["label"], NUM_USERS, NUM_ITEMS, 16)
    np.testing.assert_allclose(e, want, atol=1e-6)
    # items first rated after the training period have zero rows
    unseen = sorted(set(tables["test"]["item_id"]) - set(train["item_id"]))
    assert unseen and not e[unseen].any()
