"""Data sets by path, folder, glob, hive partitions and URI, read from the local disk
and from a real S3-compatible server (moto's) started on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from interformer_rec.arrays import DataError
from interformer_rec.data.reader import ParquetBatchReader
from interformer_rec.data.sources import resolve_paths
from test_streaming import SCHEMA, rows_of, write_rows

BUCKET = "interformer-rec-test"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hive(tmp_path_factory) -> Path:
    """``log/date=D/part-K.parquet`` for three days, beside files no reader should take."""
    root = tmp_path_factory.mktemp("hive") / "log"
    start = 0
    for day, sizes in (("2026-12-01", (40, 25)), ("2026-12-02", (30,)), ("2026-12-03", (50, 10))):
        for k, n in enumerate(sizes):
            (root / f"date={day}").mkdir(parents=True, exist_ok=True)
            write_rows(root / f"date={day}" / f"part-{k}.parquet", start, n, row_group_size=16)
            start += n
    (root / "_SUCCESS").write_text("")
    (root / "date=2026-12-02" / ".part-0.parquet.crc").write_text("x")
    (root / "README.txt").write_text("not data")
    return root


def test_a_folder_is_read_recursively_in_sorted_order_without_hidden_or_other_files(hive: Path) -> None:
    files = resolve_paths(hive)
    assert [str(Path(f).relative_to(hive)) for f in files] == [
        "date=2026-12-01/part-0.parquet", "date=2026-12-01/part-1.parquet", "date=2026-12-02/part-0.parquet",
        "date=2026-12-03/part-0.parquet", "date=2026-12-03/part-1.parquet",
    ]
    rows = [r for b in ParquetBatchReader(hive, SCHEMA, 64) for r in b.groups.tolist()]
    assert rows == list(range(155))


@pytest.mark.parametrize(
    "filters, days",
    [
        ([["date", "=", "2026-12-02"]], ["2026-12-02"]),
        ([["date", ">=", "2026-12-02"]], ["2026-12-02", "2026-12-03"]),
        ([["date", "in", ["2026-12-01", "2026-12-03"]]], ["2026-12-01", "2026-12-03"]),
        ([["date", ">", "2026-12-01"], ["date", "<", "2026-12-03"]], ["2026-12-02"]),
    ],
)
def test_partition_filters_select_the_days(hive: Path, filters, days) -> None:
    files = resolve_paths(hive, filters)
    assert sorted({Path(f).parent.name.split("=")[1] for f in files}) == days


def test_a_glob_reads_what_it_matches(hive: Path) -> None:
    assert len(resolve_paths(f"{hive}/date=2026-12-0[13]/*.parquet")) == 4
    assert len(resolve_paths(f"{hive}/*/part-1.parquet")) == 2
    assert len(resolve_paths(f"{hive.parent}/**/part-0.parquet")) == 3
    assert resolve_paths(f"file://{hive}/date=2026-12-02/*.parquet") == [str(hive / "date=2026-12-02" / "part-0.parquet")]


@pytest.mark.parametrize(
    "what, message",
    [
        ("missing", "no such file or directory"),
        ("glob", "no file matches"),
        ("filter", "is in a partition that data.filters"),
        ("scheme", "no filesystem for this URI"),
    ],
)
def test_paths_that_hold_no_data_are_named(hive: Path, what: str, message: str) -> None:
    path, filters = {
        "missing": (hive / "date=2026-12-09", None),
        "glob": (f"{hive}/*/*.orc", None),
        "filter": (hive, [["date", "=", "2027-01-01"]]),
        "scheme": ("nosuchfs://bucket/log", None),
    }[what]
    with pytest.raises(DataError, match=message) as e:
        resolve_paths(path, filters)
    assert str(e.value).startswith(str(path))


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(hive: Path) -> Iterator[str]:
    """A moto S3 server on loopback holding ``hive`` under ``s3://BUCKET/log/``; the
    endpoint and credentials in the environment, as a user's job would have them."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                               allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        pafs.copy_files(str(hive), f"{BUCKET}/log", destination_filesystem=fs)
        yield f"s3://{BUCKET}/log"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _batches(path, **kw) -> List[List[int]]:
    return rows_of(ParquetBatchReader(path, SCHEMA, 24, shuffle=True, seed=4, shuffle_window=50, **kw))


def test_s3_reads_the_same_batches_as_the_local_disk(hive: Path, s3: str) -> None:
    files = resolve_paths(s3)
    assert files[0] == f"{s3}/date=2026-12-01/part-0.parquet" and len(files) == 5
    assert _batches(s3) == _batches(hive)
    filters = [["date", "!=", "2026-12-01"]]
    assert _batches(s3, filters=filters) == _batches(hive, filters=filters)
    assert _batches(f"{s3}/*/part-0.parquet") == _batches(f"{hive}/*/part-0.parquet")


def test_a_bad_row_on_s3_is_named_by_its_uri(tmp_path: Path, s3: str) -> None:
    import pyarrow as pa

    table = pq.read_table(resolve_paths(f"{s3}/date=2026-12-02/part-0.parquet")[0].replace("s3://", ""),
                          filesystem=pafs.FileSystem.from_uri(s3)[0])
    y = table.column("y").to_numpy().copy()
    y[7] = 3
    bad = f"{s3}/bad/part-0.parquet"
    pq.write_table(table.set_column(0, "y", pa.array(y, pa.int8())), bad.replace("s3://", ""),
                   filesystem=pafs.FileSystem.from_uri(s3)[0], row_group_size=16)
    with pytest.raises(DataError, match=rf"^{bad}, column 'y', row 7: "):
        list(ParquetBatchReader(bad, SCHEMA, 8))


