"""Continuous per-step sequence features (``schema.sequence_floats``): read from Parquet
under the bad-input policy, carried by the Batch, encoded (linear, soft one-hot) and
merged (concat, element-wise) as their formulas say, used by every model, learned
end to end by the real trainer, exported with parity and encoded alike for serving."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from interformer_rec.config import (
    Config,
    ConfigError,
    DataConfig,
    DLRMConfig,
    InterFormerConfig,
    ModelConfig,
    OptimizerConfig,
    Schema,
    SequenceFeature,
    SequenceFloatFeature,
    SparseFeature,
    TableConfig,
    TrainConfig,
    config_from_dict,
)
from interformer_rec.data.reader import DataError, ParquetBatchReader
from interformer_rec.models import build_model
from interformer_rec.modules.continuous import LinearFloatEncoder, SequenceFloats, SoftOneHotEncoder
from interformer_rec.serving.features import FeatureSpec, InputError, encode_request, encode_rows, encode_table

from test_baselines import MAX_LEN, make_cfg, make_inputs, make_schema

N = 5
FLOATS = [
    SequenceFloatFeature("dwell", encoder="soft_one_hot", num_bins=4, transform="log1p"),
    SequenceFloatFeature("price"),
]


def float_schema(merge: str = "concat", max_len: int = 3) -> Schema:
    return Schema(
        labels=["y"],
        dense=["d0"],
        sparse=[SparseFeature("user", "user"), SparseFeature("item", "item")],
        sequence=[SequenceFeature("hist_item", "item", max_len)],
        sequence_floats=FLOATS,
        sequence_float_merge=merge,
        tables=[TableConfig("user", 10), TableConfig("item", 20)],
    )


def columns(**overrides: Any) -> Dict[str, Any]:
    cols: Dict[str, Any] = {
        "y": pa.array([0, 1, 0, 1, 1], pa.int8()),
        "d0": pa.array([0.1, 0.2, 0.3, 0.4, 0.5], pa.float32()),
        "user": pa.array([1, 2, 3, 4, 5]),
        "item": pa.array([10, 11, 12, 13, 14]),
        "hist_item": pa.array([[1], [2, 3], [], [4, 5, 6, 7], [8]], pa.list_(pa.int64())),
        "dwell": pa.array([[1.5], [2.0, 3.0], [], [4.0, 5.0, 6.0, 7.0], [8.0]], pa.list_(pa.float32())),
        "price": pa.array([[1], [2, 3], None, [4, 5, 6, 7], [8]], pa.list_(pa.int64())),  # ints accepted
    }
    cols.update(overrides)
    return cols


def write(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table(columns(**overrides)), path, row_group_size=2)
    return path


def read_one(path: Path, schema: Schema):
    (b,) = list(ParquetBatchReader(path, schema, 100))
    return b


# --------------------------------------------------------------------------- reading


def test_reader_reads_floats_parallel_to_the_history_and_keeps_the_most_recent(tmp_path: Path) -> None:
    b = read_one(write(tmp_path), float_schema())
    assert b.sequence.to_dict()["hist_item"].lengths().tolist() == [1, 2, 0, 3, 1]
    # one row per step, a column per feature; row 3 keeps its 3 most recent steps
    expected = [[1.5, 1], [2, 2], [3, 3], [5, 5], [6, 6], [7, 7], [8, 8]]
    assert b.sequence_floats.dtype == torch.float32
    assert b.sequence_floats.tolist() == expected
    plain = dataclasses.replace(float_schema(), sequence_floats=[])
    assert read_one(write(tmp_path), plain).sequence_floats is None


@pytest.mark.parametrize(
    "column,values,row,message",
    [
        ("dwell", [[1.5], [2.0, None], [], [4.0, 5.0, 6.0, 7.0], [8.0]], 1, "null value inside a list"),
        ("dwell", [[1.5], [2.0, 3.0], [], [4.0, float("nan"), 6.0, 7.0], [8.0]], 3, "not finite"),
        ("dwell", [[1.5], [2.0, 3.0], [], [4.0, 5.0, 6.0, 7.0], [float("inf")]], 4, "not finite"),
        ("dwell", [[1.5], [2.0, 3.0], [], [4.0, 5.0, 6.0, 7.0], [1e300]], 4, "not finite"),  # beyond float32
        # a value of a step that truncation drops is checked too
        ("dwell", [[1.5], [2.0, 3.0], [], [float("nan"), 5.0, 6.0, 7.0], [8.0]], 3, "not finite"),
        ("price", [[1], [2, 3], [], [4, 5, 6], [8]], 3, "unequal lengths"),
        ("price", [[1], None, [], [4, 5, 6, 7], [8]], 1, "unequal lengths"),  # null beside a history
    ],
)
def test_bad_float_values_name_file_column_and_row(
    tmp_path: Path, column: str, values: List[Any], row: int, message: str
) -> None:
    path = write(tmp_path, **{column: pa.array(values, pa.list_(pa.float64()))})
    with pytest.raises(DataError) as e:
        read_one(path, float_schema())
    msg = str(e.value)
    assert str(path) in msg and f"row {row}" in msg and message in msg and repr(column) in msg, msg


@pytest.mark.parametrize("array", [pa.array([1.0] * N), pa.array([["a"]] * N), pa.array([[True]] * N)])
def test_wrong_float_column_type(tmp_path: Path, array: pa.Array) -> None:
    with pytest.raises(DataError, match=r"column 'dwell': expected list<float>"):
        read_one(write(tmp_path, dwell=array), float_schema())


def test_schema_checks() -> None:
    with pytest.raises(ConfigError, match="needs at least one schema.sequence"):
        dataclasses.replace(float_schema(), sequence=[])
    with pytest.raises(ConfigError, match="num_bins=1"):
        dataclasses.replace(float_schema(), sequence_floats=[SequenceFloatFeature("dwell", num_bins=1)])
    raw = dataclasses.asdict(float_schema())
    raw["sequence_floats"][0]["encoder"] = "bucketize"
    with pytest.raises(ConfigError, match="encoder"):
        config_from_dict({"data": {"schema": raw, "train": "x", "valid": "y"}})


# --------------------------------------------------------------------------- encoders


def test_soft_one_hot_equals_its_formula() -> None:
    torch.manual_seed(0)
    enc = SoftOneHotEncoder(num_bins=5, width=3)
    f = torch.tensor([[-2.0, 0.0, 0.5], [3.0, 1e-3, 10.0]])
    w, b, E = enc.projection.weight[:, 0], enc.projection.bias, enc.embeddings  # [J], [J], [J, width]
    logits = f[..., None] * w + b
    weights = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    expected = (weights[..., :, None] * E).sum(-2)
    torch.testing.assert_close(enc(f), expected)
    assert enc(f).shape == (2, 3, 3)


def test_linear_encoder_transform_and_both_merges_equal_their_formulas() -> None:
    torch.manual_seed(0)
    lin = LinearFloatEncoder(4)
    f = torch.tensor([1.0, -2.0])
    torch.testing.assert_close(lin(f), f[:, None] * lin.weight + lin.bias)

    d, k, T = 4, 2, 3
    lengths = torch.tensor([2, 0, 3])
    values = torch.tensor([[0.5, 1.0], [3.0, -2.0], [1.0, 0.0], [-1.0, 2.0], [7.0, 1.0]])  # 5 steps × 2 features
    steps = torch.randn(3, T, k * d) * (torch.arange(T) < lengths[:, None])[..., None]
    padded = JaggedTensor(values=values, lengths=lengths).to_padded_dense(desired_length=T)  # [B, T, 2]
    valid = (torch.arange(T) < lengths[:, None])[..., None].float()
    for merge in ("concat", "elementwise"):
        torch.manual_seed(1)
        schema = dataclasses.replace(float_schema(merge), sequence=[SequenceFeature("hist_item", "item", T)] * 1)
        sf = SequenceFloats(schema, k * d, d)
        dwell = torch.sign(padded[..., 0]) * torch.log1p(padded[..., 0].abs())  # transform: log1p
        e = [sf.encoders[0](dwell) * valid, sf.encoders[1](padded[..., 1]) * valid]
        out = sf(steps, values, lengths)
        if merge == "concat":
            assert sf.out_dim == k * d + 2 * d
            torch.testing.assert_close(out, torch.cat([steps, *e], dim=-1))
        else:
            assert sf.out_dim == k * d
            torch.testing.assert_close(out, steps * (1 + e[0] + e[1]))
        assert (out[1] == 0).all() and (out[0, 2] == 0).all(), "padded steps stay zero"
        target = torch.randn(3, 1, k * d)
        expected_target = torch.cat([target, torch.zeros(3, 1, 2 * d)], -1) if merge == "concat" else target
        torch.testing.assert_close(sf.target(target), expected_target)


# --------------------------------------------------------------------------- models

MODEL_MERGES = [
    ("interformer", "concat"), ("interformer", "elementwise"), ("dlrm_dcn", "concat"), ("bst", "concat"),
    ("din", "elementwise"), ("infnet", "concat"), ("onetrans", "elementwise"),
]


def model_schema(merge: str) -> Schema:
    """tests/test_baselines.py's schema with two sequence floats."""
    return dataclasses.replace(make_schema(), sequence_floats=FLOATS, sequence_float_merge=merge)


