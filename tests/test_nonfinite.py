"""A training loss that turns non-finite stops `train` with exit 3 and writes no
checkpoint of that epoch (issue 33, item 2): no NaN model is ever marked latest or best."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from interformer_rec.cli import main
from interformer_rec.config import SyntheticConfig
from interformer_rec.data.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def test_a_non_finite_loss_exits_3_before_any_checkpoint(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    generate(SyntheticConfig(num_users=60, num_items=40, num_categories=5, max_len=6,
                             rows={"train": 512, "valid": 128}, row_group_size=128, seed=2), data)
    train = pq.read_table(data / "train.parquet")
    dense = train.column("dense_0").to_numpy().copy()
    dense[300] = 3e38  # finite in float32; the per-field dense token overflows to inf
    pq.write_table(train.set_column(train.schema.get_field_index("dense_0"), "dense_0", pa.array(dense)),
                   data / "train.parquet", row_group_size=128)
    run = tmp_path / "run"
    rc = main(["train", "--config", str(ROOT / "configs" / "synthetic.yaml"),
               "--set", f"data.train={data / 'train.parquet'}", "--set", f"data.valid={data / 'valid.parquet'}",
               "--set", "data.test=null", "--set", f"train.out_dir={run}", "--set", "train.progress=false",
               "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "model.embedding_dim=8"])
    assert rc == 3
    assert "non-finite values" in capsys.readouterr().err
    ckpts = run / "checkpoints"
    assert not (ckpts / "latest").exists() and not (ckpts / "best").exists()
    assert not ckpts.exists() or not [p for p in ckpts.iterdir() if (p / "meta.json").exists()]
    assert np.isfinite(dense).all()
