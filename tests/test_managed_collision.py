"""``id_policy: managed_collision``: raw int64 ids remapped by TorchRec's
``MCHManagedCollisionModule`` (``model.mc_ec``), through the reader, DMP on 1 and 2
ranks, checkpoints, export and serving.

The trained runs share one module fixture: the synthetic log with its user and item ids
replaced by raw 64-bit ids (a bijection, so the planted signal is kept), both tables
managed, with more rows than distinct ids (every id gets a row of its own).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dist_helpers import B, _inline, _load, _overrides, _spawn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.arrays import DataError, Jagged, splitmix64
from interformer_rec.config import ConfigError, ModelConfig, SyntheticConfig
from interformer_rec.data.decode import InFile, InValues, apply_id_policy, check_columns
from interformer_rec.data.synthetic import generate
from interformer_rec.models import build_model
from interformer_rec.modules.embeddings import build_mc_ec
from interformer_rec.schema import ManagedCollisionConfig, Schema, SequenceFeature, SparseFeature, TableConfig
from interformer_rec.train.checkpoint import CheckpointError, check_managed_layout

INT64_MAX = np.iinfo(np.int64).max
MANAGED = {"user": 512, "item": 256}  # rows; the data has at most 200 users and 100 items
TABLES = [
    {"name": "user", "num_embeddings": 512, "id_policy": "managed_collision", "managed_collision": {"buckets": 2}},
    {"name": "segment", "num_embeddings": 8},
    {"name": "interest", "num_embeddings": 20},
    {"name": "context", "num_embeddings": 8},
    {"name": "item", "num_embeddings": 256, "id_policy": "managed_collision", "managed_collision": {"buckets": 2}},
    {"name": "category", "num_embeddings": 20},
]
RAW_COLUMNS = ("user_id", "item_id", "hist_item_ids")
EPOCH_STEPS = 1024 // (2 * B)


def raw_id(x: np.ndarray) -> np.ndarray:
    """A fixed bijection of the synthetic ids onto scattered 64-bit ids (negative ones too)."""
    return splitmix64(x.astype(np.int64) + 12345).view(np.int64)


def _with_raw_ids(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.glob("*.parquet"):
        t = pq.read_table(f)
        for c in RAW_COLUMNS:
            col = t.column(c).combine_chunks()
            if pa.types.is_list(col.type):
                new = pa.ListArray.from_arrays(col.offsets, pa.array(raw_id(col.values.to_numpy())))
            else:
                new = pa.array(raw_id(col.to_numpy()))
            t = t.set_column(t.schema.get_field_index(c), c, new)
        pq.write_table(t, dst / f.name, row_group_size=256)


def _mixed(ids: np.ndarray) -> np.ndarray:
    """What the reader gives the model for raw ids of a managed table (default
    ``input_hash_size``)."""
    return (splitmix64(ids) % np.uint64(INT64_MAX)).astype(np.int64)


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """1. 2 ranks: fit ``a``. 2. 1 rank, batch 2B, in this process: fit ``ref``; fit
    ``stop``, which dies after its step-6 checkpoint, then resume it; evaluate ``a``'s
    checkpoint (2 -> 1 ranks)."""
    tmp = tmp_path_factory.mktemp("mc")
    plain = tmp / "plain"
    generate(SyntheticConfig(num_users=200, num_items=100, rows={"train": 1024, "valid": 512}, row_group_size=256), plain)
    data = tmp / "data"
    _with_raw_ids(plain, data)
    tables = f"data.schema.tables={json.dumps(TABLES)}"
    whole = f"train.max_steps_per_epoch={EPOCH_STEPS}"  # every id of the log is seen
    o = lambda name, world, *extra: _overrides(data, tmp / name, B * 2 // world, {}, tables, whole, *extra)  # noqa: E731
    every = "train.checkpoint_every_steps=2"
    r: Dict[str, Any] = {"tmp": tmp, "data": data}
    _spawn(2, [{"kind": "fit", "overrides": o("a", 2), "result": tmp / "a.json"}])
    _inline([
        {"kind": "fit", "overrides": o("ref", 1), "result": tmp / "ref.json"},
        {"kind": "fit_until", "overrides": o("stop", 1, every), "stop_after": 6},
        {"kind": "fit", "overrides": o("stop", 1, every, "train.resume=true"), "result": tmp / "resumed.json"},
        {"kind": "eval", "overrides": o("eval_a", 1), "ckpt": tmp / "a" / "checkpoints", "result": tmp / "a_on_1.json"},
    ])
    for name in ("a", "ref", "resumed", "a_on_1"):
        r[name] = _load(tmp / f"{name}.json")
    return r


def _remapping(run: Path) -> Dict[str, Dict[int, np.ndarray]]:
    """``{table: {mixed id: its embedding}}`` of every admitted id of a run's best
    checkpoint, loaded into a plain model (as export does); asserts one row per id."""
    from interformer_rec.export.export import load_model

    model, *_ = load_model(run / "checkpoints")
    mcc = model.mc_ec._managed_collision_collection
    weights = model.mc_ec._embedding_module.embeddings
    out = {}
    for table, mch in mcc._managed_collision_modules.items():
        admitted = mch._mch_sorted_raw_ids != INT64_MAX
        ids, rows = mch._mch_sorted_raw_ids[admitted], mch._mch_remapped_ids_mapping[admitted]
        assert len(set(rows.tolist())) == len(rows), table  # one row per id
        w = weights[table].weight.detach()
        out[table] = {int(i): w[int(r)].numpy() for i, r in zip(ids, rows)}
    return out


def _distinct_ids(data: Path, columns: tuple) -> set:
    ids = []
    for c in columns:
        col = pq.read_table(data / "train.parquet", columns=[c]).column(c).combine_chunks()
        ids.append((col.flatten() if pa.types.is_list(col.type) else col).to_numpy())
    return set(_mixed(np.concatenate(ids)).tolist())


# --------------------------------------------------------------------------- training


@pytest.mark.timeout(700)
def test_two_ranks_match_one_rank_with_managed_ids(runs: Dict[str, Any]) -> None:
    """Admitted rows start from a function of the id (not of the row), so 2 ranks (each
    holding one bucket of the ids, in rows of its own) train as 1 rank does."""
    l1, l2 = runs["ref"]["step_losses"][0], runs["a"]["step_losses"][0]
    assert len(l1) == len(l2) == EPOCH_STEPS
    assert max(abs(x - y) for x, y in zip(l1, l2)) < 1e-5, (l1, l2)
    assert runs["a"]["valid"]["auc"] == pytest.approx(runs["ref"]["valid"]["auc"], abs=1e-4)
    assert runs["a"]["plan"]["item"]["sharding_type"] == "row_wise" and runs["a"]["plan"]["item"]["ranks"] == [0, 1]


@pytest.mark.timeout(700)
def test_every_distinct_id_has_its_own_row_on_one_and_two_ranks(runs: Dict[str, Any]) -> None:
    tmp = runs["tmp"]
    one, two = _remapping(tmp / "ref"), _remapping(tmp / "a")
    want = {"user": _distinct_ids(runs["data"], ("user_id",)), "item": _distinct_ids(runs["data"], ("item_id", "hist_item_ids"))}
    for table in MANAGED:
        assert set(one[table]) == set(two[table]) == want[table], table  # zero collisions
        for i, v in one[table].items():  # the same embedding per id, in different rows
            np.testing.assert_allclose(two[table][i], v, atol=1e-5)


@pytest.mark.timeout(700)
def test_resume_continues_with_the_same_remapping(runs: Dict[str, Any]) -> None:
    ref, resumed = runs["ref"], runs["resumed"]
    np.testing.assert_allclose(resumed["step_losses"][0], ref["step_losses"][0], atol=1e-6)
    tmp = runs["tmp"]
    a, b = _remapping(tmp / "ref"), _remapping(tmp / "stop")
    for table in MANAGED:
        assert set(a[table]) == set(b[table])
        for i, v in a[table].items():
            np.testing.assert_allclose(b[table][i], v, atol=1e-6)


@pytest.mark.timeout(700)
def test_a_two_rank_checkpoint_evaluates_the_same_on_one_rank(runs: Dict[str, Any]) -> None:
    a, on_1 = runs["a"]["valid"], runs["a_on_1"]
    for k in ("auc", "logloss", "rows"):
        assert on_1[k] == pytest.approx(a[k], abs=1e-5), k


# --------------------------------------------------------------------------- export, serving


@pytest.fixture(scope="module")
def exported_mc(runs: Dict[str, Any]) -> Path:
    from interformer_rec.export.export import export

    out = runs["tmp"] / "export"
    export(runs["tmp"] / "ref" / "checkpoints", out, parity_rows=256, data=[runs["data"] / "valid.parquet"])
    return out


def _rows(data: Path, n: int) -> list:
    t = pq.read_table(data / "valid.parquet").slice(0, n).to_pylist()
    return [{k: v for k, v in r.items() if k not in ("click", "true_prob")} for r in t]


@pytest.mark.timeout(700)
def test_export_maps_raw_ids_as_training_did_and_unseen_ids_share_one_row(runs, exported_mc) -> None:
    from interformer_rec.export.export import load_model, serving_module
    from interformer_rec.serving.features import FeatureSpec, encode_rows
    from interformer_rec.serving.predictor import Predictor

    manifest = json.loads((exported_mc / "manifest.json").read_text())
    assert manifest["parity"]["passed"]
    predictor = Predictor(exported_mc)
    rows = _rows(runs["data"], 16)
    model, cfg, *_ = load_model(runs["tmp"] / "ref" / "checkpoints")
    spec = FeatureSpec(cfg.data.schema)
    with torch.no_grad():
        eager = torch.sigmoid(serving_module(model, spec)(*encode_rows(spec, rows).to_tensors())).numpy()
    np.testing.assert_allclose(predictor.predict_rows(rows), eager, atol=1e-5)
    # ids never seen in training (any int64) read the same row: equal scores
    unseen = [dict(rows[0], item_id=v) for v in (INT64_MAX, -(2**63), 7, -1)]
    p = predictor.predict_rows(unseen)
    assert np.isfinite(p).all() and np.ptp(p) == 0.0, p
    assert not np.isclose(predictor.predict_rows(rows[:1])[0, 0], p[0, 0])  # a seen id reads its own


@pytest.mark.timeout(700)
def test_the_server_takes_raw_ids(runs, exported_mc) -> None:
    import requests

    from interformer_rec.serving.predictor import Predictor
    from interformer_rec.serving.server import BackgroundServer, ServerConfig

    predictor = Predictor(exported_mc)
    rows = _rows(runs["data"], 4)
    user = {k: v for k, v in rows[0].items() if k not in ("item_id", "item_category")}
    cands = [{"item_id": r["item_id"], "item_category": r["item_category"]} for r in rows]
    with BackgroundServer(predictor, ServerConfig(port=0)) as s:
        got = requests.post(s.url + "/v1/score", json={"user": user, "candidates": cands}, timeout=20).json()
    want = predictor.predict_rows([dict(user, **c) for c in cands])[:, 0]
    np.testing.assert_allclose(got["scores"]["click"], want, atol=1e-6)


# --------------------------------------------------------------------------- the module, the reader


def _schema(policy: str = "managed_collision", **mc: Any) -> Schema:
    return Schema(
        labels=["y"],
        sparse=[SparseFeature("item_id", "item"), SparseFeature("cat", "category")],
        sequence=[SequenceFeature("hist", "item", max_len=4)],
        tables=[
            TableConfig("item", 8, id_policy=policy, managed_collision=ManagedCollisionConfig(**mc)),
            TableConfig("category", 5),
        ],
    )


def _remap(mc_ec: torch.nn.Module, ids: list) -> list:
    kjt = KeyedJaggedTensor(["item_id", "hist"], torch.tensor(ids), lengths=torch.tensor([len(ids), 0]))
    return mc_ec._managed_collision_collection(kjt).values().tolist()


def test_distinct_ids_get_distinct_rows_and_eviction_frees_unseen_ones() -> None:
    mc_ec = build_mc_ec(_schema(eviction_policy="lru"), dim=4)
    miss = 8  # 8 ids fit; row 8 (the one extra row per bucket) is the rows of ids without one
    first = list(range(100, 108))
    rows = _remap(mc_ec, first)
    assert len(set(rows)) == 8 and miss not in rows
    assert _remap(mc_ec, first) == rows  # stable
    # 3 new ids arrive beside 5 recent ones: the 3 ids unseen longest give their rows up
    new, kept, gone = [200, 201, 202], first[3:], first[:3]
    after = _remap(mc_ec, new + kept)
    assert sorted(after[:3]) == sorted(rows[:3]) and after[3:] == rows[3:]
    mc_ec.eval()  # no admissions at inference
    assert _remap(mc_ec, gone + [999]) == [miss] * 4


@pytest.mark.parametrize("prepared", [False, True])
def test_a_step_with_more_ids_than_the_first_has_them_all_admitted(prepared: bool) -> None:
    """TorchRec sizes the buffer of ids counted between admissions from the first batch
    and drops what does not fit; :func:`prepare_managed_tables` grows it instead (a log
    in time order starts with short histories)."""
    from interformer_rec.train.tables import prepare_managed_tables

    mc_ec = build_mc_ec(_schema(eviction_policy="lru"), dim=4)
    if prepared:
        prepare_managed_tables(mc_ec, seed=0)
    _remap(mc_ec, [1])
    rows = _remap(mc_ec, list(range(100, 108)))
    admitted = sum(r != 8 for r in rows)
    assert admitted == (8 if prepared else 1), rows  # without: the 1-id buffer holds one


def test_the_reader_mixes_raw_ids_of_managed_tables_and_checks_the_others() -> None:
    schema = _schema(input_hash_size=1000)
    where = InValues(lambda i: f"rows[{i}]")
    raw = np.array([INT64_MAX, -(2**63), -1, 0, 5])
    j = apply_id_policy(Jagged(np.ones(5, np.int64), raw), "item_id", schema, "item", where)
    assert ((j.values >= 0) & (j.values < 1000)).all()
    assert j.values.tolist() == (splitmix64(raw) % np.uint64(1000)).astype(np.int64).tolist()
    with pytest.raises(DataError, match=r"rows\[0\]\.cat: id 5 outside \[0, 5\) of table 'category'"):
        apply_id_policy(Jagged(np.ones(1, np.int64), np.array([5])), "cat", schema, "category", where)
    # a managed table is an EmbeddingCollection table: its pooled feature is a target-like token
    assert [f.name for f in schema.target_features] == ["item_id"]
    genres = Schema(labels=["y"], sparse=[SparseFeature("genres", "genre")],
                    tables=[TableConfig("genre", 8, id_policy="managed_collision")])
    arrow = pa.schema([("y", pa.int64()), ("genres", pa.list_(pa.int64()))])
    with pytest.raises(DataError, match=r"f\.parquet, column 'genres': expected integer \(int64\): a feature of a managed_collision"):
        check_columns(arrow, genres, InFile("f.parquet"))


def test_managed_collision_config_mistakes() -> None:
    with pytest.raises(ConfigError, match="init: a managed_collision table"):
        Schema(labels=["y"], sparse=[SparseFeature("u", "user")],
               tables=[TableConfig("user", 8, init="u.npy", id_policy="managed_collision")])
    with pytest.raises(ConfigError, match=r"managed_collision.eviction_interval=0"):
        _schema(eviction_interval=0)
    with pytest.raises(ConfigError, match="DLRM baselines"):
        build_model(_schema(), ModelConfig(name="dlrm", embedding_dim=4))
    from interformer_rec.config import DistConfig
    from interformer_rec.train.dist import check_sharding_config

    model = build_model(_schema(buckets=1), ModelConfig(name="interformer", embedding_dim=4))
    with pytest.raises(ConfigError, match=r"buckets=1: must be a multiple of the world size \(2\)"):
        check_sharding_config(model, DistConfig(), "cpu", world_size=2)


def test_a_checkpoint_is_refused_where_a_shard_would_split_a_saved_one(tmp_path: Path) -> None:
    """Saved by 1 rank (one segment [0, 10)), loaded by a 2-shard plan: refused with the
    reason; saved by 2 ranks, loaded on one: accepted."""
    mc_ec = build_mc_ec(_schema(buckets=2), dim=4)
    mch = mc_ec._managed_collision_collection._managed_collision_modules["item"]
    shard = mch.rebuild_with_output_id_range((0, 5), [0, 5, 10])
    key = "mc_ec._managed_collision_collection._managed_collision_modules.item._output_segments_tensor"
    one_segment = {key: torch.tensor([0, 10, -1, -1])}
    with pytest.raises(CheckpointError, match=r"splits one of them.*trained with \(1 row-wise shards\), or on one rank"):
        check_managed_layout(tmp_path, shard, one_segment)
    check_managed_layout(tmp_path, mc_ec, {key: torch.tensor([0, 5, 10, -1])})  # 2 -> 1: fine