def random_floats(sequence, seed: int) -> torch.Tensor:
    steps = int(sequence.to_dict()["hist_item_ids"].lengths().sum())
    return torch.randn(steps, len(FLOATS), generator=torch.Generator().manual_seed(seed)).exp()


@pytest.mark.parametrize("name,merge", MODEL_MERGES)
def test_every_model_reads_each_rows_floats(name: str, merge: str) -> None:
    schema = model_schema(merge)
    torch.manual_seed(0)
    model = build_model(schema, make_cfg(name)).eval()
    lengths = torch.tensor([3, 0, 5, 1])
    dense, sparse, sequence = make_inputs(schema, 4, lengths=lengths)
    floats = random_floats(sequence, 0)
    with pytest.raises(ConfigError, match="without them"):
        model(dense, sparse, sequence)
    out = model(dense, sparse, sequence, floats)
    changed = floats.clone()
    changed[3:8] *= 5.0  # row 2's steps only
    diff = (model(dense, sparse, sequence, changed) - out).abs().squeeze(1)
    assert diff[2] > 1e-4 and (diff[[0, 1, 3]] == 0).all(), diff
    out.sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "floats" in n or "encoders" in n]
    if name != "dlrm_dcn":  # the DLRM pools them into its dense input instead
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,merge", [m for m in MODEL_MERGES if m != ("interformer", "elementwise")])
def test_exported_serving_program_matches_eager(name: str, merge: str) -> None:
    """The package's graph (plain tensors in, fbgemm's jagged ops rewritten in ATen)
    equals the eager model, at batch 1 and 37, empty and full-length histories."""
    from interformer_rec.export.export import export_program, serving_module
    from interformer_rec.export.inputs import random_encoded

    schema = model_schema(merge)
    spec = FeatureSpec(schema)
    torch.manual_seed(0)
    model = build_model(schema, make_cfg(name)).eval()
    serving = serving_module(model, spec)
    program = export_program(serving, spec).module()
    rng = np.random.default_rng(0)
    cases = [random_encoded(spec, 1, rng), random_encoded(spec, 37, rng)]
    cases += [random_encoded(spec, 5, rng, sequences=s) for s in ("empty", "full")]
    for enc in cases:
        x = enc.to_tensors()
        assert len(x) == 6 and x[5].shape == (int(x[4][-1].sum()), 2)
        with torch.no_grad():
            diff = (program(*x) - serving(*x)).abs().max()
        assert diff < 1e-5, (name, len(enc), diff)


