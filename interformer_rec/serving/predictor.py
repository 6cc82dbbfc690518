"""Score with an exported model: loads only ``model.pt2``, ``schema.json`` and
``manifest.json`` from an export directory, with ``torch`` (plus ``fbgemm_gpu`` for a
package with quantized tables, as its manifest says) — no torchrec, no model code.

::

    p = Predictor("exports/interformer")
    p.predict_rows([{"user_id": 3, "item_id": 7, "hist_item_ids": [1, 5], ...}])  # [n, tasks]
    p.predict_request({"user": {...}, "candidates": [{...}, ...]})              # response dict
    p.predict_parquet("data/test.parquet", "scores.parquet")                   # summary dict
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from interformer_rec.arrays import DataError
from interformer_rec.data.sources import is_uri, open_input, resolve_paths
from interformer_rec.serving.manifest import MANIFEST, PACKAGE, SCHEMA, ModelDirError, read_manifest
from interformer_rec.ops.metrics import auc, logloss
from interformer_rec.serving.features import (
    Encoded,
    FeatureSpec,
    InputError,
    encode_request,
    encode_rows,
    encode_table,
)

logger = logging.getLogger(__name__)


def largest_input(spec: FeatureSpec, enc: Encoded, i: int) -> Optional[str]:
    """The numeric input of row ``i`` of ``enc`` with the largest magnitude, as
    ``"<column> = <value>"`` (a dense column, or a sequence float at one of the row's
    history steps); ``None`` if the schema has no numeric inputs."""
    found: List[Tuple[float, str]] = []
    for k, name in enumerate(spec.schema.dense):
        found.append((abs(float(enc.dense[i, k])), f"{name} = {float(enc.dense[i, k]):g}"))
    for f, j in zip(spec.schema.sequence_floats, enc.floats):
        steps = j.values[j.offsets[i]:j.offsets[i + 1]]
        if len(steps):
            t = int(np.argmax(np.abs(steps)))
            found.append((abs(float(steps[t])), f"{f.name} = {float(steps[t]):g} (history step {t})"))
    return max(found)[1] if found else None


def check_finite(probs: np.ndarray, where: Callable[[int], str], spec: Optional[FeatureSpec] = None,
                 enc: Optional[Encoded] = None) -> np.ndarray:
    """``probs`` (from :meth:`Predictor.predict_encoded`), or :class:`InputError` naming
    the first row (``where(i)``) whose model output is not finite: a value the model
    overflows on (e.g. a huge dense or sequence float) is refused, never scored NaN.
    Given the rows' ``spec`` and ``enc``, the error names that row's largest numeric
    input (:func:`largest_input`), the likely cause."""
    bad = np.flatnonzero(np.isnan(probs).any(1))
    if len(bad):
        i = int(bad[0])
        suspect = largest_input(spec, enc, i) if spec is not None and enc is not None else None
        raise InputError(
            f"{where(i)}: the model's output is not finite for this row ({len(bad)} row(s) in all): "
            + (f"its largest numeric input, {suspect}, lies far outside what the model was trained on"
               if suspect else "an input value lies far outside what the model was trained on")
        )
    return probs


class Predictor:
    """An exported model, ready to score.

    Args:
        model_dir: the directory ``interformer-rec export`` wrote.
        max_candidates: most candidates one request may hold.

    Attributes:
        spec: the :class:`FeatureSpec` of ``schema.json``.
        manifest: ``manifest.json``.
        max_batch: most rows per package call (larger inputs are scored in chunks).
    """

    def __init__(self, model_dir: Path | str, max_candidates: int = 4096) -> None:
        self.model_dir = Path(model_dir)
        for name in (PACKAGE, SCHEMA, MANIFEST):
            if not (self.model_dir / name).is_file():
                raise ModelDirError(f"{self.model_dir}: no {name} (not an `interformer-rec export` directory?)")
        self.manifest: Dict[str, Any] = read_manifest(self.model_dir)
        self.spec = FeatureSpec.load(self.model_dir / SCHEMA)
        self.tasks: List[str] = list(self.spec.labels)
        self.max_batch = int(self.manifest.get("dynamic_dims", {}).get("batch", [1, 65536])[1])
        self.max_candidates = min(max_candidates, self.max_batch)
        for lib in self.manifest["package"].get("requires", []):
            importlib.import_module(lib)  # registers the custom ops the package calls
        built = self.manifest.get("versions", {}).get("torch")
        if built and built != torch.__version__:
            logger.warning("%s: package built with torch %s, loading with %s", self.model_dir, built, torch.__version__)
        self._runner = torch._inductor.aoti_load_package(str(self.model_dir / PACKAGE))
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.manifest.get("model", {}).get("name", "model"))

    # ------------------------------------------------------------------ core

    def logits(self, enc: Encoded) -> np.ndarray:
        """``[n, tasks]`` float32 logits of encoded rows (in chunks of ``max_batch``)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(enc), self.max_batch):
                x = enc.slice(start, min(start + self.max_batch, len(enc))).to_tensors()
                with self._lock:
                    out.append(self._runner(*x).numpy())
        return np.concatenate(out) if len(out) > 1 else out[0]

    def predict_encoded(self, enc: Encoded) -> np.ndarray:
        """``[n, tasks]`` float32 probabilities; NaN in every task of a row whose logits
        are not finite (an input the model overflows on: see :func:`check_finite`)."""
        z = self.logits(enc).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-z))
        p[~np.isfinite(z).all(1)] = np.nan
        return p.astype(np.float32)

    # ------------------------------------------------------------------ inputs

    def predict_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``[n, tasks]`` probabilities of raw feature dicts (one per row; see
        :mod:`interformer_rec.serving.features` for the accepted values). Raises
        :class:`InputError` on malformed input."""
        enc = encode_rows(self.spec, rows)
        return check_finite(self.predict_encoded(enc), lambda i: f"rows[{i}]", self.spec, enc)

    def encode_request(self, request: Any) -> Encoded:
        return encode_request(self.spec, request, self.max_candidates)

    def response(self, request: Mapping[str, Any], probs: np.ndarray) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "model": self.name,
            "num_candidates": int(probs.shape[0]),
            "scores": {t: probs[:, i].tolist() for i, t in enumerate(self.tasks)},
        }
        if "request_id" in request:
            out["request_id"] = request["request_id"]
        return out

    def predict_request(self, request: Any) -> Dict[str, Any]:
        """Score one ranking request ``{"user": {...}, "candidates": [{...}, ...]}``:
        returns ``{"model", "num_candidates", "scores": {task: [p per candidate]}}``."""
        probs = self.predict_encoded(self.encode_request(request))
        return self.response(request, probs)

    def predict_parquet(
        self,
        paths: Sequence[Path | str] | Path | str,
        out: Optional[Path | str] = None,
        batch_size: int = 4096,
        keep: Optional[Sequence[str]] = None,
    ) -> Dict[str, Any]:
        """Score Parquet file(s) row group by row group.

        Args:
            out: Parquet file to write: the ``keep`` columns (default: the group key, if
                present) then ``p_<task>`` for each task, one row per input row. It is
                written to ``<out>.tmp`` and renamed when every row is scored: a bad
                row leaves no partial file (and an earlier ``out`` untouched); no input
                rows write an empty file with the output schema.
            keep: input columns copied to ``out``.

        Returns:
            ``{"rows", "seconds", "rows_per_s", "out"}`` and, where the label columns
            are present, ``{"metrics": {task: {"auc", "logloss"}}}``.
        """
        import pyarrow.parquet as pq

        files = _parquet_files(paths)
        if out is not None:
            inputs = {Path(f).resolve() for f in files if not is_uri(f)}
            for target in (Path(out), Path(f"{out}.tmp")):
                if target.resolve() in inputs:
                    raise InputError(f"--out {out}: would overwrite the input {target}; write the scores elsewhere")
        spec = self.spec
        keep = list(keep) if keep is not None else ([spec.group_key] if spec.group_key else [])
        tmp = Path(f"{out}.tmp") if out is not None else None
        writer: Optional[pq.ParquetWriter] = None
        labels: List[np.ndarray] = []
        scores: List[np.ndarray] = []
        have_labels = True
        rows = 0
        start = time.perf_counter()
        try:
            for path in files:
                pf = self._open(path, keep)
                have_labels = have_labels and all(c in pf.schema_arrow.names for c in spec.labels)
                if tmp is not None and writer is None:
                    writer = self._writer(tmp, pf.schema_arrow, keep)
                for part, probs in self._score_file(path, pf, keep, batch_size):
                    scores.append(probs)
                    if have_labels:
                        labels.append(np.stack([part.column(c).to_numpy(zero_copy_only=False) for c in spec.labels], 1))
                    if writer is not None:
                        writer.write_table(self._scores_table(part, probs, keep, writer.schema))
                    rows += part.num_rows
            if writer is not None:
                writer.close()
                writer = None
                os.replace(tmp, out)  # type: ignore[arg-type]
        finally:
            if writer is not None:
                writer.close()
            if tmp is not None and tmp.exists():
                tmp.unlink()
        seconds = time.perf_counter() - start
        summary: Dict[str, Any] = {
            "model": self.name,
            "files": [str(f) for f in files],
            "rows": rows,
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 1) if seconds > 0 else None,
            "out": str(out) if out is not None else None,
        }
        if have_labels and labels:
            summary["metrics"] = self._metrics(np.concatenate(labels).astype(np.float64), np.concatenate(scores))
        return summary

    def _score_file(self, path: Path, pf: Any, keep: Sequence[str], batch_size: int) -> Iterator[Tuple[Any, np.ndarray]]:
        """``(rows, [n, tasks] probabilities)`` of ``pf`` (a ``pq.ParquetFile`` of
        ``path``) in slices of at most ``batch_size`` rows, row group by row group;
        ``rows`` is a ``pa.Table`` of the features, ``keep`` and the labels present."""
        import pyarrow as pa

        spec = self.spec
        names = pf.schema_arrow.names
        cols = list(dict.fromkeys(spec.feature_names + list(keep) + [c for c in spec.labels if c in names]))
        row0 = 0
        for g in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(g, columns=cols)
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"{path}: row group {g} is unreadable ({e})") from None
            for s in range(0, table.num_rows, batch_size):
                part = table.slice(s, batch_size)
                enc = encode_table(spec, part, str(path), row0 + s)
                yield part, check_finite(self.predict_encoded(enc), lambda i, r=row0 + s: f"{path}: row {r + i}", spec, enc)
            row0 += table.num_rows

    def _writer(self, path: Path, schema: Any, keep: Sequence[str]) -> Any:
        """``pq.ParquetWriter`` of ``path`` for the ``keep`` columns of input ``schema``
        and a float32 ``p_<task>`` column per task."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fields = [schema.field(c) for c in keep] + [pa.field(f"p_{t}", pa.float32()) for t in self.tasks]
        path.parent.mkdir(parents=True, exist_ok=True)
        return pq.ParquetWriter(str(path), pa.schema(fields))

    def _scores_table(self, part: Any, probs: np.ndarray, keep: Sequence[str], schema: Any) -> Any:
        """The output rows of input rows ``part`` and their ``[n, tasks]`` ``probs``."""
        import pyarrow as pa

        columns = {c: part.column(c) for c in keep}
        columns.update({f"p_{t}": pa.array(probs[:, i]) for i, t in enumerate(self.tasks)})
        return pa.table(columns, schema=schema)

    def _metrics(self, labels: np.ndarray, probs: np.ndarray) -> Dict[str, Dict[str, float]]:
        """``{task: {"auc", "logloss"}}`` of ``[n, tasks]`` labels and probabilities."""
        return {
            t: {"auc": auc(labels[:, i], probs[:, i]), "logloss": logloss(labels[:, i], probs[:, i])}
            for i, t in enumerate(self.tasks)
        }

    def _open(self, path: str, keep: Sequence[str]) -> Any:
        """``pq.ParquetFile`` of ``path``, which must hold the features and ``keep``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(open_input(path))
        except (pa.ArrowException, OSError, DataError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        missing = [c for c in self.spec.feature_names + list(keep) if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"{path}: missing column(s) {missing}")
        return pf


def _parquet_files(paths: Sequence[Path | str] | Path | str) -> List[str]:
    try:
        return resolve_paths(paths)
    except DataError as e:
        raise InputError(str(e)) from None
