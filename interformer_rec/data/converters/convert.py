"""Streaming text -> Parquet conversion, shared by the raw-format converters
(``criteo.py``, ``taobao.py``, ``amazon.py``).

Streaming
---------
A raw file is read in blocks of about ``block_bytes`` (``pyarrow.input_stream``, so
``.gz``/``.bz2``/``.zst`` inputs are decompressed on the fly), cut at the last newline,
and tokenised with numpy (no per-row Python, see ``text.py``): a block's lines are split
at the format's delimiter into fields, and fields are parsed into integers / hex ids /
floats by vectorised code that also says, per field, whether it is well formed. Parsed
rows are buffered and written with ``pyarrow.parquet.ParquetWriter`` one row group
(``row_group_size`` rows) at a time. Memory is bounded by one block plus one row group,
whatever the input size.

Outputs are written to a hidden temporary file beside the target
(``.<name>.<pid>.tmp``) and renamed into place only when the whole conversion has
succeeded; on any error, including an interrupt, the temporary files are removed. So a
failed conversion never leaves a file that looks complete. A full disk or an unreadable
input raises :class:`ConversionError` naming the file.

Bad-row policy
--------------
A *bad row* is a line that the format's parser cannot turn into exactly one
schema-conforming row: wrong number of fields, a token that is not a number of the
expected kind (``"12a"``, ``"1e3"`` for an integer, ``"nan"``, an over-long number, a
hex id of the wrong width), a missing required field (e.g. the label), a label outside
{0, 1}, parallel lists of unequal lengths, an over-long line, or a line with invalid
bytes in a numeric field. Missing values that the format *allows* (each converter lists
them) are not bad rows; they get the documented fill value.

Each bad row is counted, logged with ``file:line`` and the reason (the first
``log_first`` at WARNING, the rest at DEBUG) and written to a report file
``<out_dir>/bad_rows.txt`` (``file:line: reason``). It is skipped, never repaired. The
conversion fails with a :class:`ConversionError` (and leaves no output file) as soon as
the count exceeds ``max_bad_rows``, or at the end if the bad rows are more than
``max_bad_fraction`` of the lines read.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from interformer_rec.arrays import ConversionError
from interformer_rec.data.converters.text import Block, count_lines, read_blocks

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


@dataclass
class BadRowPolicy:
    """How many malformed input lines a conversion may skip.

    Attributes:
        max_bad_rows: fail as soon as more lines than this are bad (``None``: no cap).
        max_bad_fraction: fail at the end if more than this fraction of the lines read
            were bad.
        log_first: log the first this many bad rows at WARNING (all at DEBUG).
    """

    max_bad_rows: Optional[int] = None
    max_bad_fraction: float = 0.001
    log_first: int = 20

    def __post_init__(self) -> None:
        if self.max_bad_rows is not None and self.max_bad_rows < 0:
            raise ValueError(f"max_bad_rows must be >= 0, got {self.max_bad_rows}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


class BadRows:
    """Counts, logs and reports bad rows under a :class:`BadRowPolicy`."""

    def __init__(self, policy: BadRowPolicy, report: Path) -> None:
        self.policy = policy
        self.report = report
        self.count = 0
        self.first: List[str] = []  # the first few, for the summary and error messages
        self._fh: Any = None

    def add(self, path: Path, line: int, reason: str) -> None:
        self.count += 1
        msg = f"{path}:{line}: {reason}"
        if self._fh is None:
            self._fh = open(self.report, "w")
        self._fh.write(msg + "\n")
        if len(self.first) < 10:
            self.first.append(msg)
        level = logging.WARNING if self.count <= self.policy.log_first else logging.DEBUG
        log.log(level, "bad row skipped: %s", msg)
        cap = self.policy.max_bad_rows
        if cap is not None and self.count > cap:
            raise ConversionError(
                f"more than max_bad_rows={cap} malformed rows; the last: {msg} "
                f"(all in {self.report}; no output written)"
            )

    def check(self, lines: int) -> None:
        """Raise if the bad rows are more than ``max_bad_fraction`` of ``lines``."""
        frac = self.count / max(lines, 1)
        if self.count and frac > self.policy.max_bad_fraction:
            raise ConversionError(
                f"{self.count} of {lines} rows malformed ({frac:.3%} > max_bad_fraction "
                f"{self.policy.max_bad_fraction:.3%}); first: {self.first[0]} "
                f"(all in {self.report}; no output written)"
            )

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- output


def _io_error(path: Path, doing: str, e: BaseException) -> ConversionError:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "No space left" in str(e):
        return ConversionError(f"{path}: disk full while {doing} ({e}); partial output removed")
    return ConversionError(f"{path}: I/O error while {doing} ({e}); partial output removed")


class AtomicParquetWriter:
    """A ``ParquetWriter`` into a hidden temporary file beside ``path``, renamed into
    place by :meth:`commit` (after an fsync) and deleted by :meth:`abort`."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.schema = schema
        self.rows = 0
        self._writer: Optional[pq.ParquetWriter] = None

    def write(self, table: pa.Table) -> None:
        try:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.tmp, self.schema)
            self._writer.write_table(table, row_group_size=max(len(table), 1))
        except OSError as e:
            raise _io_error(self.tmp, f"writing {self.path.name}", e) from None
        self.rows += len(table)

    def commit(self) -> None:
        try:
            if self._writer is None:  # no rows: still write a valid, empty file
                self._writer = pq.ParquetWriter(self.tmp, self.schema)
            self._writer.close()
            self._writer = None
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise _io_error(self.tmp, f"finishing {self.path.name}", e) from None

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: BLE001 - cleaning up after an error already raised
            pass
        self._writer = None
        self.tmp.unlink(missing_ok=True)


