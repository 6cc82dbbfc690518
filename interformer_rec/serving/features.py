"""Feature encoding for serving: Parquet columns, row dicts or a ranking request (one
user, many candidates) to the plain tensors an exported model takes.

Only numpy and pyarrow are imported (torch on the first ``to_tensors()``): no torchrec,
no model code.

The bad-input policy is the training reader's: Parquet tables go through the same
decode path (:mod:`interformer_rec.data.decode`), so a row scores the same whether it was
read for training or sent to the server. Row dicts and ranking requests are parsed here
(JSON types: a dense value is a number, not a bool; a pooled value an id or a list of
ids, null or ``[]`` an empty bag; a target exactly one id; a sequence a list of ids, most
recent last, null empty; ids fit in int64; a sequence float a list of numbers, one per
step, null empty), then policed, checked and truncated by that same module.

Every error is an :class:`InputError` naming the field and the row or candidate (for a
table: the source, column and row, exactly as the training reader's :class:`DataError`).

Model inputs (the exported program's signature, ``B`` rows)::

    dense             [B, n_dense]        float32
    sparse_values     [V_s]               int64   pooled ids, key-major
    sparse_lengths    [n_pooled, B]       int32
    sequence_values   [V_q]               int64   targets then sequences, key-major
    sequence_lengths  [n_unpooled, B]     int32
    sequence_floats   [V_f, n_float]      float32 only if the schema has sequence floats
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence

import numpy as np
import pyarrow as pa

from interformer_rec.arrays import DataError, Jagged, splitmix64  # noqa: F401 - re-exported
from interformer_rec.config import Schema, SequenceFeature, SequenceFloatFeature, SparseFeature, TableConfig
from interformer_rec.data import decode
from interformer_rec.data.decode import InFile, InValues, Rows

INPUT_NAMES = ("dense", "sparse_values", "sparse_lengths", "sequence_values", "sequence_lengths", "sequence_floats")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Encoded = Rows  # the serving name of decoded rows: the model's inputs as numpy arrays


class InputError(ValueError):
    """Input that breaks the schema or the bad-input policy; the message names the field."""


@contextmanager
def _input_errors() -> Iterator[None]:
    """Raise the decode path's :class:`DataError` as an :class:`InputError`."""
    try:
        yield
    except DataError as e:
        raise InputError(str(e)) from None


# --------------------------------------------------------------------------- schema


