"""Checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout of ``<out_dir>/checkpoints``::

    epoch_0003/          a DCP checkpoint (model + optimizer), meta.json, plan.txt
    step_00000120/       a mid-epoch checkpoint (``train.checkpoint_every_steps``)
    best, latest         one-line pointer files naming a checkpoint directory

Atomicity: a checkpoint is written into ``<name>.tmp`` by every rank; ``meta.json`` (the
training position: epoch, step within it, RNG states, history) is written last, after a
barrier, and is the commit marker; then the directory is renamed to ``<name>`` and the
pointer files are replaced (``os.replace``). A job killed at any point leaves either a
``.tmp`` directory, which no pointer names and :func:`latest_complete` never returns,
or a complete checkpoint. Loading refuses a directory without ``meta.json``.

Object storage (``train.out_dir: s3://...``, any ``pyarrow.fs`` URI): there is no atomic
rename, so a checkpoint is written in place under its final name, committed the same
way: rank 0 first deletes an older ``<name>/meta.json`` (so a re-saved name is never
taken as complete while it is being replaced) and the rest of ``<name>/``; each rank
writes its DCP files to a local scratch directory and uploads them; after a barrier rank
0 uploads ``meta.json`` last, then the pointer objects (a single-object PUT is atomic).
A job killed at any point leaves a prefix without ``meta.json``, which nothing takes as
complete. Loading downloads the checkpoint to a local scratch directory and reads it
like a local one (the same refusal to unpickle code).

Resharding: DCP stores sharded tensors with their global shapes and offsets, so a
checkpoint written by N ranks under one sharding plan loads on M ranks under another,
or into a plain unsharded model (export).

Trust: DCP stores its ``.metadata`` as a pickle, and a pickle can run any code. This
module never unpickles it with :mod:`pickle`'s defaults: :class:`SafeFileSystemReader`
admits only the checkpoint metadata classes (the way ``torch.load(weights_only=True)``
admits only tensors), and :class:`SafeLoadPlanner` loads non-tensor entries with
``weights_only=True``. Anything else is a :class:`CheckpointError`.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, Metadata
from torch.distributed.checkpoint.planner import ReadItem
from torch.optim import Optimizer
from torchrec.modules.mc_modules import MCHManagedCollisionModule

from interformer_rec.arrays import DataError
from interformer_rec.data.sources import filesystem, is_uri

Location = Union[Path, str]  # a local path, or a URI (str) of an object store

logger = logging.getLogger(__name__)

META = "meta.json"
POINTERS = ("best", "latest")


class CheckpointError(DataError):
    """A checkpoint file that is malformed or holds something other than checkpoint
    data (e.g. a ``.metadata`` pickle that would call a function)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (e.g. the disk is full); the message names the
    checkpoint and the free space. Earlier complete checkpoints and pointers are intact."""


LOW_SPACE = 64 << 20  # below this many free bytes a failed write is called a full disk


def _write_failure(root: Path, name: str, error: BaseException) -> CheckpointWriteError:
    """The :class:`CheckpointWriteError` for ``error`` while writing ``root/name``."""
    chain, e = [], error  # the error and its causes: DCP wraps a writer's OSError
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    try:
        free: Optional[int] = shutil.disk_usage(root).free
    except OSError:
        free = None
    full = any(isinstance(x, OSError) and x.errno == errno.ENOSPC for x in chain) or (
        free is not None and free < LOW_SPACE
    )
    reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return CheckpointWriteError(
        f"writing checkpoint {root / name} failed: "
        + ("the disk is full (" if full else "")
        + (f"{free / 2**20:.0f} MiB free on its file system" if free is not None else "free space unknown")
        + (")" if full else "")
        + f"; {type(error).__name__}: {reason}. Nothing was marked complete: the earlier checkpoints and the "
        "best/latest pointers are intact" + ("; free some space or set train.out_dir elsewhere, then resume" if full else "")
    )


# Everything a DCP ``.metadata`` pickle of torch 2.x refers to: its dataclasses, the
# tensor dtypes / layouts / memory formats they record, and the path type of a storage
# prefix. Nothing here runs code when unpickled.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "BytesStorageMetadata", "ChunkStorageMetadata", "Metadata", "MetadataIndex",
        "StorageMeta", "TensorProperties", "TensorStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "builtins" and name == "getattr":
            return self._enum_member
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointError(
            f"{self.path}: refers to {module}.{name}, which is not checkpoint metadata; "
            "refusing to load it (a checkpoint must come from a trusted source)"
        )

    def _enum_member(self, cls: Any, name: Any) -> Any:
        """``getattr(cls, name)`` only for a member of the metadata's memory-format enum:
        some Python builds (3.11.2 here) pickle an enum member as that call."""
        if cls is _MEM_FORMAT_ENCODING and isinstance(name, str) and name in cls.__members__:
            return cls[name]
        raise CheckpointError(
            f"{self.path}: calls getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}), which is not "
            "checkpoint metadata; refusing to load it (a checkpoint must come from a trusted source)"
        )


def read_dcp_metadata(path: Path | str) -> Metadata:
    """Unpickle a DCP ``.metadata`` file admitting only checkpoint metadata classes."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, str(path)).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint metadata file ({e})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata goes through :func:`read_dcp_metadata`
    (tensor data is already loaded with ``torch.load(weights_only=True)``)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_dcp_metadata(self._get_metadata_path(kwargs.get("rank")))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that loads non-tensor entries with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            why = next((line for line in str(e).splitlines() if "GLOBAL" in line), str(e).splitlines()[0])
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn}: refused, not plain data ({why})") from None
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_dcp_load(
    state: Dict[str, Any],
    ckpt: Path | str,
    reader: Optional[SafeFileSystemReader] = None,
    allow_partial_load: bool = False,
) -> None:
    """``dcp.load(state)`` from ``ckpt`` through the safe reader and planner (with
    ``allow_partial_load``, entries of ``state`` the checkpoint lacks keep their
    values); a refused entry on any rank is raised as its :class:`CheckpointError`."""
    from torch.distributed.checkpoint.api import CheckpointException

    planner = SafeLoadPlanner(allow_partial_load=allow_partial_load)
    try:
        dcp.load(
            state,
            storage_reader=reader or SafeFileSystemReader(str(ckpt)),
            planner=planner,
            no_dist=_single_process(),
        )
    except CheckpointException as e:
        refused = [exc for exc, _ in e.failures.values() if isinstance(exc, CheckpointError)]
        if refused:
            raise refused[0] from None
        raise


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def _unb64(blob: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(blob)), dtype=torch.uint8)