def write_table_atomic(table: pa.Table, path: Union[str, Path], row_group_size: int) -> None:
    """``pq.write_table`` through :class:`AtomicParquetWriter`: a process killed while
    writing leaves the previous ``path`` (or none), never a truncated file."""
    writer = AtomicParquetWriter(Path(path), table.schema)
    try:
        for start in range(0, table.num_rows, row_group_size):
            writer.write(table.slice(start, row_group_size))
        writer.commit()
    except BaseException:
        writer.abort()
        raise


# --------------------------------------------------------------------------- parsed blocks


@dataclass
class Parsed:
    """A parsed block: the good rows as a table, and the bad ones.

    Attributes:
        table: the good rows, in input order, with the format's Arrow schema.
        bad: ``[n]`` bool over the block's lines.
        reasons: ``{line index in block: reason}`` for every bad line.
        missing: per column, how many of the good rows had the value missing in the
            raw text (and got the format's fill value), for the summary.
    """

    table: pa.Table
    bad: np.ndarray
    reasons: Dict[int, str]
    missing: Dict[str, int] = field(default_factory=dict)  # filled-in missing values, good rows


class Reasons:
    """Collects the first reason per bad row, vectorised over columns."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, bool)
        self.reasons: Dict[int, str] = {}

    def add(self, rows: np.ndarray, why: Callable[[int], str]) -> None:
        """Mark ``rows`` (``[n]`` bool) bad; ``why(i)`` is called only for rows that have
        no reason yet."""
        new = rows & ~self.bad
        for i in np.flatnonzero(new):
            self.reasons[int(i)] = why(int(i))
        self.bad |= rows


class TextFormat:
    """A line-oriented raw format. Subclasses set ``name``, ``schema`` (Arrow) and
    ``label`` (the label column) and implement :meth:`parse`; a header line (if
    ``header``) is handed to :meth:`set_header` first."""

    name: str = ""
    schema: pa.Schema
    label: str = "label"
    header: bool = False

    def set_header(self, text: str, path: Path) -> None:  # pragma: no cover - formats with headers override
        raise NotImplementedError

    def parse(self, block: Block) -> Parsed:
        raise NotImplementedError


# --------------------------------------------------------------------------- driver


def _bounds(lines: int, valid_frac: float, test_frac: float) -> Dict[str, Tuple[int, int]]:
    """1-based inclusive line ranges of each split, by position: train first, then
    valid, then test (the most recent rows, when the file is in time order)."""
    n_test = int(round(lines * test_frac))
    n_valid = int(round(lines * valid_frac))
    n_train = lines - n_valid - n_test
    out = {"train": (1, n_train)}
    if valid_frac > 0:
        out["valid"] = (n_train + 1, n_train + n_valid)
    if test_frac > 0:
        out["test"] = (n_train + n_valid + 1, lines)
    return out


ROW_GROUP_BYTES = 32 << 20  # Arrow bytes of buffered rows that close a row group


class _Output:
    """One output file: buffers parsed tables and writes row groups of
    ``row_group_size`` rows, or fewer when they reach ``ROW_GROUP_BYTES`` (wide rows,
    long lists), so the buffer stays bounded."""

    def __init__(self, path: Path, schema: pa.Schema, label: str, row_group_size: int) -> None:
        self.writer = AtomicParquetWriter(path, schema)
        self.row_group_size = row_group_size
        self.label = label
        self.pending: List[pa.Table] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.positives = 0.0

    def add(self, table: pa.Table) -> None:
        if not len(table):
            return
        self.positives += float(pc.sum(table.column(self.label)).as_py() or 0)
        self.pending.append(table)
        self.pending_rows += len(table)
        self.pending_bytes += table.nbytes
        while self.pending_rows >= self.row_group_size or self.pending_bytes >= ROW_GROUP_BYTES:
            t = pa.concat_tables(self.pending)  # zero-copy
            per_row = max(self.pending_bytes / max(self.pending_rows, 1), 1.0)
            n = max(1, min(self.row_group_size, int(ROW_GROUP_BYTES / per_row)))
            self.writer.write(t.slice(0, n))
            rest = t.slice(n)
            self.pending = [rest] if len(rest) else []
            self.pending_rows = len(rest)
            self.pending_bytes = int(per_row * len(rest))

    def finish(self) -> None:
        if self.pending_rows:
            self.writer.write(pa.concat_tables(self.pending))
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0

    def summary(self) -> Dict[str, Any]:
        rows = self.writer.rows
        return {
            "path": str(self.writer.path),
            "rows": rows,
            "positive_rate": round(self.positives / rows, 4) if rows else None,
        }


def _check_inputs(
    inputs: Union[PathLike, Sequence[PathLike]], valid_frac: float, test_frac: float, row_group_size: int
) -> Tuple[List[Path], List[str]]:
    """The input files (each readable) and their name stems (distinct)."""
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not paths:
        raise ConversionError("no input files")
    for p in paths:
        if not p.is_file():
            raise ConversionError(f"{p}: no such file" + (" (a directory)" if p.is_dir() else ""))
        if not os.access(p, os.R_OK):
            raise ConversionError(f"{p}: not readable (permission denied)")
    if (valid_frac > 0 or test_frac > 0) and len(paths) != 1:
        raise ConversionError("valid_frac/test_frac split needs exactly one input file")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 <= valid_frac, test_frac and a sum < 1: {valid_frac}, {test_frac}")
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    stems = [p.name.split(".")[0] for p in paths]
    if len(set(stems)) != len(stems):
        raise ConversionError(f"input files share a name stem, outputs would collide: {stems}")
    return paths, stems


def _after_header(block: Block, fmt: TextFormat, path: Path, max_line_bytes: int) -> Block:
    """Hand the block's first line to ``fmt.set_header``; the block's other lines."""
    if block.too_long[0]:
        raise ConversionError(f"{path}:1: header line longer than {max_line_bytes} bytes")
    fmt.set_header(block.text(0, limit=1 << 20), path)
    keep = slice(1, None)
    return Block(block.buf, block.starts[keep], block.ends[keep], block.line0 + 1, block.too_long[keep])


def _good_rows(
    block: Block, parsed: Parsed, bad: BadRows, path: Path, max_line_bytes: int
) -> Tuple[pa.Table, np.ndarray]:
    """Report the block's bad lines; the good rows and their ``[m]`` line numbers."""
    for i in np.flatnonzero(parsed.bad | block.too_long):
        why = (f"line longer than max_line_bytes={max_line_bytes}" if block.too_long[i]
               else parsed.reasons.get(int(i), "malformed"))
        bad.add(path, int(block.line0 + i), why)
    good_lines = block.lines[~parsed.bad]
    table = parsed.table
    if block.too_long.any():  # over-long lines parse as empty; drop them too
        keep_rows = ~block.too_long[~parsed.bad]
        table, good_lines = table.filter(pa.array(keep_rows)), good_lines[keep_rows]
    return table, good_lines