def schema_from_dict(d: Mapping[str, Any]) -> Schema:
    """Inverse of ``dataclasses.asdict(schema)``."""
    return Schema(
        labels=list(d["labels"]),
        dense=list(d.get("dense", [])),
        sparse=[SparseFeature(**f) for f in d.get("sparse", [])],
        sequence=[SequenceFeature(**s) for s in d.get("sequence", [])],
        sequence_floats=[SequenceFloatFeature(**f) for f in d.get("sequence_floats", [])],
        sequence_float_merge=d.get("sequence_float_merge", "concat"),
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
        floats: sequence float features (the columns of ``sequence_floats``).
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
        self.floats: List[str] = [f.name for f in schema.sequence_floats]
        self.max_len = schema.max_len
        self.id_policy = schema.id_policy
        self.group_key = schema.group_key
        self.kind: Dict[str, str] = {n: "dense" for n in self.dense}
        self.kind.update({f.name: "pooled" for f in self.pooled})
        self.kind.update({f.name: "target" for f in self.targets})
        self.kind.update({f.name: "sequence" for f in self.sequences})
        self.kind.update({n: "sequence_float" for n in self.floats})
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
        return [*self.dense, *self.pooled_keys, *self.unpooled_keys, *self.floats]

    def to_dict(self) -> Dict[str, Any]:
        """What ``schema.json`` holds: the schema, and the input layout derived from it."""
        return {
            "schema": asdict(self.schema),
            "inputs": {
                "dense": self.dense,
                "sparse_keys": self.pooled_keys,
                "sequence_keys": self.unpooled_keys,
                "sequence_floats": self.floats,
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
        "sequence_float": "list of numbers, one per step of the sequences (same length), most recent last",
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
        "id_policies": {f.name: spec.schema.policy_of(f.table) for f in spec.id_features.values()},
        # managed_collision and hash take any int64 id
        "id_ranges": {
            f.name: [0, f.num_embeddings]
            for f in spec.id_features.values()
            if spec.schema.policy_of(f.table) == "reject"
        },
    }


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


def _float_list(v: Any, at: str) -> List[float]:
    """One row's sequence float values from JSON/Python: a list of numbers, null empty."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        raise InputError(f"{at}: expected a list of numbers, got {_kind(v)} {_short(v)}")
    return [_dense_value(x, f"{at}[{i}]") for i, x in enumerate(v)]


def _dense_value(v: Any, at: str) -> float:
    """One dense value from JSON/Python: a number (not a bool), as a float (``inf`` if
    too large for one)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{at}: expected a number, got {_kind(v)} {_short(v)}")
    try:
        return float(v)
    except OverflowError:  # an int beyond float64
        return math.inf


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


def dense_column(values: Sequence[Any], name: str, where: InValues) -> np.ndarray:
    """``[n]`` float32 of one dense feature's raw values, checked finite."""
    x = np.array([_dense_value(v, f"{where.label(i)}.{name}") for i, v in enumerate(values)], np.float64)
    with np.errstate(over="ignore"):  # beyond float32's range: inf, which then fails
        return decode.finite(x.astype(np.float32), name, where)


def id_column(spec: FeatureSpec, values: Sequence[Any], name: str, where: InValues) -> Jagged:
    """One id feature's raw values as a policed :class:`Jagged` (not yet truncated)."""
    kind = spec.kind[name]
    rows = [_id_list(v, kind, f"{where.label(i)}.{name}") for i, v in enumerate(values)]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((x for r in rows for x in r), dtype=np.int64, count=int(lengths.sum()))
    return decode.apply_id_policy(Jagged(lengths, flat), name, spec.schema, spec.id_features[name].table, where)


def float_column(values: Sequence[Any], name: str, where: InValues) -> Jagged:
    """One sequence float's raw values as a float32 :class:`Jagged`, checked finite (not
    yet truncated)."""
    rows = [_float_list(v, f"{where.label(i)}.{name}") for i, v in enumerate(values)]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((x for r in rows for x in r), dtype=np.float64, count=int(lengths.sum()))
    return decode.finite_lists(lengths, flat, name, where)


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
    where = InValues(lambda i: f"rows[{i}]")
    with _input_errors():
        dense = np.zeros((len(rows), len(spec.dense)), np.float32)
        for k, name in enumerate(spec.dense):
            dense[:, k] = dense_column([r[name] for r in rows], name, where)
        ids = {name: id_column(spec, [r[name] for r in rows], name, where) for name in spec.id_features}
        floats = {name: float_column([r[name] for r in rows], name, where) for name in spec.floats}
        return decode.assemble(spec.schema, dense, ids, where, floats=floats)


MAX_REQUEST_ID = 128


def _check_request(spec: FeatureSpec, request: Any, max_candidates: int) -> None:
    """The shape of a ranking request (see :func:`encode_request`), not its values."""
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


def encode_request(spec: FeatureSpec, request: Any, max_candidates: int = 4096) -> Encoded:
    """Encode a ranking request ``{"user": {...}, "candidates": [{...}, ...]}``: one row per
    candidate; the ``user`` features (user, context, history) are given once and shared
    by all candidates. Every feature must be given exactly once: in ``user`` or in every
    candidate. An optional ``request_id`` (a string of at most :data:`MAX_REQUEST_ID`
    characters, echoed in the response) is checked, not encoded."""
    _check_request(spec, request, max_candidates)
    user, cands = request.get("user", {}), request["candidates"]
    cand_keys = set(cands[0])
    n = len(cands)
    in_user, in_cand = InValues(lambda i: "user"), InValues(lambda i: f"candidates[{i}]")
    with _input_errors():
        dense = np.zeros((n, len(spec.dense)), np.float32)
        for k, name in enumerate(spec.dense):
            if name in cand_keys:
                dense[:, k] = dense_column([c[name] for c in cands], name, in_cand)
            else:
                dense[:, k] = dense_column([user[name]], name, in_user)[0]
        steps = {*(q.name for q in spec.sequences), *spec.floats}
        # the user's history is cut to its max_len most recent steps *before* it is
        # shared by the n candidates: memory and time follow max_len, not the request
        lengths: Dict[str, np.ndarray] = {}  # uncut lengths of the parallel features

        def shared(j: Jagged, name: str) -> Jagged:
            if name in steps:
                lengths[name] = np.repeat(j.lengths, n)
                j = j.tail(spec.max_len)
            return j.repeat(n)

        ids: Dict[str, Jagged] = {}
        for name in spec.id_features:
            if name in cand_keys:
                ids[name] = id_column(spec, [c[name] for c in cands], name, in_cand)
            else:
                ids[name] = shared(id_column(spec, [user[name]], name, in_user), name)
        floats: Dict[str, Jagged] = {}
        for name in spec.floats:
            if name in cand_keys:
                floats[name] = float_column([c[name] for c in cands], name, in_cand)
            else:
                floats[name] = shared(float_column([user[name]], name, in_user), name)
        where = in_user if steps.isdisjoint(cand_keys) else in_cand
        if lengths:  # the parallel check on the uncut lengths, as the reader does
            given = {**ids, **floats}
            uncut = {name: Jagged(lengths[name] if name in lengths else given[name].lengths, np.zeros(0, np.int64))
                     for name in steps}
            decode.check_parallel(uncut, where)
        return decode.assemble(spec.schema, dense, ids, where, floats=floats)


# --------------------------------------------------------------------------- parquet


def encode_table(spec: FeatureSpec, table: pa.Table, source: str = "table", row0: int = 0) -> Encoded:
    """Encode a ``pyarrow.Table`` holding (at least) the feature columns, through the
    training reader's decode path (labels and group keys are not read).

    Args:
        source: where the rows come from (a file name), for error messages.
        row0: index of the table's first row in ``source``, for error messages.
    """
    with _input_errors():
        return decode.decode_table(table, spec.schema, InFile(source, row0), training=False)