# --------------------------------------------------------------------------- serving


def test_rows_request_and_table_encode_floats_like_the_reader(tmp_path: Path) -> None:
    schema = float_schema()
    spec = FeatureSpec(schema)
    path = write(tmp_path)
    table = pq.read_table(path)
    reader = read_one(path, schema)
    by_table = encode_table(spec, table)
    assert [f.name for f in schema.sequence_floats] == spec.floats
    torch.testing.assert_close(by_table.to_tensors()[5], reader.sequence_floats)
    rows = table.to_pylist()
    for x, y in zip(encode_rows(spec, rows).model_inputs(), by_table.model_inputs()):
        np.testing.assert_array_equal(x, y)
    user = {k: rows[3][k] for k in ("user", "d0", "hist_item", "dwell", "price")}
    request = encode_request(spec, {"user": user, "candidates": [{"item": 1}, {"item": 2}]})
    floats = request.to_tensors()[5]
    assert floats.tolist() == [[5, 5], [6, 6], [7, 7]] * 2, "the user's 3 most recent steps, per candidate"
    bad = dict(user, price=[1.0, 2.0])
    with pytest.raises(InputError, match=r"user: parallel sequences have unequal lengths"):
        encode_request(spec, {"user": bad, "candidates": [{"item": 1}]})
    with pytest.raises(InputError, match=r"user.dwell\[1\]: expected a number, got string"):
        encode_request(spec, {"user": dict(user, dwell=[1.0, "x", 2.0, 3.0]), "candidates": [{"item": 1}]})
    with pytest.raises(InputError, match=r"rows\[0\].dwell: value nan is not finite"):
        encode_rows(spec, [dict(rows[0], dwell=[float("nan")])])


