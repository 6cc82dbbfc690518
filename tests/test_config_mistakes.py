"""Config and CLI mistakes end in one line naming the key, exit 2 (issue 33, items 8
and 9); a YAML alias bomb and an endless `base` are refused at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from interformer_rec.cli import main
from interformer_rec.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic.yaml")


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.batch_size=[1", "train.batch_size"),
        ("train.batch_size.x=1", "train.batch_size is a value"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.batch_size=-4", "train.batch_size"),
        ("train.log_every=0", "train.log_every"),
        ("train.epochs=0", "train.epochs"),
        ("train.dense_optimizer.lr=-0.001", "train.dense_optimizer.lr"),
        ("train.embedding_optimizer.lr=0", "train.embedding_optimizer.lr"),
        ("data.schema.tables=[{name: user, num_embeddings: 0}]", "schema.tables[user].num_embeddings"),
    ],
)
def test_a_bad_override_exits_2_naming_the_key(override: str, key: str, capsys) -> None:
    assert main(["train", "--config", CONFIG, "--set", override]) == 2
    err = capsys.readouterr().err
    assert key in err and len(err.strip().splitlines()) == 1, err


def test_bad_config_files_exit_2(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("train: {out_dir: caf\xe9}\n".encode("latin-1"))
    listed = tmp_path / "listed.yaml"
    listed.write_text("base: [1, 2]\n")
    for path, message in ((tmp_path, "not a file"), (binary, "not UTF-8"), (listed, "base=[1, 2]")):
        assert main(["train", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    out_file = tmp_path / "out"
    out_file.write_text("x")
    assert main(["train", "--config", CONFIG, "--set", f"train.out_dir={out_file}"]) == 2
    assert "train.out_dir" in capsys.readouterr().err


def test_an_alias_bomb_and_dev_zero_are_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    bomb.write_text("\n".join(lines) + "\ntrain: {batch_size: *i}\n")
    assert len(bomb.read_bytes()) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases are not accepted"):
        load_config(bomb)
    zero = tmp_path / "zero.yaml"
    zero.write_text("base: /dev/zero\n")
    with pytest.raises(ConfigError, match="not a file|larger than"):
        load_config(zero)
    assert time.perf_counter() - start < 1.0
