"""Export a trained model for serving: ``torch.export`` (non-strict) of a plain-tensor
front of the model, compiled by AOTInductor into one package.

::

    checkpoint (DCP, any world size) ──► plain unsharded model (eval, no optimizer, no DMP)
      ──► ServingModule: (dense, sparse_values, sparse_lengths, sequence_values,
                          sequence_lengths[, sequence_floats]) -> KJTs built inside
                          -> model -> logits
      ──► torch.export, dynamic batch and jagged-length dims
      ──► fbgemm's jagged ops rewritten in ATen (float tables)
      ──► AOTInductor package  model.pt2 (+ schema.json, manifest.json)

The package's inputs are plain tensors (see ``interformer_rec.serving.features``), so it
loads and runs with ``torch`` alone: no torchrec, no project code. With quantized tables
(``quantize="int8"`` / ``"fp16"``, TorchRec's ``quantize_inference_model``) the package
calls fbgemm's quantized lookup kernels and the loading process must ``import
fbgemm_gpu`` first; the manifest says so (``package.requires``) and the predictor does it.

Inputs to trace with and held-out rows are :mod:`.inputs`; the parity cases
:mod:`.parity`; quantized tables :mod:`.quantize`; fbgemm's jagged ops in ATen
:mod:`interformer_rec.ops.jagged`.

The export directory::

    model.pt2       AOTInductor package
    schema.json     the feature schema and the input layout (FeatureSpec)
    manifest.json   versions, config hash, input spec, dynamic dims, parity, quantization
    program_kjt.pt2 optional (``kjt_program=True``): the ExportedProgram with KJT inputs
"""

from __future__ import annotations

import copy
import ctypes
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from interformer_rec.config import Config, config_from_dict
from interformer_rec.data.sources import is_uri
from interformer_rec.export.inputs import example_inputs, read_encoded
from interformer_rec.serving.manifest import (
    EXPORT_FILES,
    KJT_PROGRAM,
    MANIFEST,
    PACKAGE,
    SCHEMA,
    ExportError,
    read_manifest,
    sha256_of,
)
from interformer_rec.export.parity import compare, parity_cases
from interformer_rec.export.quantize import embedding_bytes, quality_report, quantize_embeddings
from interformer_rec.ops.jagged import aten_decompositions
from interformer_rec.serving.features import Encoded, FeatureSpec

FORMAT = "interformer_rec.serving/1"
MAX_BATCH = 65536
MAX_VALUES = 1 << 30


# --------------------------------------------------------------------------- the module