def test_the_trainer_trains_from_s3_as_from_the_local_disk(tmp_path_factory, s3: str) -> None:
    """data.train / data.valid as s3:// URIs (one folder, split by data.filters): the
    same steps and validation as the local files."""
    from interformer_rec.config import SyntheticConfig
    from interformer_rec.data.synthetic import generate
    from test_train import _config
    from interformer_rec.train.trainer import Trainer

    local = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(num_users=100, num_items=50, num_categories=5,
                             rows={"train": 2000, "valid": 500, "test": 500}, seed=1), local)
    fs, inner = pafs.FileSystem.from_uri(s3)
    for split in ("train", "valid"):
        pafs.copy_files(str(local / f"{split}.parquet"), f"{inner}/synthetic/split={split}/part-0.parquet",
                        destination_filesystem=fs)
    run = ("train.epochs=1", "train.max_steps_per_epoch=6", "data.test=null", "model.interformer.dropout=0.0")
    on_disk = Trainer(_config(local, tmp_path_factory.mktemp("out"), *run)).fit()
    on_s3 = Trainer(_config(local, tmp_path_factory.mktemp("out"), *run, f"data.train={s3}/synthetic",
                            f"data.valid={s3}/synthetic",
                            'data.filters={train: [[split, "=", train]], valid: [[split, "=", valid]]}')).fit()
    assert on_s3["step_losses"] == on_disk["step_losses"]
    assert on_s3["history"][0]["valid_auc"] == on_disk["history"][0]["valid_auc"]


# --------------------------------------------------------------------------- run outputs on S3


def test_train_checkpoint_resume_and_evaluate_with_out_dir_on_s3(tmp_path_factory, s3: str, monkeypatch) -> None:
    """train.out_dir: s3://...: checkpoints, pointers and run files land there; a job
    killed while committing a checkpoint leaves it incomplete and resumes from the one
    before; a resumed job continues the history; evaluate scores the best checkpoint;
    a crafted .metadata on S3 is refused before it runs."""
    import pickle

    from interformer_rec.config import SyntheticConfig
    from interformer_rec.data.synthetic import generate
    from interformer_rec.train import checkpoint
    from interformer_rec.train.evaluate import main as evaluate
    from interformer_rec.train.trainer import Trainer
    from test_checkpoint import _RunsCode
    from test_train import _config

    local = tmp_path_factory.mktemp("synthetic_out")
    generate(SyntheticConfig(num_users=100, num_items=50, num_categories=5,
                             rows={"train": 1500, "valid": 500, "test": 500}, seed=2), local)
    out = f"{s3}-runs/run1"
    run = ("train.max_steps_per_epoch=4", "data.test=null", "model.interformer.dropout=0.0", f"train.out_dir={out}")

    class Killed(Exception):
        pass

    put = checkpoint._put

    def dies_committing_epoch_2(uri: str, text: str) -> None:
        if uri.endswith("epoch_0002/meta.json"):
            raise Killed
        put(uri, text)

    monkeypatch.setattr(checkpoint, "_put", dies_committing_epoch_2)
    with pytest.raises(Killed):
        Trainer(_config(local, Path("unused"), *run, "train.epochs=3")).fit()
    monkeypatch.setattr(checkpoint, "_put", put)
    ckpts = f"{out}/checkpoints"
    assert checkpoint.is_complete(f"{ckpts}/epoch_0001") and not checkpoint.is_complete(f"{ckpts}/epoch_0002")
    assert checkpoint.latest_complete(ckpts) == f"{ckpts}/epoch_0001"

    resumed = Trainer(_config(local, Path("unused"), *run, "train.epochs=3", "train.resume=true"))
    result = resumed.fit()
    assert [h["epoch"] for h in result["history"]] == [0, 1, 2] and resumed.global_step == 12
    assert checkpoint.latest_complete(ckpts) == f"{ckpts}/epoch_0002"
    fs, inner = pafs.FileSystem.from_uri(out)
    names = {i.path[len(inner) + 1:] for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True))}
    assert {"config.yaml", "plan.txt", "metrics.json", "checkpoints/latest", "checkpoints/best",
            "checkpoints/epoch_0002/meta.json", "checkpoints/epoch_0002/.metadata"} <= names
    assert any(n.startswith("tensorboard/") for n in names)

    assert evaluate(["--config", str(ROOT / "configs" / "synthetic.yaml"), "--split", "valid",
                     *sum((["--set", o] for o in _config_overrides(local, run)), [])]) == 0
    with fs.open_input_stream(f"{inner}/eval_valid.json") as f:
        assert abs(json.loads(f.read())["auc"] - result["valid"]["auc"]) < 1e-6

    from interformer_rec.export.export import load_model

    model, _, meta, ckpt = load_model(out)  # what export reads: the run's best, from S3
    assert ckpt == checkpoint.resolve(ckpts, "best") and meta["global_step"] > 0 and not model.training

    marker = tmp_path_factory.mktemp("marker") / "ran"
    target = checkpoint.resolve(ckpts, "best")
    md_path = f"{target.split('://', 1)[1]}/.metadata"
    with fs.open_input_stream(md_path) as f:
        md = pickle.loads(f.read())
    md.planner_data = _RunsCode(marker)
    with fs.open_output_stream(md_path) as f:
        f.write(pickle.dumps(md))
    with pytest.raises(checkpoint.CheckpointError, match=r"system.*not checkpoint metadata"):
        checkpoint.load_checkpoint(target, resumed.dmp)
    assert not marker.exists()


def _config_overrides(local: Path, run) -> List[str]:
    return [f"data.train={local / 'train.parquet'}", f"data.valid={local / 'valid.parquet'}", "train.progress=false",
            "model.embedding_dim=8", "model.interformer.num_layers=1", "model.interformer.interaction_mlp=[32]",
            "model.interformer.over_arch=[32]", *run]