def _convert_file(
    fmt: TextFormat,
    path: Path,
    outputs: Dict[str, _Output],
    bounds: Optional[Dict[str, Tuple[int, int]]],
    bad: BadRows,
    missing: Dict[str, int],
    block_bytes: int,
    max_line_bytes: int,
) -> int:
    """Parse ``path`` block by block into ``outputs`` (one per split of ``bounds``, or
    the single one); returns the data lines read. Counts filled-in values in ``missing``."""
    lines_read = 0
    header_pending = fmt.header
    for block in read_blocks(path, block_bytes, max_line_bytes):
        if header_pending:
            block, header_pending = _after_header(block, fmt, path, max_line_bytes), False
            if not len(block):
                continue
        lines_read += len(block)
        parsed = fmt.parse(block)
        for c, k in parsed.missing.items():
            missing[c] = missing.get(c, 0) + int(k)
        table, good_lines = _good_rows(block, parsed, bad, path, max_line_bytes)
        if bounds is None:
            next(iter(outputs.values())).add(table)
            continue
        data_line = good_lines - int(fmt.header)  # data line k is file line k + header
        for name, (lo, hi) in bounds.items():
            sel = (data_line >= lo) & (data_line <= hi)
            if sel.any():
                outputs[name].add(table.filter(pa.array(sel)))
    if header_pending:
        raise ConversionError(f"{path}: empty file, expected a header line")
    for o in outputs.values():
        o.finish()
    return lines_read


