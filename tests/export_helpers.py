"""Shared fixtures of tests/test_export.py and tests/test_serve.py: a tiny synthetic data
set, tiny checkpoints and their exported packages, cached under the session's pytest
base temp directory so that each package is compiled (AOTInductor, ~15-25 s on 2 cores)
once per test session, whichever test file asks first.

Models: ``interformer`` and ``dlrm_dcn``, trained by the real Trainer (3 epochs on the
planted synthetic data: test AUC ~0.72 and ~0.68, the oracle's 0.89). InterFormer runs
local attention (blocks of :data:`LOCAL_WINDOW` = 2 steps, the histories have up to 6)
and its package takes at most :data:`INTERFORMER_MAX_BATCH` rows per call, so that one
compile covers both; full attention is exported by tests/test_your_log.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from filelock import FileLock

from interformer_rec.config import (
    Config,
    DataConfig,
    DLRMConfig,
    InterFormerConfig,
    ModelConfig,
    OptimizerConfig,
    SyntheticConfig,
    TrainConfig,
)
from interformer_rec.data.synthetic import generate, synthetic_schema

SYNTH = SyntheticConfig(
    num_users=50, num_items=40, num_categories=5, num_contexts=3, num_segments=3, num_dense=2,
    max_len=6, min_len=0, rows={"train": 1024, "valid": 256, "test": 256}, row_group_size=128, seed=0,
)


def cache_dir(tmp_path_factory) -> Path:
    """The session's cache. Under pytest-xdist each worker has its own base temp
    directory; the cache is in their shared parent, and each entry is built under a
    file lock, so it is built once whichever worker asks first."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    d = base / "export-cache"
    d.mkdir(exist_ok=True)
    return d


def _lock(entry: Path) -> FileLock:
    return FileLock(str(entry) + ".lock")


def data_dir(tmp_path_factory) -> Path:
    d = cache_dir(tmp_path_factory) / "data"
    with _lock(d):
        if not (d / "test.parquet").exists():
            generate(SYNTH, d)
    return d


LOCAL_WINDOW = 2  # InterFormer's attention blocks (local attention)
INTERFORMER_MAX_BATCH = 64  # its package's batch limit (the test set has 256 rows)


def make_config(data: Path, name: str, out_dir: Path) -> Config:
    """The tiny config of model ``name``."""
    return Config(
        data=DataConfig(
            schema=synthetic_schema(SYNTH),
            train=str(data / "train.parquet"),
            valid=str(data / "valid.parquet"),
            test=str(data / "test.parquet"),
            synthetic=SYNTH,
        ),
        model=ModelConfig(
            name=name,
            embedding_dim=8,
            dlrm=DLRMConfig(dense_arch=[16], over_arch=[16], dcn_num_layers=2, dcn_low_rank=4),
            interformer=InterFormerConfig(
                num_layers=2, num_heads=2, interaction="dhen", interaction_mlp=[16], dcn_num_layers=1,
                dcn_low_rank=4, projection_branch1=[16], projection_branch2=[16], masknet_hidden=16,
                ffn_hidden=16, over_arch=[16], similarity_tokens=True, readout_tokens=True,  # exported too
                attention_window=LOCAL_WINDOW,
            ),
        ),
        train=TrainConfig(
            batch_size=128, eval_batch_size=256, epochs=3, out_dir=str(out_dir), progress=False,
            dense_optimizer=OptimizerConfig(name="adam", lr=1e-2),
            embedding_optimizer=OptimizerConfig(name="adagrad", lr=0.05),
        ),
    )


def checkpoint(tmp_path_factory, name: str) -> Path:
    """A run directory with a ``checkpoints/best`` for model ``name``, trained by the
    real Trainer (DMP-sharded, so loading the checkpoint exercises gathering sharded
    tables into a plain model)."""
    run = cache_dir(tmp_path_factory) / f"run_{name}"
    with _lock(run):
        if not (run / "checkpoints" / "best").exists():
            _train(tmp_path_factory, name, run)
    return run


def _train(tmp_path_factory, name: str, run: Path) -> None:
    from interformer_rec.train.trainer import Trainer

    Trainer(make_config(data_dir(tmp_path_factory), name, run)).fit()


def exported(tmp_path_factory, name: str, quantize: Optional[str] = None) -> Path:
    """The export directory of model ``name``, written by ``interformer-rec export``
    (compiled once per session)."""
    out = cache_dir(tmp_path_factory) / f"export_{name}_{quantize or 'float'}"
    with _lock(out):
        if not ((out / "manifest.json").exists() and (out / "model.pt2").exists()):
            _export(tmp_path_factory, name, quantize, out)
    return out


def _export(tmp_path_factory, name: str, quantize: Optional[str], out: Path) -> None:
    from interformer_rec.cli import main

    run = checkpoint(tmp_path_factory, name)
    args = ["export", "--checkpoint", str(run), "--out", str(out), "--parity-rows", "256"]
    if name == "interformer":
        args += ["--max-batch", str(INTERFORMER_MAX_BATCH)]
    args += ["--quantize", quantize] if quantize else ["--kjt-program"]
    rc = main(args)
    assert rc == 0, f"interformer-rec {' '.join(args)} exited {rc}"


def manifest(export_dir: Path) -> dict:
    return json.loads((export_dir / "manifest.json").read_text())


def assert_kjt_program_matches_eager(model, schema, tol: float = 1e-5) -> None:
    """``export_kjt_program`` of an eval-mode ``model`` (``torch.export``, dynamic batch)
    equals the eager model on random rows at batch sizes 1 and 37, on empty and on
    full-length histories."""
    import numpy as np
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from interformer_rec.export.export import export_kjt_program
    from interformer_rec.export.inputs import random_encoded
    from interformer_rec.serving.features import FeatureSpec

    spec = FeatureSpec(schema)
    program = export_kjt_program(model.eval(), spec).module()
    rng = np.random.default_rng(0)
    cases = [random_encoded(spec, 1, rng), random_encoded(spec, 37, rng)]
    cases += [random_encoded(spec, 5, rng, sequences=s) for s in ("empty", "full")]
    for enc in cases:
        dense, sv, sl, qv, ql = enc.to_tensors()
        sparse = KeyedJaggedTensor(keys=spec.pooled_keys, values=sv, lengths=sl.reshape(-1), stride=len(enc))
        seq = KeyedJaggedTensor(keys=spec.unpooled_keys, values=qv, lengths=ql.reshape(-1), stride=len(enc))
        with torch.no_grad():
            diff = (program(dense, sparse, seq) - model(dense, sparse, seq)).abs().max()
        assert diff < tol, (len(enc), diff)
