"""The README's "Bring your own data" path, end to end on a planted CSV log:
docs/examples/csv_to_parquet.py -> configs/your_log.yaml -> train -> evaluate -> export
-> predict -> the README's request (one pooled feature, raw ids hashed, max_len 50)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from interformer_rec.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _write_log(path: Path, rows: int, seed: int = 0) -> None:
    """Raw (large, unhashed) ids; a click is likely when the item is in the history."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,cat_id,price,hist_item_ids,hist_cat_ids,time,clicked"]
    for t in range(rows):
        user, item = int(rng.integers(200)), 10**12 + int(rng.integers(150))
        hist = [10**12 + int(h) for h in rng.integers(150, size=int(rng.integers(0, 9)))]
        if rng.random() < 0.5:
            hist.append(item)
        p = 0.85 if item in hist else 0.15
        cats = " ".join(str(h % 20) for h in hist)
        lines.append(f"{user},{item},{item % 20},{rng.random():.3f},{' '.join(map(str, hist))},{cats},{t},{int(rng.random() < p)}")
    path.write_text("\n".join(lines) + "\n")


README_REQUEST = {
    "user": {"user_id": 17, "hist_item_ids": [881, 90], "hist_cat_ids": [3, 3]},
    "candidates": [{"item_id": 2045, "cat_id": 3, "price": 12.5}, {"item_id": 7, "cat_id": 1, "price": 3.0}],
}


def test_csv_log_to_parquet_to_train_to_evaluate_to_serve(tmp_path: Path) -> None:
    log, data, run = tmp_path / "log.csv", tmp_path / "data", tmp_path / "run"
    _write_log(log, 6000)
    subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/csv_to_parquet.py"), str(log), "--out", str(data),
         "--lists", "hist_item_ids", "hist_cat_ids"],
        check=True, capture_output=True,
    )
    train = pq.read_table(data / "train.parquet")
    assert train.num_rows == 4800 and train.schema.field("hist_item_ids").type.value_type == pa.int64()
    assert pq.read_table(data / "test.parquet").column("time").to_pylist()[0] == 5400  # the latest 10 %

    sets = [f"data.{s}={data / (s + '.parquet')}" for s in ("train", "valid", "test")] + [
        f"train.out_dir={run}", "train.progress=false", "train.epochs=3", "train.dense_optimizer.lr=0.005", "model.embedding_dim=8",
        "model.interformer.interaction_mlp=[16]", "model.interformer.over_arch=[16]",
    ]
    config = str(ROOT / "configs/your_log.yaml")
    assert main(["train", "--config", config, *[a for s in sets for a in ("--set", s)]]) == 0
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["auc"] > 0.75, test  # the planted signal: 0.85 vs 0.15 click rate

    assert main(["evaluate", "--config", config, *[a for s in sets for a in ("--set", s)]]) == 0
    evaluated = json.loads((run / "eval_test.json").read_text())
    assert evaluated["auc"] == pytest.approx(test["auc"], abs=1e-6), (evaluated, test)

    models, scores = tmp_path / "models", tmp_path / "scores.parquet"
    assert main(["export", "--checkpoint", str(run), "--out", str(models), "--parity-rows", "256"]) == 0
    parity = json.loads((models / "manifest.json").read_text())["parity"]
    assert parity["cases"]["heldout/batch_1"]["rows"] == 16 and parity["max_abs_diff_logit"] < 1e-5, parity
    from interformer_rec.serving.predictor import Predictor

    predictor = Predictor(models)
    summary = predictor.predict_parquet(data / "test.parquet", scores)
    assert pq.read_table(scores).num_rows == 600
    assert summary["metrics"]["clicked"]["auc"] == pytest.approx(test["auc"], abs=1e-4), (summary, test)
    response = predictor.predict_request(README_REQUEST)
    assert len(response["scores"]["clicked"]) == 2, response
