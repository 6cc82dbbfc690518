"""Checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout of ``<out_dir>/checkpoints``::

    epoch_0003/        a DCP checkpoint (model + optimizer), plus meta.json
    best, latest       one-line pointer files naming a checkpoint directory

A checkpoint is written into ``<name>.tmp``, completed on every rank, then renamed; the
pointer files are replaced atomically (``os.replace``) only after that. A job killed
mid-write leaves a ``.tmp`` directory that no pointer names, so it is never loaded. DCP
stores sharded tensors with their global shapes, so a checkpoint written by N ranks
loads on M ranks, or into a plain unsharded model (export).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.optim import Optimizer


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_checkpoint(
    root: Path,
    name: str,
    model: nn.Module,
    optimizer: Optional[Optimizer],
    meta: Dict[str, Any],
    pointers: tuple[str, ...] = ("latest",),
) -> Path:
    """Write checkpoint ``root/name`` collectively (every rank calls this) and point
    ``pointers`` (e.g. ``latest``, ``best``) at it. Returns the checkpoint path."""
    root = Path(root)
    final, tmp = root / name, root / f"{name}.tmp"
    if _is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _is_main():
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for p in pointers:
            _write_pointer(root / p, name)
        _prune(root)
    _barrier()
    return final


def _write_pointer(path: Path, target: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(target + "\n")
    os.replace(tmp, path)


def _prune(root: Path) -> None:
    """Keep only the checkpoints some pointer names."""
    keep = {resolve(root, p).name for p in ("best", "latest") if (root / p).exists()}
    for d in root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)


def resolve(root: Path, pointer: str = "latest") -> Path:
    """The checkpoint directory a pointer names; a path that is already a checkpoint
    directory (has ``meta.json``) is returned as is."""
    root = Path(root)
    if (root / "meta.json").exists():
        return root
    p = root / pointer
    if not p.exists() and (root / "checkpoints" / pointer).exists():
        p = root / "checkpoints" / pointer
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint pointer {pointer!r} under {root}")
    return p.parent / p.read_text().strip()


def read_meta(ckpt: Path) -> Dict[str, Any]:
    return json.loads((Path(ckpt) / "meta.json").read_text())


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: Optional[Optimizer] = None) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` (sharded or not, any world size) and, if given,
    ``optimizer``. Returns its meta."""
    state: Dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.load(state, checkpoint_id=str(ckpt))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    return read_meta(ckpt)
