"""Data-quality report of Parquet data: ``interformer-rec inspect DATA [--config CFG]``.

One streaming pass over the row groups (memory: one row group plus fixed-size sketches)
gathers, per column: the null rate; for numbers, min / max / mean and the count of
NaN or infinite values; an estimate of the number of distinct values (a KMV sketch:
the ``k`` smallest splitmix64 hashes, exact below ``k`` distinct values, about
``1/sqrt(k)`` relative error above); for list columns, a histogram of list lengths
and the distinct elements. With a schema (``--config``) it also reports the label
rate of each label, ids outside their table (under ``id_policy: reject`` the reader
would stop there), sequences longer than ``max_len`` (their oldest steps are
dropped), parallel sequences of unequal lengths, and missing schema columns, and
lists what it finds under "problems". It also decodes every row group with the reader's
own code (``data.decode.decode_table``, the one implementation of the bad-input policy
that ``train`` and ``predict`` apply), so every file they would reject is a problem,
with the reader's message (file, column, row): ``inspect --strict`` passes only data
they accept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interformer_rec.arrays import DataError, splitmix64
from interformer_rec.data.sources import resolve_paths
from interformer_rec.config import Schema
from interformer_rec.data.decode import InFile, Paths, decode_table, open_parquet

LENGTH_BINS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]  # histogram bin lower edges


class KMV:
    """K-minimum-values distinct-count sketch over 64-bit hashes."""

    def __init__(self, k: int = 4096) -> None:
        self.k = k
        self.mins = np.zeros(0, np.uint64)  # sorted, distinct, at most k

    def add_hashes(self, h: np.ndarray) -> None:
        if not len(h):
            return
        h = np.unique(h)[: self.k]
        self.mins = np.union1d(self.mins, h)[: self.k]

    def add(self, values: np.ndarray) -> None:
        """Add int64/float64 values (floats by their bits)."""
        if values.dtype.kind == "f":
            values = values.astype(np.float64).view(np.int64)
        self.add_hashes(splitmix64(values.astype(np.int64, copy=False)))

    def estimate(self) -> int:
        n = len(self.mins)
        if n < self.k:
            return n  # exact: every distinct hash is kept
        kth = (float(self.mins[-1]) + 1.0) / 2.0**64
        return int(round((self.k - 1) / kth))


@dataclass
class ColumnStats:
    name: str
    type: str
    rows: int = 0
    nulls: int = 0
    non_finite: int = 0
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    total: float = 0.0
    count: int = 0  # numeric values seen (elements, for lists)
    distinct: KMV = field(default_factory=KMV)
    lengths: Optional[np.ndarray] = None  # [len(LENGTH_BINS)] histogram (lists)
    max_length: int = 0

    def add(self, arr: pa.Array) -> None:
        self.rows += len(arr)
        self.nulls += arr.null_count
        t = arr.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            lens = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
            if self.lengths is None:
                self.lengths = np.zeros(len(LENGTH_BINS), np.int64)
            self.lengths += np.bincount(
                np.searchsorted(LENGTH_BINS, lens, side="right") - 1, minlength=len(LENGTH_BINS)
            )
            if len(lens):
                self.max_length = max(self.max_length, int(lens.max()))
            arr = pc.list_flatten(arr)
            self.nulls_inside = getattr(self, "nulls_inside", 0) + arr.null_count
        values = pc.drop_null(arr)
        vt = values.type
        if pa.types.is_integer(vt) or pa.types.is_floating(vt) or pa.types.is_boolean(vt):
            x = values.to_numpy(zero_copy_only=False)
            if x.dtype == bool:
                x = x.astype(np.int64)
            self.distinct.add(x)
            if x.dtype.kind == "f":
                finite = np.isfinite(x)
                self.non_finite += int((~finite).sum())
                x = x[finite]
            if len(x):
                lo, hi = float(x.min()), float(x.max())
                self.minimum = lo if self.minimum is None else min(self.minimum, lo)
                self.maximum = hi if self.maximum is None else max(self.maximum, hi)
                self.total += float(x.sum(dtype=np.float64))
                self.count += len(x)
        elif pa.types.is_string(vt) or pa.types.is_binary(vt) or pa.types.is_large_string(vt):
            enc = pc.dictionary_encode(values).dictionary.to_pylist()
            import hashlib

            h = np.array(
                [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                 for v in enc], np.uint64,
            )
            self.distinct.add_hashes(h)

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "type": self.type,
            "rows": self.rows,
            "null_rate": round(self.nulls / self.rows, 6) if self.rows else None,
            "distinct_estimate": self.distinct.estimate(),
        }
        if self.count:
            d.update(min=self.minimum, max=self.maximum, mean=self.total / self.count)
        if self.non_finite:
            d["non_finite"] = self.non_finite
        if self.lengths is not None:
            d["length_histogram"] = {_bin_name(i): int(c) for i, c in enumerate(self.lengths)}
            d["max_length"] = self.max_length
            d["mean_length"] = self.count / max(self.rows - self.nulls, 1) if self.count else 0.0
            if getattr(self, "nulls_inside", 0):
                d["null_elements"] = self.nulls_inside
        return d


def _bin_name(i: int) -> str:
    lo = LENGTH_BINS[i]
    if i + 1 == len(LENGTH_BINS):
        return f"{lo}+"
    hi = LENGTH_BINS[i + 1] - 1
    return str(lo) if hi == lo else f"{lo}-{hi}"


def inspect_data(paths: Paths, schema: Optional[Schema] = None) -> Dict[str, Any]:
    """The data-quality report of ``paths`` (a file, directory or list), one streaming
    pass. See the module docstring.

    Returns:
        ``{"files", "rows", "row_groups", "columns": {name: stats}, "labels":
        {name: rate}, "schema_checks": {...}, "problems": [str]}``.
    """
    files = resolve_paths(paths)
    stats: Dict[str, ColumnStats] = {}
    rows = groups = 0
    problems: List[str] = []
    checks: Dict[str, Dict[str, int]] = {"out_of_range_ids": {}, "truncated_sequences": {},
                                         "unequal_parallel_sequences": {}}
    for path in files:
        pf = open_parquet(path)
        names = pf.schema_arrow.names
        rejected: List[str] = []  # the reader's error of each row group it rejects
        if schema is not None:
            need = set(schema.all_columns()) | ({schema.group_key} if schema.group_key else set())
            for c in sorted(need - set(names)):
                problems.append(f"{path}: schema column {c!r} is missing")
            # labels present: train's rules (labels and group key too), else predict's
            training = set(schema.labels) <= set(names)
        for g in range(pf.metadata.num_row_groups):
            try:
                table = pf.read_row_group(g)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f"{path}: row group {g} is unreadable ({e})") from None
            if schema is not None:
                try:
                    decode_table(table, schema, InFile(str(path), rows), training)
                except DataError as e:
                    rejected.append(str(e))
            rows += table.num_rows
            groups += 1
            for name in table.column_names:
                col = table.column(name).combine_chunks()
                st = stats.get(name)
                if st is None:
                    st = stats[name] = ColumnStats(name, str(col.type))
                st.add(col)
            if schema is not None:
                _schema_checks(table, schema, checks)
        if rejected:
            problems.append(
                f"the reader rejects {len(rejected)} of {pf.metadata.num_row_groups} row group(s) of {path}; "
                f"the first: {rejected[0]}"
            )
    report: Dict[str, Any] = {
        "files": [str(f) for f in files],
        "rows": rows,
        "row_groups": groups,
        "columns": {n: s.to_dict() for n, s in stats.items()},
    }
    problems += _column_problems(stats)
    if schema is not None:
        report["labels"] = _label_rates(stats, schema, problems)
        report["schema_checks"] = checks
        problems += _schema_problems(stats, schema, checks, rows)
    report["problems"] = problems
    return report


def _column_problems(stats: Dict[str, ColumnStats]) -> List[str]:
    """Columns entirely null, constant, or with NaN/infinite values."""
    problems = []
    for name, st in stats.items():
        if st.rows and st.nulls == st.rows:
            problems.append(f"column {name!r} is entirely null")
        if st.non_finite:
            problems.append(f"column {name!r} has {st.non_finite} NaN/infinite values")
        if st.rows and st.distinct.estimate() == 1 and st.nulls == 0:
            problems.append(f"column {name!r} is constant")
    return problems


def _label_rates(stats: Dict[str, ColumnStats], schema: Schema, problems: List[str]) -> Dict[str, float]:
    """The positive rate of each label; labels outside [0, 1] or constant go to ``problems``."""
    rates: Dict[str, float] = {}
    for lab in schema.labels:
        st = stats.get(lab)
        if st is None or not st.count:
            continue
        rate = st.total / st.count
        rates[lab] = round(rate, 6)
        if st.minimum is not None and (st.minimum < 0 or st.maximum > 1):
            problems.append(f"label {lab!r} has values outside [0, 1] ({st.minimum}..{st.maximum})")
        elif rate in (0.0, 1.0):
            problems.append(f"label {lab!r} is constant ({rate})")
    return rates


def _schema_problems(
    stats: Dict[str, ColumnStats], schema: Schema, checks: Dict[str, Dict[str, int]], rows: int
) -> List[str]:
    """What the reader would reject or drop, from the stats and the schema checks."""
    problems = []
    for name in schema.dense + schema.labels:
        st = stats.get(name)
        if st is not None and st.nulls:
            problems.append(f"{name!r}: {st.nulls} null values (the reader rejects them)")
    for f in schema.target_features:
        st = stats.get(f.name)
        if st is not None and st.nulls:
            problems.append(f"target feature {f.name!r}: {st.nulls} nulls (the reader rejects them)")
    tables = {f.name: f.table for f in [*schema.sparse, *schema.sequence]}
    for c, n in checks["out_of_range_ids"].items():
        if n and schema.policy_of(tables[c]) == "reject":
            problems.append(f"{c!r}: {n} ids outside its table (id_policy 'reject' stops the reader)")
    for c, n in checks["truncated_sequences"].items():
        if n:
            problems.append(f"{c!r}: {n} rows ({n / max(rows, 1):.1%}) longer than max_len, oldest steps dropped")
    for c, n in checks["unequal_parallel_sequences"].items():
        if n:
            problems.append(f"{c}: {n} rows with unequal parallel sequence lengths (the reader rejects them)")
    return problems


def _schema_checks(table: pa.Table, schema: Schema, checks: Dict[str, Dict[str, int]]) -> None:
    names = set(table.column_names)
    for f in [*schema.sparse, *schema.sequence]:
        if f.name not in names:
            continue
        col = table.column(f.name).combine_chunks()
        size = schema.table(f.table).num_embeddings
        flat = pc.list_flatten(col) if pa.types.is_list(col.type) else col
        if pa.types.is_integer(flat.type):
            v = pc.drop_null(flat).to_numpy()
            n = int(((v < 0) | (v >= size)).sum())
            checks["out_of_range_ids"][f.name] = checks["out_of_range_ids"].get(f.name, 0) + n
    seq_lens = {}
    for s in schema.sequence:
        if s.name in names and pa.types.is_list(table.column(s.name).type):
            lens = pc.fill_null(pc.list_value_length(table.column(s.name).combine_chunks()), 0).to_numpy()
            seq_lens[s.name] = lens
            t = checks["truncated_sequences"]
            t[s.name] = t.get(s.name, 0) + int((lens > s.max_len).sum())
    for f in schema.sequence_floats:  # parallel to the sequences too
        if f.name in names and pa.types.is_list(table.column(f.name).type):
            seq_lens[f.name] = pc.fill_null(pc.list_value_length(table.column(f.name).combine_chunks()), 0).to_numpy()
    if len(seq_lens) > 1:
        ref_name, ref = next(iter(seq_lens.items()))
        key = "/".join(seq_lens)
        unequal = np.zeros(len(ref), bool)
        for lens in seq_lens.values():
            unequal |= lens != ref
        u = checks["unequal_parallel_sequences"]
        u[key] = u.get(key, 0) + int(unequal.sum())


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
            return f"{x:.3g}"
        return f"{x:.4g}"
    return str(x)


def format_report(report: Dict[str, Any]) -> str:
    """The report as text tables."""
    out = [f"{report['rows']} rows in {len(report['files'])} file(s), {report['row_groups']} row groups"]
    head = f"{'column':<24} {'type':<14} {'null%':>7} {'distinct~':>10} {'min':>10} {'max':>10} {'mean':>10}"
    out += ["", head, "-" * len(head)]
    for name, d in report["columns"].items():
        null = "-" if d["null_rate"] is None else f"{100 * d['null_rate']:.2f}"
        out.append(
            f"{name[:24]:<24} {d['type'][:14]:<14} {null:>7} {d['distinct_estimate']:>10} "
            f"{_fmt(d.get('min')):>10} {_fmt(d.get('max')):>10} {_fmt(d.get('mean')):>10}"
        )
    lists = {n: d for n, d in report["columns"].items() if "length_histogram" in d}
    if lists:
        out += ["", "list lengths (rows per length bin):"]
        bins = list(next(iter(lists.values()))["length_histogram"])
        out.append(f"{'column':<24} " + " ".join(f"{b:>8}" for b in bins) + f" {'max':>6} {'mean':>7}")
        for n, d in lists.items():
            out.append(
                f"{n[:24]:<24} " + " ".join(f"{d['length_histogram'][b]:>8}" for b in bins)
                + f" {d['max_length']:>6} {d['mean_length']:>7.2f}"
            )
    if report.get("labels"):
        out += ["", "label rate: " + ", ".join(f"{k} {v:.4f}" for k, v in report["labels"].items())]
    out += ["", "problems:" if report["problems"] else "problems: none found"]
    out += [f"  - {p}" for p in report["problems"]]
    return "\n".join(out)


def report_json(report: Dict[str, Any]) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return None if math.isnan(o) else float(o)
        raise TypeError(type(o))

    return json.dumps(report, indent=2, default=default)
