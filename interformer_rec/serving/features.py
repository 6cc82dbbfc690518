"""Feature encoding for serving: Parquet columns, row dicts or a ranking request (one
user, many candidates) to the plain tensors an exported model takes.

Only numpy and torch (and pyarrow for Parquet) are imported: no torchrec, no model code.

The bad-input policy is the training reader's (``interformer_rec.data.reader``), so a
row scores the same whether it was read for training or sent to the server:

* dense: a number (not a bool); null, NaN or infinite (in float32) is an error.
* pooled sparse: an id or a list of ids; null or ``[]`` is an empty bag.
* target sparse (shares a table with a sequence): exactly one id.
* sequence: a list of ids, most recent last; null is empty. Parallel sequences must have
  equal lengths; a longer one than ``max_len`` keeps its ``max_len`` most recent steps.
* ids, ``id_policy == "reject"``: every id (also those truncation drops) must lie in
  ``[0, num_embeddings)``; ``"hash"``: every id goes through splitmix64, modulo the
  table size. Ids must fit in int64.

Every error is an :class:`InputError` naming the field (and row or candidate).

Model inputs (the exported program's signature, ``B`` rows)::

    dense             [B, n_dense]        float32
    sparse_values     [V_s]               int64   pooled ids, key-major
    sparse_lengths    [n_pooled, B]       int32
    sequence_values   [V_q]               int64   targets then sequences, key-major
    sequence_lengths  [n_unpooled, B]     int32
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from interformer_rec.arrays import Jagged, _row_of, splitmix64
from interformer_rec.config import Schema, SequenceFeature, SparseFeature, TableConfig

INPUT_NAMES = ("dense", "sparse_values", "sparse_lengths", "sequence_values", "sequence_lengths")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Where = Callable[[int], str]  # row index -> "where" prefix of an error message


class InputError(ValueError):
    """Input that breaks the schema or the bad-input policy; the message names the field."""


# --------------------------------------------------------------------------- schema


def schema_from_dict(d: Mapping[str, Any]) -> Schema:
    """Inverse of ``dataclasses.asdict(schema)``."""
    return Schema(
        labels=list(d["labels"]),
        dense=list(d.get("dense", [])),
        sparse=[SparseFeature(**f) for f in d.get("sparse", [])],
        sequence=[SequenceFeature(**s) for s in d.get("sequence", [])],
        tables=[TableConfig(**t) for t in d.get("tables", [])],
        group_key=d.get("group_key"),
        oracle=d.get("oracle"),
        id_policy=d.get("id_policy", "reject"),
    )


@dataclass(frozen=True)
class IdFeature:
    name: str
    table: str
    num_embeddings: int


class FeatureSpec:
    """The features an exported model takes, from its :class:`Schema`.

    Attributes:
        dense: dense column names, in input order.
        pooled: pooled features (``sparse_values`` keys, in order).
        targets: target features (first keys of ``sequence_values``).
        sequences: sequence features (the rest of ``sequence_values``).
        max_len: ``T`` of the sequences.
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        size = {t.name: t.num_embeddings for t in schema.tables}
        self.labels: List[str] = list(schema.labels)
        self.dense: List[str] = list(schema.dense)
        self.pooled = [IdFeature(f.name, f.table, size[f.table]) for f in schema.pooled_features]
        self.targets = [IdFeature(f.name, f.table, size[f.table]) for f in schema.target_features]
        self.sequences = [IdFeature(s.name, s.table, size[s.table]) for s in schema.sequence]
        self.max_len = schema.max_len
        self.id_policy = schema.id_policy
        self.group_key = schema.group_key
        self.kind: Dict[str, str] = {n: "dense" for n in self.dense}
        self.kind.update({f.name: "pooled" for f in self.pooled})
        self.kind.update({f.name: "target" for f in self.targets})
        self.kind.update({f.name: "sequence" for f in self.sequences})
        self.id_features = {f.name: f for f in [*self.pooled, *self.targets, *self.sequences]}

    @property
    def pooled_keys(self) -> List[str]:
        return [f.name for f in self.pooled]

    @property
    def unpooled_keys(self) -> List[str]:
        return [f.name for f in [*self.targets, *self.sequences]]

    @property
    def feature_names(self) -> List[str]:
        """Every input feature (not the labels), in input order."""
        return [*self.dense, *self.pooled_keys, *self.unpooled_keys]

    def to_dict(self) -> Dict[str, Any]:
        """What ``schema.json`` holds: the schema, and the input layout derived from it."""
        return {
            "schema": asdict(self.schema),
            "inputs": {
                "dense": self.dense,
                "sparse_keys": self.pooled_keys,
                "sequence_keys": self.unpooled_keys,
                "max_len": self.max_len,
                "id_policy": self.id_policy,
            },
            "request": request_format(self),
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "FeatureSpec":
        return cls(schema_from_dict(json.loads(Path(path).read_text())["schema"]))


def request_format(spec: FeatureSpec) -> Dict[str, Any]:
    """A human-readable description of a scoring request, for ``schema.json`` and the
    server's ``GET /v1/metadata``."""
    kinds = {
        "dense": "number",
        "pooled": "id or list of ids (null or [] = empty)",
        "target": "one id",
        "sequence": f"list of ids, most recent last (at most {spec.max_len} kept)",
    }
    return {
        "body": {
            "user": "{feature: value} shared by all candidates (user, context, history)",
            "candidates": "[{feature: value}] one per item to score (target item features)",
            "request_id": "optional string, echoed",
        },
        "rule": "every feature is given exactly once: in `user` or in every candidate",
        "features": {n: kinds[k] for n, k in spec.kind.items()},
        "id_policy": spec.id_policy,
        "id_ranges": {f.name: [0, f.num_embeddings] for f in spec.id_features.values()},
    }


def apply_id_policy(j: Jagged, f: IdFeature, policy: str, where: Where) -> Jagged:
    """Check (``reject``) or hash (``hash``) the ids of feature ``f``."""
    if policy == "hash":
        return Jagged(j.lengths, (splitmix64(j.values) % np.uint64(f.num_embeddings)).astype(np.int64))
    bad = (j.values < 0) | (j.values >= f.num_embeddings)
    if bad.any():
        pos = int(np.argmax(bad))
        raise InputError(
            f"{where(_row_of(j.lengths, pos))}{f.name}: id {int(j.values[pos])} outside "
            f"[0, {f.num_embeddings}) of table {f.table!r} (id_policy 'reject')"
        )
    return j


# --------------------------------------------------------------------------- encoded rows


@dataclass
class Encoded:
    """``n`` checked rows, ready for the model (numpy counterparts of its inputs).

    Attributes:
        dense: ``[n, n_dense]`` float32.
        pooled: one :class:`Jagged` per ``spec.pooled`` (ids already policed).
        unpooled: one :class:`Jagged` per ``spec.unpooled_keys`` (sequences truncated).
    """

    dense: np.ndarray
    pooled: List[Jagged]
    unpooled: List[Jagged]

    def __len__(self) -> int:
        return len(self.dense)

    @staticmethod
    def concat(parts: Sequence["Encoded"]) -> "Encoded":
        if len(parts) == 1:
            return parts[0]
        return Encoded(
            np.concatenate([p.dense for p in parts]),
            [Jagged.concat(js) for js in zip(*(p.pooled for p in parts))],
            [Jagged.concat(js) for js in zip(*(p.unpooled for p in parts))],
        )

    def slice(self, start: int, stop: int) -> "Encoded":
        def cut(j: Jagged) -> Jagged:
            off = np.concatenate([[0], np.cumsum(j.lengths)])
            return Jagged(j.lengths[start:stop], j.values[off[start] : off[stop]])

        return Encoded(self.dense[start:stop], [cut(j) for j in self.pooled], [cut(j) for j in self.unpooled])

    def to_tensors(self) -> Tuple[torch.Tensor, ...]:
        """The five model inputs (see the module docstring), owning their memory."""
        n = len(self)

        def kjt(parts: List[Jagged]) -> Tuple[torch.Tensor, torch.Tensor]:
            if not parts:
                return torch.zeros(0, dtype=torch.int64), torch.zeros(0, n, dtype=torch.int32)
            values = np.concatenate([p.values for p in parts]).astype(np.int64, copy=False)
            lengths = np.stack([p.lengths for p in parts]).astype(np.int32)
            return torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(lengths)

        sv, sl = kjt(self.pooled)
        qv, ql = kjt(self.unpooled)
        dense = torch.from_numpy(np.ascontiguousarray(self.dense, dtype=np.float32))
        return dense, sv, sl, qv, ql


def finish(spec: FeatureSpec, dense: np.ndarray, ids: Mapping[str, Jagged], where: Where) -> Encoded:
    """Build :class:`Encoded` rows from checked columns: targets must have one id per
    row, parallel sequences equal lengths; sequences are cut to their most recent
    ``max_len`` steps.

    Args:
        dense: ``[n, n_dense]`` float32, already checked finite.
        ids: every id feature's :class:`Jagged` (``n`` rows), ids already policed by
            :func:`apply_id_policy`.
        where: row index -> error-message prefix, e.g. ``"rows[3]: "``.
    """
    for f in spec.targets:
        bad = ids[f.name].lengths != 1
        if bad.any():
            raise InputError(f"{where(int(np.argmax(bad)))}{f.name}: a target feature needs exactly one id")
    if len(spec.sequences) > 1:
        first = spec.sequences[0].name
        for s in spec.sequences[1:]:
            diff = ids[first].lengths != ids[s.name].lengths
            if diff.any():
                i = int(np.argmax(diff))
                lens = {q.name: int(ids[q.name].lengths[i]) for q in spec.sequences}
                raise InputError(f"{where(i)}parallel sequences have unequal lengths {lens}")
    unpooled = [ids[f.name] for f in spec.targets]
    unpooled += [ids[s.name].tail(spec.max_len) for s in spec.sequences]
    return Encoded(dense, [ids[f.name] for f in spec.pooled], unpooled)


# --------------------------------------------------------------------------- python values


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _id_list(v: Any, kind: str, at: str) -> List[int]:
    """One row's ids of a feature of ``kind`` (pooled, target, sequence) from JSON/Python."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if v is None:
        if kind == "target":
            raise InputError(f"{at}: null, but a target feature needs exactly one id")
        return []
    if kind == "target" or (kind == "pooled" and not isinstance(v, (list, tuple))):
        if not _is_int(v):
            expected = "an integer id" if kind == "target" else "an integer id or a list of ids"
            raise InputError(f"{at}: expected {expected}, got {_kind(v)} {_short(v)}")
        if not INT64_MIN <= int(v) <= INT64_MAX:
            raise InputError(f"{at}: id {v} does not fit in int64")
        return [int(v)]
    if not isinstance(v, (list, tuple)):
        raise InputError(f"{at}: expected a list of integer ids, got {_kind(v)} {_short(v)}")
    for i, x in enumerate(v):
        if not _is_int(x):
            raise InputError(f"{at}[{i}]: expected an integer id, got {_kind(x)} {_short(x)}")
        if not INT64_MIN <= int(x) <= INT64_MAX:
            raise InputError(f"{at}[{i}]: id {x} does not fit in int64")
    return list(v)


def _dense_value(v: Any, at: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{at}: expected a number, got {_kind(v)} {_short(v)}")
    x = float(np.float32(v)) if abs(float(v)) < 3.5e38 else math.inf
    if not math.isfinite(x):
        raise InputError(f"{at}: value {v} is not finite (float32)")
    return x


def _kind(v: Any) -> str:
    """JSON name of ``v``'s type, for error messages."""
    if v is None:
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "boolean"
    if isinstance(v, Mapping):
        return "object"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return "number"
    return type(v).__name__


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def dense_column(values: Sequence[Any], name: str, where: Where) -> np.ndarray:
    """``[n]`` float32 of one dense feature's raw values."""
    return np.array([_dense_value(v, f"{where(i)}{name}") for i, v in enumerate(values)], np.float32)


def id_column(spec: FeatureSpec, values: Sequence[Any], name: str, where: Where) -> Jagged:
    """One id feature's raw values as a policed :class:`Jagged` (not yet truncated)."""
    kind = spec.kind[name]
    rows = [_id_list(v, kind, f"{where(i)}{name}") for i, v in enumerate(values)]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((x for r in rows for x in r), dtype=np.int64, count=int(lengths.sum()))
    return apply_id_policy(Jagged(lengths, flat), spec.id_features[name], spec.id_policy, where)


def encode_rows(spec: FeatureSpec, rows: Sequence[Mapping[str, Any]]) -> Encoded:
    """Encode raw feature dicts, one per row (extra keys such as labels are ignored)."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise InputError("rows: expected a non-empty list of feature dicts")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise InputError(f"rows[{i}]: expected a mapping of feature -> value, got {_kind(r)}")
        missing = [n for n in spec.feature_names if n not in r]
        if missing:
            raise InputError(f"rows[{i}]: missing feature(s) {missing}")

    def where(i: int) -> str:
        return f"rows[{i}]."

    n = len(rows)
    dense = np.zeros((n, len(spec.dense)), np.float32)
    for k, name in enumerate(spec.dense):
        dense[:, k] = dense_column([r[name] for r in rows], name, where)
    ids = {name: id_column(spec, [r[name] for r in rows], name, where) for name in spec.id_features}
    return finish(spec, dense, ids, lambda i: f"rows[{i}]: ")


MAX_REQUEST_ID = 128


def encode_request(spec: FeatureSpec, request: Any, max_candidates: int = 4096) -> Encoded:
    """Encode a ranking request ``{"user": {...}, "candidates": [{...}, ...]}``: one row per
    candidate; the ``user`` features (user, context, history) are given once and shared
    by all candidates. Every feature must be given exactly once: in ``user`` or in every
    candidate. An optional ``request_id`` (a string of at most :data:`MAX_REQUEST_ID`
    characters, echoed in the response) is checked, not encoded."""
    if not isinstance(request, Mapping):
        raise InputError(f"request body: expected a JSON object, got {_kind(request)}")
    unknown = set(request) - {"user", "candidates", "request_id"}
    if unknown:
        raise InputError(f"request: unknown key(s) {sorted(unknown)}; expected user, candidates, request_id")
    rid = request.get("request_id", "")
    if not isinstance(rid, str) or len(rid) > MAX_REQUEST_ID:
        raise InputError(f"request_id: expected a string of at most {MAX_REQUEST_ID} characters, got {_kind(rid)}"
                         + (f" of {len(rid)}" if isinstance(rid, str) else ""))
    user = request.get("user", {})
    cands = request.get("candidates")
    if not isinstance(user, Mapping):
        raise InputError(f"user: expected an object, got {_kind(user)}")
    if not isinstance(cands, list) or not cands:
        raise InputError("candidates: expected a non-empty list of objects")
    if len(cands) > max_candidates:
        raise InputError(f"candidates: {len(cands)} candidates, at most {max_candidates} per request")
    known = set(spec.feature_names)
    bad_user = sorted(set(user) - known)
    if bad_user:
        raise InputError(f"user: unknown feature(s) {bad_user}; the model's features: {spec.feature_names}")
    for i, c in enumerate(cands):
        if not isinstance(c, Mapping):
            raise InputError(f"candidates[{i}]: expected an object, got {_kind(c)}")
    cand_keys = set(cands[0])
    for i, c in enumerate(cands):
        if set(c) != cand_keys:
            diff = sorted(set(c) ^ cand_keys)
            raise InputError(f"candidates[{i}]: features differ from candidates[0] in {diff}")
    bad_cand = sorted(cand_keys - known)
    if bad_cand:
        raise InputError(f"candidates: unknown feature(s) {bad_cand}; the model's features: {spec.feature_names}")
    both = sorted(cand_keys & set(user))
    if both:
        raise InputError(f"feature(s) {both} given both in user and in candidates")
    missing = [n for n in spec.feature_names if n not in user and n not in cand_keys]
    if missing:
        raise InputError(f"missing feature(s) {missing} (give each in user or in every candidate)")

    n = len(cands)

    def in_user(i: int) -> str:
        return "user."

    def in_cand(i: int) -> str:
        return f"candidates[{i}]."

    dense = np.zeros((n, len(spec.dense)), np.float32)
    for k, name in enumerate(spec.dense):
        if name in cand_keys:
            dense[:, k] = dense_column([c[name] for c in cands], name, in_cand)
        else:
            dense[:, k] = dense_column([user[name]], name, in_user)[0]
    ids: Dict[str, Jagged] = {}
    for name in spec.id_features:
        if name in cand_keys:
            ids[name] = id_column(spec, [c[name] for c in cands], name, in_cand)
        else:
            ids[name] = id_column(spec, [user[name]], name, in_user).repeat(n)
    shared_seqs = all(s.name not in cand_keys for s in spec.sequences)
    return finish(spec, dense, ids, (lambda i: "user: ") if shared_seqs else (lambda i: f"candidates[{i}]: "))


# --------------------------------------------------------------------------- parquet


def _arrow_ids(col: Any, name: str, kind: str, source: str, where: Where) -> Jagged:
    """An integer or ``list<integer>`` Arrow column as a raw :class:`Jagged`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    t = arr.type
    is_list = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
    ok = {
        "pooled": is_list or pa.types.is_integer(t),
        "target": pa.types.is_integer(t),
        "sequence": is_list,
    }[kind]
    if not ok:
        expected = {"pooled": "integer or list<integer>", "target": "integer", "sequence": "list<integer>"}[kind]
        raise InputError(f"{source}column {name!r}: expected {expected}, got {t}")
    if kind == "target" and arr.null_count:
        row = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
        raise InputError(f"{where(row)}{name}: null, but a target feature needs exactly one id")
    if is_list:
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
        flat = pc.list_flatten(arr)  # respects slicing and skips null rows (unlike .values)
        if flat.null_count:
            pos = int(np.argmax(flat.is_null().to_numpy(zero_copy_only=False)))
            raise InputError(f"{where(_row_of(lengths, pos))}{name}: null id inside a list")
        values = flat.to_numpy()
    else:
        lengths = arr.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.drop_null(arr).to_numpy()
    if values.dtype == np.uint64 and len(values) and values.max() > np.uint64(INT64_MAX):
        pos = int(np.argmax(values > np.uint64(INT64_MAX)))
        raise InputError(f"{where(_row_of(lengths, pos))}{name}: id {values[pos]} does not fit in int64")
    return Jagged(lengths, values.astype(np.int64))


def _arrow_dense(col: Any, name: str, source: str, where: Where) -> np.ndarray:
    import pyarrow as pa

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        raise InputError(f"{source}column {name!r}: expected a number column, got {arr.type}")
    if arr.null_count:
        raise InputError(f"{where(int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False))))}{name}: null value")
    x = arr.to_numpy(zero_copy_only=False).astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"{where(i)}{name}: value {x[i]} is not finite (float32)")
    return x


def encode_table(spec: FeatureSpec, table: Any, source: str = "table", row0: int = 0) -> Encoded:
    """Encode a ``pyarrow.Table`` holding (at least) the feature columns.

    Args:
        source: where the rows come from (a file name), for error messages.
        row0: index of the table's first row in ``source``, for error messages.
    """
    prefix = f"{source}: "

    def where(i: int) -> str:
        return f"{source}, row {row0 + i}: "

    missing = [n for n in spec.feature_names if n not in table.column_names]
    if missing:
        raise InputError(f"{prefix}missing column(s) {missing} (has {table.column_names})")
    n = table.num_rows
    dense = np.zeros((n, len(spec.dense)), np.float32)
    for k, name in enumerate(spec.dense):
        dense[:, k] = _arrow_dense(table.column(name), name, prefix, where)
    ids = {
        name: apply_id_policy(
            _arrow_ids(table.column(name), name, spec.kind[name], prefix, where), f, spec.id_policy, where
        )
        for name, f in spec.id_features.items()
    }
    return finish(spec, dense, ids, where)
