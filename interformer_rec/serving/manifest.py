"""The contract between export and serving: the files of an export directory and its
``manifest.json``, checked before anything in the directory is loaded, and the errors of
exporting and loading. With :mod:`~interformer_rec.serving.features` (the feature spec
and the request encoding) it is all that the exporter and the predictor share; the
serving package imports nothing from the export package. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict

PACKAGE, SCHEMA, MANIFEST, KJT_PROGRAM = "model.pt2", "schema.json", "manifest.json", "program_kjt.pt2"
EXPORT_FILES = frozenset({PACKAGE, SCHEMA, MANIFEST, KJT_PROGRAM})
# Libraries a package may ask to import before it loads (they register custom ops).
ALLOWED_REQUIRES = frozenset({"fbgemm_gpu"})


class ModelDirError(FileNotFoundError):
    """An export directory that is missing a file or does not load."""


class ExportError(RuntimeError):
    """Export failed, or the exported model disagrees with the eager one."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: Path) -> Dict[str, Any]:
    """``manifest.json`` of an export directory, checked before anything is loaded: the
    export passed its parity check (``parity.passed``; manifests written before it was
    recorded: the figures they hold), the package and the schema match the sha256 the
    manifest records for them, and the package requires only libraries of
    :data:`ALLOWED_REQUIRES`."""
    path = model_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelDirError(f"{path}: not valid JSON ({e})") from None
    package = manifest.get("package") if isinstance(manifest, dict) else None
    if not isinstance(package, dict) or not isinstance(package.get("sha256"), str):
        raise ModelDirError(f"{path}: records no package.sha256 (not an `interformer-rec export` manifest?)")
    requires = package.get("requires", [])
    if not isinstance(requires, list) or not set(requires) <= ALLOWED_REQUIRES:
        raise ModelDirError(
            f"{path}: package.requires {requires!r} names a library outside {sorted(ALLOWED_REQUIRES)}"
        )
    _check_parity(manifest.get("parity"), path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelDirError(f"{path}: records no files (not an `interformer-rec export` manifest?)")
    expected = {PACKAGE: package["sha256"], **files}
    for name, digest in expected.items():
        if name not in (PACKAGE, SCHEMA, KJT_PROGRAM):
            raise ModelDirError(f"{path}: files names {name!r}, not a file of an export directory")
    if not isinstance(files.get(SCHEMA), str):
        raise ModelDirError(f"{path}: records no sha256 of {SCHEMA}, so it could not be checked")
    for name, digest in expected.items():
        f = model_dir / name
        if f.exists() and sha256_of(f) != digest:
            raise ModelDirError(f"{f}: its sha256 differs from the one {MANIFEST} records (changed or corrupted)")
    return manifest


def _check_parity(parity: Any, path: Path) -> None:
    """Refuse a manifest whose export failed (or never recorded) its parity check."""
    if not isinstance(parity, dict):
        raise ModelDirError(f"{path}: records no parity check")
    passed = parity.get("passed")
    worst, tol = parity.get("max_abs_diff_logit"), parity.get("tolerance_logit")
    if passed is None and isinstance(worst, (int, float)) and isinstance(tol, (int, float)):
        passed = worst <= tol  # a manifest from before `passed` was recorded
    if passed is not True:
        raise ModelDirError(
            f"{path}: this export failed its parity check (the package's logits differ from the eager model's "
            f"by {worst} > {tol}); it must not be served: re-export"
        )
