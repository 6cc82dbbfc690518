"""Checkpoint atomicity and pointers, the reader's resume position, and the torchx
components (one process, no process group; the multi-rank cases are in
tests/test_distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from interformer_rec.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))


def _save(root: Path, name: str, seed: int, step: int, pointers=("latest",)) -> nn.Module:
    m = _model(seed)
    checkpoint.save_checkpoint(root, name, m, None, {"global_step": step}, pointers=pointers, files={"plan.txt": "p"})
    return m


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pointers_prune_and_load(tmp_path: Path) -> None:
    m1 = _save(tmp_path, "epoch_0000", 1, 10, ("latest", "best"))
    m2 = _save(tmp_path, "epoch_0001", 2, 20)
    assert checkpoint.resolve(tmp_path, "latest").name == "epoch_0001"
    assert checkpoint.resolve(tmp_path, "best").name == "epoch_0000"
    assert (tmp_path / "epoch_0001" / "plan.txt").read_text() == "p"
    _save(tmp_path, "epoch_0002", 3, 30)  # epoch_0001 is named by no pointer any more
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch_0000", "epoch_0002"]
    fresh = _model(9)
    assert checkpoint.load_checkpoint(checkpoint.resolve(tmp_path, "best"), fresh)["global_step"] == 10
    assert _same(fresh, m1) and not _same(fresh, m2)


def test_a_write_killed_before_its_commit_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _save(tmp_path, "step_00000004", 1, 4)

    real = checkpoint._write_durably

    def crash(path: Path, text: str) -> None:
        if path.name == checkpoint.META:
            raise KeyboardInterrupt("killed")  # the process dies before the commit marker
        real(path, text)

    monkeypatch.setattr(checkpoint, "_write_durably", crash)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, "step_00000006", 2, 6)
    monkeypatch.undo()
    assert (tmp_path / "step_00000006.tmp").is_dir()  # tensors written, no meta.json
    assert checkpoint.resolve(tmp_path, "latest").name == "step_00000004"
    assert checkpoint.latest_complete(tmp_path).name == "step_00000004"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "step_00000006.tmp", _model(0))
    fresh = _model(9)
    checkpoint.load_checkpoint(checkpoint.latest_complete(tmp_path), fresh)
    assert _same(fresh, good)
    _save(tmp_path, "step_00000008", 3, 8)  # the next save clears the leftover
    assert not (tmp_path / "step_00000006.tmp").exists()


def test_resume_falls_back_to_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert checkpoint.latest_complete(tmp_path / "none") is None
    _save(tmp_path, "step_00000002", 1, 2)
    _save(tmp_path, "step_00000004", 2, 4, ("latest", "best"))
    (tmp_path / "latest").write_text("step_00000006\n")  # renamed dir lost, pointer updated
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        checkpoint.resolve(tmp_path, "latest")
    assert checkpoint.latest_complete(tmp_path).name == "step_00000004"


def test_reader_resume_position_is_the_same_rows_on_any_world_size() -> None:
    """start_batch=k on 1 rank with batch 2B gives, batch by batch, the union of what
    2 ranks with batch B give with start_batch=k."""
    from interformer_rec.config import SyntheticConfig, load_config
    from interformer_rec.data.reader import ParquetBatchReader
    from interformer_rec.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(SyntheticConfig(num_users=50, num_items=40, rows={"train": 700}, row_group_size=128), Path(tmp))
        schema = load_config("configs/synthetic.yaml").data.schema
        path = Path(tmp) / "train.parquet"
        kw = dict(shuffle=True, seed=5, drop_last=True, shuffle_window=256)

        def rd(batch: int, rank: int, world: int, start: int) -> ParquetBatchReader:
            r = ParquetBatchReader(path, schema, batch, rank=rank, world_size=world, start_batch=start, **kw)
            r.set_epoch(3)
            return r

        full = list(rd(64, 0, 1, 0))
        for k in (0, 4, len(full)):
            one = list(rd(64, 0, 1, k))
            r0, r1 = list(rd(32, 0, 2, k)), list(rd(32, 1, 2, k))
            assert len(one) == len(r0) == len(r1) == len(rd(64, 0, 1, k)) == len(full) - k
            for a, b, c, f in zip(one, r0, r1, full[k:]):
                assert torch.equal(a.labels, torch.cat([b.labels, c.labels]))
                assert torch.equal(a.dense, f.dense)


def test_torchx_components_build_and_parse() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from launchers import components
    finally:
        sys.path.remove(str(ROOT))
    app = components.train("train.epochs=1", config="c.yaml", nnodes=2, nproc_per_node=4, gpu=4)
    role = app.roles[0]
    cmd = " ".join(role.args)
    assert role.num_replicas == 2 and role.resource.gpu == 4
    assert "--nnodes 2 --nproc_per_node 4" in cmd
    assert "-m interformer_rec.cli train --config c.yaml --set train.epochs=1 --set train.resume=true" in cmd
    ev = " ".join(components.evaluate(config="c.yaml", checkpoint="ck", split="valid").roles[0].args)
    assert "-m interformer_rec.train.evaluate --config c.yaml --split valid --checkpoint ck" in ev
    bench = " ".join(components.benchmark(nproc_per_node=2).roles[0].args)
    assert "benchmarks/scaling.py --worker" in bench
    with pytest.raises(ValueError, match="dotted.key=value"):
        components.train("oops")
    # torchx's own CLI parses the component file (a dry run: nothing is launched)
    torchx = Path(sys.executable).parent / "torchx"
    out = subprocess.run(
        [str(torchx), "run", "--dryrun", "--workspace", "", "--scheduler", "local_cwd",
         "launchers/components.py:train", "--nproc_per_node", "2", "--config", "configs/synthetic.yaml",
         "--", "train.epochs=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PATH": f"{torchx.parent}:{os.environ.get('PATH', '')}"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--nproc_per_node 2" in out.stdout and "train.epochs=1" in out.stdout


class _RunsCode:
    """Unpickling this calls ``os.system`` (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_metadata_pickle_is_refused_before_it_runs(tmp_path: Path) -> None:
    import pickle

    _save(tmp_path, "epoch_0000", 1, 10)
    ckpt = checkpoint.resolve(tmp_path, "latest")
    marker = tmp_path / "ran"
    md = checkpoint.read_dcp_metadata(ckpt / ".metadata")  # the real one loads
    md.planner_data = _RunsCode(marker)  # hidden inside a valid Metadata
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(checkpoint.CheckpointError, match=r"system.*not checkpoint metadata"):
        checkpoint.load_checkpoint(ckpt, _model(0))
    assert not marker.exists()
    (ckpt / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint metadata"):
        checkpoint.load_checkpoint(ckpt, _model(0))


class _ByGetattr:
    """Pickles as ``getattr(cls, name)``, as Python 3.11.2 pickles an enum member."""

    def __init__(self, cls, name: str) -> None:
        self.cls, self.name = cls, name

    def __reduce__(self):
        return (getattr, (self.cls, self.name))


def test_metadata_with_enum_members_pickled_by_getattr_loads_and_other_getattr_is_refused(tmp_path: Path) -> None:
    import pickle
    from pathlib import PosixPath

    from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING

    _save(tmp_path, "epoch_0000", 1, 10)
    ckpt = checkpoint.resolve(tmp_path, "latest")
    md = checkpoint.read_dcp_metadata(ckpt / ".metadata")
    md.planner_data = _ByGetattr(_MEM_FORMAT_ENCODING, "TORCH_CONTIGUOUS_FORMAT")
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    assert checkpoint.read_dcp_metadata(ckpt / ".metadata").planner_data is _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT
    md.planner_data = _ByGetattr(PosixPath, "home")
    (ckpt / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(checkpoint.CheckpointError, match=r"getattr\(PosixPath, 'home'\).*not checkpoint metadata"):
        checkpoint.read_dcp_metadata(ckpt / ".metadata")


def test_a_crafted_non_tensor_entry_is_refused(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "ran"
    dcp.save({"w": torch.ones(2), "extra": _RunsCode(marker)}, checkpoint_id=str(tmp_path / "c"))
    state = {"w": torch.zeros(2), "extra": None}
    with pytest.raises(checkpoint.CheckpointError, match="entry extra: refused.*posix.system"):
        checkpoint.safe_dcp_load(state, tmp_path / "c")
    assert not marker.exists()


def test_a_malformed_meta_json_is_a_clear_error(tmp_path: Path) -> None:
    _save(tmp_path, "epoch_0000", 1, 10)
    ckpt = checkpoint.resolve(tmp_path, "latest")
    for text, match in (("{", "not valid JSON"), ("[1, 2]", "integer global_step"), ('{"global_step": "x"}', "integer")):
        (ckpt / "meta.json").write_text(text)
        with pytest.raises(checkpoint.CheckpointError, match=match):
            checkpoint.load_checkpoint(ckpt, _model(0))


def _optimizer(model: nn.Module):
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

    params = dict(model.named_parameters())
    return CombinedOptimizer([KeyedOptimizerWrapper(params, lambda p: torch.optim.Adagrad(p, lr=0.1))])


def test_optimizer_entries_missing_from_a_checkpoint_keep_their_fresh_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = _save(tmp_path, "epoch_0000", 1, 10)  # model only: every optimizer entry is missing
    fresh = _model(0)
    opt = _optimizer(fresh)
    with caplog.at_level("WARNING", logger="interformer_rec.train.checkpoint"):
        checkpoint.load_checkpoint(checkpoint.resolve(tmp_path), fresh, opt)
    assert _same(fresh, saved)
    assert "optimizer entries not in the checkpoint, kept fresh" in caplog.text and "optim.state" in caplog.text
    assert all(torch.equal(s["sum"], torch.zeros_like(s["sum"])) for s in opt.state.values())


def test_a_model_entry_missing_from_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    _save(tmp_path, "epoch_0000", 1, 10)
    bigger = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1), nn.Linear(1, 1))
    with pytest.raises(KeyError, match=r"the checkpoint has no \['model\.2\.bias', 'model\.2\.weight'\]"):
        checkpoint.load_checkpoint(checkpoint.resolve(tmp_path), bigger)


def test_a_checkpoint_with_its_optimizer_restores_both(tmp_path: Path) -> None:
    model = _model(1)
    opt = _optimizer(model)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    checkpoint.save_checkpoint(tmp_path, "epoch_0000", model, opt, {"global_step": 1})
    fresh = _model(0)
    fresh_opt = _optimizer(fresh)
    checkpoint.load_checkpoint(checkpoint.resolve(tmp_path), fresh, fresh_opt)
    assert _same(fresh, model)
    for key, s in opt.state_dict()["state"].items():
        assert torch.equal(fresh_opt.state_dict()["state"][key]["sum"], s["sum"]), key


_THREADS_SCRIPT = r"""
import os, sys, torch, torch.distributed as dist
from torch import nn
from interformer_rec.train import checkpoint
import torch.distributed.checkpoint as dcp

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
threads = lambda: len(os.listdir("/proc/self/task"))
# a plan of a few hundred entries: gloo copies a gather of it with a parallel_for
model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(300)])
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
opt = CombinedOptimizer([KeyedOptimizerWrapper(dict(model.named_parameters()), lambda p: torch.optim.Adam(p))])
model(torch.ones(2, 8)).sum().backward()
opt.step()
torch.ones(1 << 16).add_(1)  # the training thread's own OpenMP team exists already
before = threads()
if sys.argv[3] == "raw":
    dcp.save({"model": model.state_dict()}, checkpoint_id=sys.argv[1] + "/raw")
else:
    ckpt = checkpoint.save_checkpoint(sys.argv[1], "epoch_0000", model, opt, {"global_step": 1})
    checkpoint.load_checkpoint(ckpt, model, opt)
print(threads() - before)
"""


def _new_threads(tmp_path: Path, mode: str, port: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT, str(tmp_path), str(port), mode],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
def test_a_single_rank_save_and_load_start_no_thread(tmp_path: Path) -> None:
    """The cause of the half-speed epochs after a checkpoint (checkpoint._single_process):
    DCP's gather on a 1-rank gloo group gave a gloo worker thread an OpenMP team for the
    rest of the process. Our save and load start no thread; a raw ``dcp.save`` on the
    same group does (the check can fail)."""
    assert _new_threads(tmp_path, "raw", 29611) > 0, "gloo no longer starts a thread: _single_process may go"
    assert _new_threads(tmp_path, "ours", 29612) == 0
