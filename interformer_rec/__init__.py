"""interformer_rec: InterFormer and TorchRec's DLRM baselines for CTR prediction.

The Python API, for notebooks and scripts (the CLI, ``interformer-rec``, is built on it)::

    import interformer_rec as ir

    cfg = ir.load_config("configs/synthetic.yaml", ["train.epochs=1"])   # typed Config
    ir.generate(cfg.data.synthetic, "data/synthetic")     # or convert / bring your Parquet
    trainer = ir.Trainer(cfg)                             # sharded by TorchRec (1 rank here)
    result = trainer.fit()                                # {"history", "best", "test", ...}
    valid = trainer.evaluate("valid")                     # {"auc", "gauc", "logloss", "ne", ...}
    ir.export(cfg.train.out_dir, "models/synthetic")      # AOTInductor package, parity checked
    scores = ir.Predictor("models/synthetic").predict_rows(rows)   # [n, tasks] probabilities

Names load on first use, so ``import interformer_rec`` stays light (the predictor never
imports torchrec or the trainer).
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Config": "interformer_rec.config",
    "load_config": "interformer_rec.config",
    "Schema": "interformer_rec.schema",
    "generate": "interformer_rec.data.synthetic",
    "ParquetBatchReader": "interformer_rec.data.reader",
    "build_model": "interformer_rec.models",
    "Trainer": "interformer_rec.train.trainer",
    "export": "interformer_rec.export.export",
    "Predictor": "interformer_rec.serving.predictor",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'interformer_rec' has no attribute {name!r}")


def __dir__() -> list:
    return sorted([*globals(), *_API])