class ServingModule(nn.Module):
    """Plain-tensor front of a ranking model: builds the two KJTs of the model contract
    from flat tensors (keys fixed by the schema) and returns the logits.

    Args:
        model: any model with ``forward(dense, sparse: KJT, sequence: KJT[, floats])
            -> [B, tasks]``.
        sparse_keys: keys of the pooled KJT (``FeatureSpec.pooled_keys``).
        sequence_keys: keys of the unpooled KJT (``FeatureSpec.unpooled_keys``).
    """

    def __init__(self, model: nn.Module, sparse_keys: List[str], sequence_keys: List[str]) -> None:
        super().__init__()
        self.model = model
        self.sparse_keys = list(sparse_keys)
        self.sequence_keys = list(sequence_keys)

    def forward(
        self,
        dense: Tensor,
        sparse_values: Tensor,
        sparse_lengths: Tensor,
        sequence_values: Tensor,
        sequence_lengths: Tensor,
        sequence_floats: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            dense: ``[B, n_dense]`` float32.
            sparse_values: ``[V_s]`` int64 pooled ids, key-major.
            sparse_lengths: ``[n_pooled, B]`` int32.
            sequence_values: ``[V_q]`` int64 target then sequence ids, key-major.
            sequence_lengths: ``[n_unpooled, B]`` int32.
            sequence_floats: ``[V_f, n_float]`` float32, only if the schema has sequence
                floats.

        Returns:
            ``[B, tasks]`` logits.
        """
        batch = dense.size(0)
        sparse = KeyedJaggedTensor(
            keys=self.sparse_keys, values=sparse_values, lengths=sparse_lengths.reshape(-1), stride=batch
        )
        sequence = KeyedJaggedTensor(
            keys=self.sequence_keys, values=sequence_values, lengths=sequence_lengths.reshape(-1), stride=batch
        )
        if sequence_floats is None:
            return self.model(dense, sparse, sequence)
        return self.model(dense, sparse, sequence, sequence_floats)


# --------------------------------------------------------------------------- loading


def load_model(checkpoint: Path | str, pointer: str = "best") -> Tuple[nn.Module, Config, Dict[str, Any], Path]:
    """The model of a training checkpoint as a plain, unsharded eval-mode module.

    Args:
        checkpoint: a checkpoint directory (holding ``meta.json``), a run's
            ``checkpoints/`` directory or the run directory itself.
        pointer: which checkpoint a pointer file names (``best`` or ``latest``).

    Returns:
        ``(model, config, meta, checkpoint_dir)``. DCP gathers sharded tables into the
        plain tables, whatever world size wrote them.
    """
    from interformer_rec.models import build_model
    from interformer_rec.train.checkpoint import load_checkpoint, read_meta, resolve
    from interformer_rec.train.ranking import RankingTrain

    ckpt = resolve(checkpoint, pointer)
    meta = read_meta(ckpt)
    if "config" not in meta:
        raise ExportError(f"{ckpt}/meta.json holds no 'config': cannot rebuild the model")
    cfg = config_from_dict(meta["config"], f"{ckpt}/meta.json")
    wrapper = RankingTrain(build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("cpu")))
    load_checkpoint(ckpt, wrapper)
    return wrapper.model.eval(), cfg, meta, ckpt


def serving_module(model: nn.Module, spec: FeatureSpec) -> ServingModule:
    """The eval-mode :class:`ServingModule` of ``model`` with the KJT keys of ``spec``."""
    return ServingModule(model, spec.pooled_keys, spec.unpooled_keys).eval()


# --------------------------------------------------------------------------- export


def _size_oblivious():
    """Trace and compile with backed sizes free to be 0 or 1. Without it, a size that
    equals an input's (the one split of the values when the pooled KJT has a single
    key) inherits the tracer's assumption that backed sizes are at least 2, and the
    package refuses one row with one id: ``Expected u20 >= 2 but received 1``."""
    return fx_config.patch(backed_size_oblivious=True)


def dynamic_shapes(spec: FeatureSpec, max_batch: int = MAX_BATCH) -> Tuple[Dict[int, Dim], ...]:
    """The dynamic dims of the inputs: batch (``1..max_batch``) and value counts (and
    the history steps of ``sequence_floats``)."""
    batch = Dim("batch", min=1, max=max_batch)
    sparse_values = Dim("sparse_values", min=0, max=MAX_VALUES)
    sequence_values = Dim("sequence_values", min=0, max=MAX_VALUES)
    dims: Tuple[Dict[int, Dim], ...] = (
        {0: batch},
        {0: sparse_values} if spec.pooled else {},
        {1: batch},
        {0: sequence_values},
        {1: batch},
    )
    if spec.floats:
        dims += ({0: Dim("history_steps", min=0, max=MAX_VALUES)},)
    return dims


def export_program(
    serving: ServingModule,
    spec: FeatureSpec,
    max_batch: int = MAX_BATCH,
    decompose: bool = True,
    device: torch.device = torch.device("cpu"),
) -> ExportedProgram:
    """``torch.export`` (non-strict) of ``serving`` with dynamic batch and value counts.

    Args:
        decompose: rewrite fbgemm's jagged ops in ATen (see :func:`aten_decompositions`).
        device: where ``serving`` is and the package will run (its inputs go there).
    """
    example = tuple(t.to(device) for t in example_inputs(spec))
    with torch.no_grad():
        serving(*example)  # quantized modules cache their feature order on a first call
    with _size_oblivious():
        ep = torch.export.export(serving, example, dynamic_shapes=dynamic_shapes(spec, max_batch), strict=False)
        if decompose:
            ep = ep.run_decompositions(aten_decompositions())
    return ep


def export_kjt_program(model: nn.Module, spec: FeatureSpec, max_batch: int = MAX_BATCH) -> ExportedProgram:
    """``torch.export`` (non-strict) of the model itself, with its KJT inputs
    ``(dense, sparse: KJT, sequence: KJT)``, dynamic batch and value counts; for Python
    users who have torchrec. ``torch.export.save`` it; load it with
    :func:`load_kjt_program`. Serving uses the plain-tensor package instead (no
    torchrec needed)."""
    dense, sv, sl, qv, ql = example_inputs(spec)
    batch_size = dense.size(0)
    sparse = KeyedJaggedTensor(keys=spec.pooled_keys, values=sv, lengths=sl.reshape(-1), stride=batch_size)
    sequence = KeyedJaggedTensor(keys=spec.unpooled_keys, values=qv, lengths=ql.reshape(-1), stride=batch_size)
    batch = Dim("batch", min=1, max=max_batch)

    def kjt_dims(name: str, num_keys: int) -> List[Any]:
        # KJT pytree leaves: values, weights, lengths, offsets, and three optional fields
        values = {0: Dim(name, min=0, max=MAX_VALUES)} if num_keys else None
        return [values, None, {0: num_keys * batch} if num_keys else None, None, None, None]

    with torch.no_grad():
        model(dense, sparse, sequence)
    dims = ({0: batch}, kjt_dims("sparse_values", len(spec.pooled_keys)), kjt_dims("sequence_values", len(spec.unpooled_keys)))
    with _size_oblivious():  # else a guard ``batch != 1`` from the KJT's lengths
        ep = torch.export.export(model, (dense, sparse, sequence), dynamic_shapes=dims, strict=False)
        return ep.run_decompositions(aten_decompositions())


def load_kjt_program(path: Path | str) -> ExportedProgram:
    """Load a ``program_kjt.pt2`` (torchrec's jagged types allowed in the unpickler),
    after checking the sha256 that the ``manifest.json`` beside it records."""
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

    if (Path(path).parent / MANIFEST).exists():
        read_manifest(Path(path).parent)

    torch.serialization.add_safe_globals([KeyedJaggedTensor, JaggedTensor, KeyedTensor])
    return torch.export.load(str(path))


def required_libraries(ep: ExportedProgram) -> List[str]:
    """Python packages a process must import before loading the compiled package."""
    names = set()
    for node in ep.graph.nodes:
        if node.op == "call_function":
            t = str(node.target)
            if t.startswith("fbgemm.") or t == "call_torchbind":
                names.add("fbgemm_gpu")
    for const in ep.constants.values():
        if isinstance(const, torch.ScriptObject):
            names.add("fbgemm_gpu")
    return sorted(names)


def compile_package(ep: ExportedProgram, path: Path) -> Path:
    """AOTInductor-compile ``ep`` into the package ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _size_oblivious():
        return Path(torch._inductor.aoti_compile_and_package(ep, package_path=str(path)))


# --------------------------------------------------------------------------- the command


def _versions() -> Dict[str, str]:
    """Versions of python, torch and the installed libraries the package was built with."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "interformer_rec"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _heldout_paths(cfg: Config, data: Optional[Sequence[Path | str]]) -> List[str]:
    """Parquet files of ``data``, else of the config's test split, else its valid split."""
    from interformer_rec.data.sources import exists, resolve_paths

    if data:
        return resolve_paths([str(p) for p in data])
    for split in ("test", "valid"):
        path = getattr(cfg.data, split)
        if path and exists(path):
            return resolve_paths(path, cfg.data.filters.get(split))
    return []


def input_spec(spec: FeatureSpec) -> List[Dict[str, Any]]:
    """The manifest's ``inputs``: name, dtype, shape and keys of each package input."""
    n_dense, n_pooled, n_unpooled = len(spec.dense), len(spec.pooled_keys), len(spec.unpooled_keys)
    return [
        {"name": "dense", "dtype": "float32", "shape": ["batch", n_dense], "columns": spec.dense},
        {"name": "sparse_values", "dtype": "int64", "shape": ["sparse_values"], "keys": spec.pooled_keys},
        {"name": "sparse_lengths", "dtype": "int32", "shape": [n_pooled, "batch"], "keys": spec.pooled_keys},
        {"name": "sequence_values", "dtype": "int64", "shape": ["sequence_values"], "keys": spec.unpooled_keys},
        {"name": "sequence_lengths", "dtype": "int32", "shape": [n_unpooled, "batch"], "keys": spec.unpooled_keys},
    ] + ([{"name": "sequence_floats", "dtype": "float32", "shape": ["history_steps", len(spec.floats)],
           "columns": spec.floats}] if spec.floats else [])


def export(
    checkpoint: Path | str,
    out_dir: Path | str,
    *,
    pointer: str = "best",
    quantize: Optional[str] = None,
    data: Optional[Sequence[Path | str]] = None,
    parity_rows: int = 2048,
    parity_tol: float = 1e-5,
    max_batch: int = MAX_BATCH,
    kjt_program: bool = False,
) -> Dict[str, Any]:
    """Export the model of ``checkpoint`` into ``out_dir`` (``model.pt2``,
    ``schema.json``, ``manifest.json``) and check parity.

    Everything is written to a temporary directory beside ``out_dir`` and installed as
    ``out_dir`` only once parity has passed (:func:`install_dir`): a failed or killed
    export leaves the previous export in ``out_dir`` as it was. A package that fails
    parity goes to ``<out_dir>.failed`` (its manifest records the figures and
    ``parity.passed: false``, which loaders refuse). ``out_dir`` must be new, empty, or
    an earlier export holding only export files (nothing else is ever deleted).

    Args:
        quantize: ``None`` (float32 tables), ``"int8"`` or ``"fp16"`` (TorchRec-quantized
            embedding tables; their quality loss against the float model is measured).
        data: held-out Parquet files for parity and quality; default the config's test
            split, else its valid split, if present; random rows are always added.
        parity_rows: held-out rows read; the first ``min(parity_rows, max_batch)`` are
            compared, one at a time and as one batch.
        parity_tol: max abs logit difference allowed between the package and the eager
            model it was exported from; more raises :class:`ExportError` (after writing
            the package and its manifest to ``<out_dir>.failed``).
        max_batch: the largest batch the package accepts.
        kjt_program: also write ``program_kjt.pt2``, the ``torch.export``-ed model with
            KJT inputs (see :func:`export_kjt_program`; float tables only).

    Returns:
        the manifest.
    """
    if kjt_program and quantize:
        raise ExportError("the KJT-input program is written for float tables only (drop --quantize or --kjt-program)")
    out = Path(out_dir)
    failed = out.with_name(out.name + ".failed")
    check_export_dir(out)
    check_export_dir(failed)
    model, cfg, meta, ckpt = load_model(checkpoint, pointer)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # as a plain mkdir would (mkdtemp's is private)
    try:
        manifest = _export_into(work, model, cfg, meta, ckpt, quantize, data, parity_rows, parity_tol, max_batch, kjt_program)
        parity = manifest["parity"]
        if not parity["passed"]:
            install_dir(work, failed)
            raise ExportError(
                f"exported and eager logits differ by {parity['max_abs_diff_logit']:.3g} > {parity_tol:g}: "
                f"nothing was installed at {out} (an earlier export there is untouched); the failed package and "
                f"its figures are in {failed} (see {failed / MANIFEST})"
            )
        install_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def check_export_dir(out: Path) -> None:
    """Refuse an ``out`` that an export may not replace: a file, or a directory holding
    anything but the files of an earlier export (:data:`EXPORT_FILES`)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
        if other:
            raise ExportError(
                f"--out {out}: holds {other[:5]}, which are not export files; an export replaces the whole "
                "directory, so write it to a new or empty directory"
            )


def _remove_stale_work_dirs(out: Path) -> None:
    """Delete the temporary directories that killed exports to ``out`` left beside it
    (``.<name>.tmp-<pid>-*`` of a process that no longer runs)."""
    for d in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = d.name[len(f".{out.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform or file system does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def install_dir(src: Path, dst: Path) -> None:
    """Make the complete directory ``src`` become ``dst`` (same file system); an existing
    ``dst`` is swapped out atomically where the platform allows (else renamed aside for
    the instant of the second rename) and then deleted. A reader of ``dst`` sees the old
    or the new directory, never a mix."""
    if not dst.exists():
        os.rename(src, dst)
        return
    if _rename_exchange(src, dst):
        shutil.rmtree(src)  # now the old directory
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _export_into(
    out: Path,
    model: nn.Module,
    cfg: Config,
    meta: Dict[str, Any],
    ckpt: Path | str,
    quantize: Optional[str],
    data: Optional[Sequence[Path | str]],
    parity_rows: int,
    parity_tol: float,
    max_batch: int,
    kjt_program: bool,
) -> Dict[str, Any]:
    """Write the package, schema and manifest of :func:`export` into the (new, empty)
    directory ``out``; returns the manifest, whose ``parity.passed`` says whether the
    package matched the eager model within ``parity_tol``."""
    spec = FeatureSpec(cfg.data.schema)
    paths = _heldout_paths(cfg, data)
    heldout, labels = read_encoded(spec, paths, parity_rows) if paths else (None, None)
    serving, quant_info = _serving_for(model, spec, quantize, heldout, labels)
    package = _write_package(serving, spec, out, max_batch, kjt_program)
    cases = _package_parity(serving, out / PACKAGE, spec, heldout, min(parity_rows, max_batch))
    worst = max(c["max_abs_diff_logit"] for c in cases.values())
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "name": cfg.model.name,
            "config_digest": cfg.digest(),
            "checkpoint": str(ckpt) if is_uri(str(ckpt)) else str(Path(ckpt).resolve()),
            "epoch": meta.get("epoch"),
            "valid": meta.get("valid"),
            "tasks": spec.labels,
        },
        "versions": _versions(),
        "package": package,
        "schema": SCHEMA,
        "kjt_program": KJT_PROGRAM if kjt_program else None,
        "files": {name: sha256_of(out / name) for name in (SCHEMA, *([KJT_PROGRAM] if kjt_program else []))},
        "inputs": input_spec(spec),
        "dynamic_dims": {"batch": [1, max_batch], "sparse_values": [0, MAX_VALUES], "sequence_values": [0, MAX_VALUES]},
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(spec.labels)], "tasks": spec.labels}],
        "quantization": quant_info,
        "parity": {
            "reference": "eager " + ("quantized " if quantize else "") + "model",
            "heldout": [str(p) for p in paths],
            "tolerance_logit": parity_tol,
            "max_abs_diff_logit": worst,
            "passed": bool(worst <= parity_tol),
            "cases": cases,
        },
        "config": cfg.to_dict(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _serving_for(
    model: nn.Module,
    spec: FeatureSpec,
    quantize: Optional[str],
    heldout: Optional[Encoded],
    labels: Optional[np.ndarray],
) -> Tuple[ServingModule, Dict[str, Any]]:
    """The serving module to export (``model``'s, or its copy with ``quantize``-d
    tables) and the manifest's ``quantization`` entry (with the quality loss of the
    quantized tables on ``heldout`` rows, ``labels [n, tasks]``, and random rows)."""
    float_serving = serving_module(model, spec)
    if not quantize:
        return float_serving, {"embeddings": "float32"}
    qmodel = quantize_embeddings(copy.deepcopy(model), quantize)
    serving = serving_module(qmodel, spec)
    return serving, {
        "embeddings": quantize,
        "method": "torchrec.inference.modules.quantize_inference_model (row-wise, fbgemm TBE)",
        "embedding_bytes_float": embedding_bytes(model),
        "embedding_bytes_quantized": embedding_bytes(qmodel),
        "quality": quality_report(float_serving, serving, spec, heldout, labels),
    }


def _write_package(
    serving: ServingModule, spec: FeatureSpec, out: Path, max_batch: int, kjt_program: bool
) -> Dict[str, Any]:
    """Export and compile ``serving`` into ``out/model.pt2``, write ``schema.json`` (and
    ``program_kjt.pt2`` if ``kjt_program``); returns the manifest's ``package`` entry."""
    start = time.perf_counter()
    ep = export_program(serving, spec, max_batch)
    export_s = time.perf_counter() - start
    requires = required_libraries(ep)
    start = time.perf_counter()
    package = compile_package(ep, out / PACKAGE)
    compile_s = time.perf_counter() - start
    spec.save(out / SCHEMA)
    if kjt_program:
        torch.export.save(export_kjt_program(serving.model, spec, max_batch), str(out / KJT_PROGRAM))
    return {
        "file": PACKAGE,
        "sha256": sha256_of(package),
        "bytes": package.stat().st_size,
        "requires": requires,
        "export_seconds": round(export_s, 2),
        "compile_seconds": round(compile_s, 2),
    }


def _package_parity(
    serving: ServingModule, package: Path, spec: FeatureSpec, heldout: Optional[Encoded], large: int
) -> Dict[str, Dict[str, float]]:
    """:func:`compare` of the compiled ``package`` with the eager ``serving`` module on
    :func:`parity_cases` of the held-out rows (if any) and of random rows, in batches of
    at most ``large`` rows (at most the package's batch limit)."""
    runner = torch._inductor.aoti_load_package(str(package))
    cases = parity_cases(spec, heldout, large=large)
    if heldout is not None:
        cases.update(parity_cases(spec, None, large=min(256, large), singles=4))
    return compare(serving, runner, cases)


__all__ = [
    "ExportError",
    "ServingModule",
    "compile_package",
    "export",
    "export_kjt_program",
    "export_program",
    "load_kjt_program",
    "load_model",
    "serving_module",
]