def rng_state(device: torch.device = torch.device("cpu")) -> Dict[str, str]:
    """This process's torch RNG states, as text for ``meta.json``: the CPU generator's
    and, on a CUDA ``device``, that GPU's (dropout on the GPU draws from it)."""
    state = {"cpu": _b64(torch.get_rng_state())}
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def set_rng_state(state: Union[str, Dict[str, str]], device: torch.device = torch.device("cpu")) -> None:
    """Restore an :func:`rng_state` (or the CPU-only text of older checkpoints). A CUDA
    ``device`` without a saved CUDA state (a checkpoint written on CPU) keeps its own,
    with a warning: the resumed run's GPU draws then differ from an unbroken one's."""
    if isinstance(state, str):
        state = {"cpu": state}
    torch.set_rng_state(_unb64(state["cpu"]))
    if device.type == "cuda":
        if "cuda" in state:
            torch.cuda.set_rng_state(_unb64(state["cuda"]), device)
        else:
            logger.warning("the checkpoint holds no CUDA RNG state (written on CPU): GPU random draws are not restored")


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _single_process() -> bool:
    """No process group, or one of one rank: DCP then runs without collectives.

    Why it matters: DCP gathers its plans with ``gather_object``. On gloo the gather
    runs in one of the process group's worker threads, whose copy of a large plan (tens of
    kB: every entry of a model and its optimizer) is an ATen ``parallel_for``, so libgomp
    gives that thread an OpenMP team of its own for the rest of the process. libgomp then
    manages more threads than there are CPUs and throttles the spin-wait of every team
    (``gomp_throttled_spin_count_var``): the training threads sleep and wake at each
    parallel region's barrier (~800 context switches a step instead of ~8) and a 2-core
    run trained at half speed after its first checkpoint (tests/test_checkpoint.py
    checks that a save and a load start no thread). With several ranks, launchers set
    ``OMP_NUM_THREADS=1`` (torchrun does), so gloo's threads run no team."""
    return not dist.is_initialized() or dist.get_world_size() == 1


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    root: Location,
    name: str,
    model: nn.Module,
    optimizer: Optional[Optimizer],
    meta: Dict[str, Any],
    pointers: tuple[str, ...] = ("latest",),
    files: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write checkpoint ``root/name`` collectively (every rank calls this) and point
    ``pointers`` (e.g. ``latest``, ``best``) at it. ``files`` (name -> text, e.g. the
    sharding plan) are written beside the tensors. Returns the checkpoint path."""
    if is_uri(str(root)):
        return _save_remote(str(root), name, model, optimizer, meta, pointers, files)
    root = Path(root)
    final, tmp = root / name, root / f"{name}.tmp"
    if _is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    try:
        dcp.save(_state(model, optimizer), checkpoint_id=str(tmp), no_dist=_single_process())
    except Exception as e:  # noqa: BLE001 - re-raised with the path and the free space
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        raise _write_failure(root, name, e) from e
    _barrier()
    if _is_main():
        try:
            for fname, text in (files or {}).items():
                _write_durably(tmp / fname, text)
            _write_durably(tmp / META, json.dumps(meta, indent=2, sort_keys=True))  # commit marker
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_failure(root, name, e) from e
        if final.exists():  # re-saving a name: never leave a pointer at a missing dir for long
            stale = root / f"{name}.stale"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
        os.replace(tmp, final)
        for p in pointers:
            _write_pointer(root / p, name)
        _prune(root)
    _barrier()
    return final


def _state(model: nn.Module, optimizer: Optional[Optimizer]) -> Dict[str, Any]:
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    return state


def _put(uri: str, text: str) -> None:
    """One object (a single PUT on an object store: atomic)."""
    fs, inner, _ = filesystem(uri)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def _get(uri: str) -> str:
    fs, inner, _ = filesystem(uri)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def _exists(uri: str) -> bool:
    fs, inner, _ = filesystem(uri)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def _save_remote(
    root: str,
    name: str,
    model: nn.Module,
    optimizer: Optional[Optimizer],
    meta: Dict[str, Any],
    pointers: tuple[str, ...],
    files: Optional[Mapping[str, str]],
) -> str:
    """:func:`save_checkpoint` to an object store (see the module docstring)."""
    root = root.rstrip("/")
    final = f"{root}/{name}"
    fs, inner, _ = filesystem(final)
    if _is_main():
        if _exists(f"{final}/{META}"):
            fs.delete_file(f"{inner}/{META}")  # uncommitted before anything of it changes
        fs.delete_dir_contents(inner, missing_dir_ok=True)
    _barrier()
    scratch = Path(tempfile.mkdtemp(prefix=f"interformer_rec_{name}_"))
    try:
        dcp.save(_state(model, optimizer), checkpoint_id=str(scratch), no_dist=_single_process())
        if _is_main():
            for fname, text in (files or {}).items():
                (scratch / fname).write_text(text)
        pafs.copy_files(str(scratch), inner, destination_filesystem=fs)  # this rank's files
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise CheckpointWriteError(
            f"writing checkpoint {final} failed: {type(e).__name__}: {str(e).strip()[:300]}. Nothing was marked "
            "complete: the earlier checkpoints and the best/latest pointers are intact"
        ) from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _barrier()
    if _is_main():
        _put(f"{final}/{META}", json.dumps(meta, indent=2, sort_keys=True))  # commit marker
        for p in pointers:
            _put(f"{root}/{p}", name + "\n")
        _prune_remote(root)
    _barrier()
    return final


def _prune_remote(root: str) -> None:
    """Delete the checkpoints under ``root`` that no pointer names."""
    fs, inner, _ = filesystem(root)
    keep = {_get(f"{root}/{p}").strip() for p in POINTERS if _exists(f"{root}/{p}")}
    for info in fs.get_file_info(pafs.FileSelector(inner)):
        if info.type == pafs.FileType.Directory and info.base_name not in keep:
            fs.delete_dir(info.path)


def _children(root: str) -> Iterator[str]:
    fs, inner, _ = filesystem(root)
    for info in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)):
        if info.type == pafs.FileType.Directory:
            yield f"{root.rstrip('/')}/{info.base_name}"


def _write_pointer(path: Path, target: str) -> None:
    tmp = path.with_suffix(".tmp")
    _write_durably(tmp, target + "\n")
    os.replace(tmp, path)


def _prune(root: Path) -> None:
    """Keep only the checkpoints some pointer names (and drop leftovers of killed
    writes: ``*.tmp``, ``*.stale``)."""
    keep = set()
    for p in POINTERS:
        if (root / p).exists():
            keep.add((root / p).read_text().strip())
    for d in root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def is_complete(ckpt: Location) -> bool:
    """A checkpoint directory whose write finished (it has its ``meta.json``)."""
    if is_uri(str(ckpt)):
        return not str(ckpt).endswith((".tmp", ".stale")) and _exists(f"{ckpt}/{META}")
    ckpt = Path(ckpt)
    return ckpt.is_dir() and not ckpt.name.endswith((".tmp", ".stale")) and (ckpt / META).exists()


def resolve(root: Location, pointer: str = "latest") -> Location:
    """The checkpoint directory a pointer names; a path that is already a checkpoint
    directory (has ``meta.json``) is returned as is."""
    if is_uri(str(root)):
        return _resolve_remote(str(root).rstrip("/"), pointer)
    root = Path(root)
    if (root / META).exists():
        return root
    p = root / pointer
    if not p.exists() and (root / "checkpoints" / pointer).exists():
        p = root / "checkpoints" / pointer
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint pointer {pointer!r} under {root}")
    ckpt = p.parent / p.read_text().strip()
    if not is_complete(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt} (named by {p}) is missing or incomplete")
    return ckpt


def _resolve_remote(root: str, pointer: str) -> str:
    if _exists(f"{root}/{META}"):
        return root
    p = f"{root}/{pointer}"
    if not _exists(p) and _exists(f"{root}/checkpoints/{pointer}"):
        p = f"{root}/checkpoints/{pointer}"
    if not _exists(p):
        raise FileNotFoundError(f"no checkpoint pointer {pointer!r} under {root}")
    ckpt = f"{p.rsplit('/', 1)[0]}/{_get(p).strip()}"
    if not is_complete(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt} (named by {p}) is missing or incomplete")
    return ckpt


def latest_complete(root: Location) -> Optional[Location]:
    """The checkpoint to resume from: the one ``latest`` names if it is complete, else
    the complete checkpoint with the highest ``global_step`` (a job killed between a
    rename and a pointer update), else ``None``."""
    try:
        return resolve(root, "latest")
    except FileNotFoundError:
        pass
    if is_uri(str(root)):
        done: list = [d for d in _children(str(root)) if is_complete(d)]
        return max(done, key=lambda d: read_meta(d).get("global_step", -1)) if done else None
    root = Path(root)
    if not root.is_dir():
        return None
    done = [d for d in root.iterdir() if is_complete(d)]
    if not done:
        return None
    return max(done, key=lambda d: read_meta(d).get("global_step", -1))


def read_meta(ckpt: Location) -> Dict[str, Any]:
    """The checkpoint's ``meta.json`` (a JSON object with its ``global_step``)."""
    remote = is_uri(str(ckpt))
    path: Location = f"{ckpt}/{META}" if remote else Path(ckpt) / META
    try:
        meta = json.loads(_get(str(path)) if remote else Path(path).read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("global_step"), int):
        raise CheckpointError(f"{path}: not a checkpoint meta.json (a JSON object with an integer global_step)")
    return meta