# --------------------------------------------------------------------------- learning


def planted(path: Path, n: int, seed: int) -> None:
    """Histories of random items (no signal in any id) with a dwell time per step; the
    label is 1 when the dwell times' geometric mean exceeds 1 (log-normal: half the rows)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 7, n)
    dwell = rng.lognormal(0.0, 1.5, int(lengths.sum())).astype(np.float32)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    mean_log = np.add.reduceat(np.log(dwell), offsets[:-1]) / lengths
    pq.write_table(pa.table({
        "y": pa.array((mean_log > 0).astype(np.int8)),
        "user": pa.array(rng.integers(0, 50, n)),
        "item": pa.array(rng.integers(0, 40, n)),
        "hist_item": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 40, int(lengths.sum())))),
        "dwell": pa.ListArray.from_arrays(pa.array(offsets), pa.array(dwell)),
    }), path, row_group_size=512)


@pytest.mark.parametrize("name", ["interformer", "dlrm_dcn"])
def test_trainer_learns_a_signal_that_only_the_floats_carry(tmp_path: Path, name: str) -> None:
    """Reader → Batch → TrainPipelineSparseDist → DMP model (InterFormer: soft one-hot,
    concat; DLRM_DCN: the history mean in its dense input): the label depends only on
    the dwell times."""
    from interformer_rec.train.trainer import Trainer

    for split, n, seed in (("train", 4096, 0), ("valid", 1024, 1)):
        planted(tmp_path / f"{split}.parquet", n, seed)
    schema = Schema(
        labels=["y"],
        sparse=[SparseFeature("user", "user"), SparseFeature("item", "item")],
        sequence=[SequenceFeature("hist_item", "item", MAX_LEN)],
        sequence_floats=[SequenceFloatFeature("dwell", encoder="soft_one_hot", num_bins=8, transform="log1p")],
        tables=[TableConfig("user", 50), TableConfig("item", 40)],
    )
    cfg = Config(
        data=DataConfig(schema=schema, train=str(tmp_path / "train.parquet"), valid=str(tmp_path / "valid.parquet")),
        model=ModelConfig(name=name, embedding_dim=8, dlrm=DLRMConfig(dense_arch=[16], over_arch=[16], dcn_low_rank=4),
                          interformer=InterFormerConfig(
            num_cls=2, num_pma=1, num_recent=1, interaction_mlp=[16], masknet_hidden=16, over_arch=[16],
            dcn_low_rank=4, dropout=0.0)),
        train=TrainConfig(batch_size=128, epochs=3, out_dir=str(tmp_path / "run"), progress=False, log_every=1000,
                          dense_optimizer=OptimizerConfig(lr=0.01)),
    )
    result = Trainer(cfg).fit()
    assert result["valid"]["auc"] > 0.9, result["valid"]


def test_inspect_counts_floats_that_do_not_match_the_history(tmp_path: Path) -> None:
    from interformer_rec.data.inspect import inspect_data

    path = write(tmp_path, price=pa.array([[1], [2, 3], [], [4, 5, 6], [8]], pa.list_(pa.float64())))
    r = inspect_data(path, float_schema())
    assert r["schema_checks"]["unequal_parallel_sequences"]["hist_item/dwell/price"] == 1
    assert "hist_item/dwell/price: 1 rows with unequal parallel" in "\n".join(r["problems"])


def test_a_non_finite_score_names_the_largest_numeric_input(tmp_path: Path) -> None:
    """Issue 33, item 2: the error for a row the model overflows on names the numeric
    input (dense column or sequence float at a history step) most likely to blame."""
    from interformer_rec.serving.predictor import check_finite, largest_input

    spec = FeatureSpec(float_schema(max_len=10))
    enc = encode_table(spec, pq.read_table(write(tmp_path, dwell=pa.array(
        [[1.5], [2.0, 3.0], [], [4.0, 1e9, 6.0, 7.0], [8.0]], pa.list_(pa.float32())))))
    assert largest_input(spec, enc, 3) == "dwell = 1e+09 (history step 1)"
    assert largest_input(spec, enc, 2) == "d0 = 0.3"  # an empty history: only the dense value
    probs = np.full((5, 1), 0.5, np.float32)
    probs[3] = np.nan
    with pytest.raises(InputError, match=r"rows\[3\]: .* its largest numeric input, dwell = 1e\+09 \(history step 1\)"):
        check_finite(probs, lambda i: f"rows[{i}]", spec, enc)
    assert check_finite(probs[:3], lambda i: f"rows[{i}]", spec, enc) is not None