def convert_text(
    fmt: TextFormat,
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    policy: Optional[BadRowPolicy] = None,
    row_group_size: int = 65536,
    block_bytes: int = 1 << 20,
    max_line_bytes: int = 1 << 24,
    valid_frac: float = 0.0,
    test_frac: float = 0.0,
) -> Dict[str, Any]:
    """Convert raw text files of ``fmt`` to Parquet in ``out_dir``, streaming.

    Without ``valid_frac``/``test_frac``, each input ``<stem>.<ext>`` becomes
    ``<out_dir>/<stem>.parquet``. With them (one input only), its lines are split by
    position into ``train``/``valid``/``test.parquet``: the last ``test_frac`` of the
    lines go to test, the ``valid_frac`` before them to valid (DLRM's split of the
    time-ordered Criteo file); this takes one extra pass to count the lines.

    Returns:
        ``{"format", "outputs": {name: {"path", "rows", "positive_rate"}},
        "lines", "bad_rows", "bad_rows_report", "first_bad_rows", "missing_rates"
        (per column, the fraction of written rows whose raw value was missing and
        filled in), "seconds", "rows_per_s"}``.
    """
    t0 = time.perf_counter()
    paths, stems = _check_inputs(inputs, valid_frac, test_frac, row_group_size)
    split = valid_frac > 0 or test_frac > 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "bad_rows.txt"
    report.unlink(missing_ok=True)
    bad = BadRows(policy or BadRowPolicy(), report)
    outputs: Dict[str, _Output] = {}
    lines_read = 0
    missing: Dict[str, int] = {}
    try:
        for path, stem in zip(paths, stems):
            bounds = _bounds(count_lines(path) - int(fmt.header), valid_frac, test_frac) if split else None
            mine = {name: _Output(out_dir / f"{name}.parquet", fmt.schema, fmt.label, row_group_size)
                    for name in (bounds or [stem])}
            outputs.update(mine)
            lines_read += _convert_file(fmt, path, mine, bounds, bad, missing, block_bytes, max_line_bytes)
        bad.check(lines_read)
        for o in outputs.values():
            o.writer.commit()
    except BaseException:
        for o in outputs.values():
            o.writer.abort()
        raise
    finally:
        bad.close()
    seconds = time.perf_counter() - t0
    if bad.count:
        log.warning("%d malformed rows skipped (listed in %s)", bad.count, report)
    return {
        "format": fmt.name,
        "outputs": {k: o.summary() for k, o in outputs.items()},
        "lines": lines_read,
        "bad_rows": bad.count,
        "bad_rows_report": str(report) if bad.count else None,
        "first_bad_rows": bad.first,
        "missing_rates": {
            c: round(k / max(lines_read - bad.count, 1), 6) for c, k in missing.items() if k
        },
        "seconds": round(seconds, 3),
        "rows_per_s": round(lines_read / seconds) if seconds > 0 else None,
    }