def check_managed_layout(ckpt: Path, model: nn.Module, loaded: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose managed-collision tables cannot be loaded by this
    plan, before TorchRec's own assertion would.

    A managed-collision table's row shards each hold the ids of their own range of the
    id space (``Schema`` ``buckets``), with rows inside the shard; the checkpoint
    records the row segments its shards had (``_output_segments_tensor``). A shard of
    this plan can be rebuilt only if its row range starts and ends on saved segment
    boundaries: the same shards as at save time, or one shard holding them all (one
    rank, export). Splitting a saved shard would put ids on ranks that do not own
    their rows."""
    for m in model.modules():
        if not isinstance(m, MCHManagedCollisionModule):
            continue
        suffix = f"_managed_collision_modules.{m._name}._output_segments_tensor"
        saved = next((v for k, v in loaded.items() if k.endswith(suffix)), None)
        if saved is None:
            continue
        bounds = [int(x) for x in saved.tolist() if x >= 0]
        start, end = m._output_global_offset, m._output_global_offset + m._zch_size
        if start not in bounds or end not in bounds:
            raise CheckpointError(
                f"{ckpt}: managed-collision table {m._name!r} was saved in row shards with boundaries "
                f"{bounds}; this plan's shard [{start}, {end}) splits one of them. Load it with the "
                f"world size it was trained with ({len(bounds) - 1} row-wise shards), or on one rank"
            )


def load_checkpoint(ckpt: Location, model: nn.Module, optimizer: Optional[Optimizer] = None) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` (sharded or not, any world size and plan) and,
    if given, ``optimizer``. Returns its meta.

    Every model entry must be in the checkpoint. An optimizer entry that is not (its
    table's kernel changed with the plan, e.g. a table that was data_parallel, whose
    Adagrad state is ``sum``, is now sharded, whose fused state is ``momentum1``) keeps
    its fresh value (DCP's ``allow_partial_load``), with a warning naming it."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    from interformer_rec.train.dist import init_optimizer_state

    if not is_complete(ckpt):
        raise FileNotFoundError(f"{ckpt}: not a complete checkpoint (no {META})")
    if is_uri(str(ckpt)):  # read like a local checkpoint, from a scratch copy
        scratch = Path(tempfile.mkdtemp(prefix="interformer_rec_load_"))
        try:
            fs, inner, _ = filesystem(str(ckpt))
            pafs.copy_files(inner, str(scratch), source_filesystem=fs)
            return load_checkpoint(scratch, model, optimizer)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    ckpt = Path(ckpt)
    meta = read_meta(ckpt)
    reader = SafeFileSystemReader(str(ckpt))
    saved = reader.read_metadata().state_dict_metadata
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        init_optimizer_state(optimizer)  # type: ignore[arg-type]
        state["optim"] = optimizer.state_dict()
    missing = sorted(k for k in flatten_state_dict(state)[0] if k not in saved)  # DCP's entry names
    bad = [k for k in missing if k.startswith("model.")]
    if bad:
        raise KeyError(f"{ckpt}: the checkpoint has no {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    if missing and _is_main():
        logger.warning("%s: %d optimizer entries not in the checkpoint, kept fresh: %s", ckpt, len(missing), missing[:8])
    safe_dcp_load(state, ckpt, reader, allow_partial_load=True)  # tensors in place, other values set in `state`
    check_managed_layout(ckpt, model, state["model"])
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    return meta
