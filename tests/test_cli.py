"""The CLI's console policy: third-party noise is dropped, the project's own warnings
and log lines are not."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from interformer_rec.cli import main
from interformer_rec.console import quiet


def test_quiet_keeps_project_log_lines_and_drops_third_party(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as seen:
        quiet()
        warnings.warn("ShardedTensor is deprecated", FutureWarning)
    assert seen == []

    logging.getLogger("interformer_rec.train.trainer").info("rows trained again")
    logging.getLogger("interformer_rec.train.checkpoint").warning("optimizer entries kept fresh")
    logging.getLogger("torchrec.distributed.planner").warning("sharding plan table")
    logging.getLogger("fbgemm_gpu").warning("kernel fallback")
    logging.getLogger("torch.fx._symbolic_trace").warning("is_fx_tracing will return true")
    assert [r.getMessage() for r in caplog.records] == ["rows trained again", "optimizer entries kept fresh"]


def test_model_config_error_is_exit_2(capsys: pytest.CaptureFixture) -> None:
    config = Path(__file__).parents[1] / "configs" / "synthetic.yaml"
    code = main(["train", "--config", str(config), "--set", "model.interformer.num_cls=0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "num_cls" in err and "Traceback" not in err
