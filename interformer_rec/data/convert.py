"""Streaming text -> Parquet conversion, shared by the raw-format converters
(``criteo.py``, ``taobao.py``, ``amazon.py``).

Streaming
---------
A raw file is read in blocks of about ``block_bytes`` (``pyarrow.input_stream``, so
``.gz``/``.bz2``/``.zst`` inputs are decompressed on the fly), cut at the last newline,
and tokenised with numpy (no per-row Python): a block's lines are split at the format's
delimiter into fields, and fields are parsed into integers / hex ids / floats by
vectorised code that also says, per field, whether it is well formed. Parsed rows are
buffered and written with ``pyarrow.parquet.ParquetWriter`` one row group
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
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from interformer_rec.arrays import DataError, Jagged, gather

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


class ConversionError(DataError):
    """A conversion that cannot finish: too many bad rows, an unreadable input, a full
    disk. No output file is left behind."""


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


# --------------------------------------------------------------------------- reading


@dataclass
class Block:
    """Complete lines of a raw file, as byte spans.

    Attributes:
        buf: ``[nbytes]`` uint8, the block's bytes.
        starts, ends: ``[n]`` int64 span of each line in ``buf`` (newline and a
            trailing ``\\r`` excluded).
        line0: 1-based line number of the first line in its file.
        too_long: ``[n]`` bool, lines cut because they exceeded ``max_line_bytes``
            (they are bad rows; their span is empty).
    """

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    line0: int
    too_long: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lines(self) -> np.ndarray:
        """``[n]`` 1-based line numbers."""
        return self.line0 + np.arange(len(self), dtype=np.int64)

    def text(self, i: int, limit: int = 120) -> str:
        s, e = int(self.starts[i]), int(self.ends[i])
        raw = self.buf[s : min(e, s + limit)].tobytes().decode("utf-8", "replace")
        return raw + ("..." if e - s > limit else "")


def _line_spans(buf: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Spans of the newline-terminated lines of ``buf`` (``buf`` ends with ``\\n``)."""
    nl = np.flatnonzero(buf == 10)
    starts = np.empty(len(nl), np.int64)
    starts[0:1] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    return starts, ends - cr


def read_blocks(
    path: Path, block_bytes: int = 1 << 20, max_line_bytes: int = 1 << 24
) -> Iterator[Block]:
    """The lines of ``path`` in blocks of about ``block_bytes`` (the last line may lack a
    newline). A line longer than ``max_line_bytes`` is returned as an empty span flagged
    ``too_long`` (its bytes are dropped as they stream by), so memory stays bounded."""
    try:
        stream = pa.input_stream(str(path), compression="detect")
    except (OSError, pa.ArrowException) as e:
        raise ConversionError(f"{path}: cannot open for reading ({e})") from None
    line = 1  # number of the first line not yet yielded
    carry = b""  # the unfinished line after the last newline
    skipping = False  # inside an over-long line whose bytes are being dropped
    with stream:
        while True:
            try:
                data = stream.read(block_bytes)
            except (OSError, pa.ArrowException) as e:
                raise ConversionError(f"{path}: read error near line {line} ({e})") from None
            if not data:
                break
            if skipping:
                k = data.find(b"\n")
                if k < 0:
                    continue
                yield _long_line(line)
                line += 1
                skipping = False
                data = data[k + 1 :]
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
            else:
                carry = data[cut + 1 :]
                block = _block(data, cut + 1, line, max_line_bytes)
                line += len(block)
                yield block
            if len(carry) > max_line_bytes:
                carry, skipping = b"", True
    if skipping:
        yield _long_line(line)
    elif carry:
        yield _block(carry + b"\n", len(carry) + 1, line, max_line_bytes)


def _block(data: bytes, size: int, line0: int, max_line_bytes: int) -> Block:
    buf = np.frombuffer(data, np.uint8, size)
    starts, ends = _line_spans(buf)
    too_long = (ends - starts) > max_line_bytes
    if too_long.any():
        ends = np.where(too_long, starts, ends)
    return Block(buf, starts, ends, line0, too_long)


def _long_line(line: int) -> Block:
    z = np.zeros(1, np.int64)
    return Block(np.zeros(1, np.uint8), z, z.copy(), line, np.ones(1, bool))


def count_lines(path: Path, block_bytes: int = 1 << 24) -> int:
    """Lines of ``path`` (a last line without newline counts), in one streaming pass."""
    n, last = 0, b"\n"
    try:
        with pa.input_stream(str(path), compression="detect") as s:
            while True:
                data = s.read(block_bytes)
                if not data:
                    break
                n += data.count(b"\n")
                last = data[-1:]
    except (OSError, pa.ArrowException) as e:
        raise ConversionError(f"{path}: cannot read ({e})") from None
    return n + (last != b"\n")


# --------------------------------------------------------------------------- tokenising


@dataclass
class Fields:
    """Spans split at a delimiter: span ``i`` has fields ``offsets[i]:offsets[i+1]``.

    Attributes:
        starts, ends: ``[F]`` int64 byte span of every field.
        counts: ``[n]`` fields per span.
        offsets: ``[n + 1]``.
    """

    starts: np.ndarray
    ends: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.zeros(len(self.counts) + 1, np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])

    def grid(self, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """``[n, width]`` starts and ends, fields past a span's count empty."""
        idx = self.offsets[:-1, None] + np.arange(width)
        have = np.arange(width) < self.counts[:, None]
        idx = np.where(have, idx, 0)
        s = np.where(have, self.starts[idx] if len(self.starts) else 0, 0)
        e = np.where(have, self.ends[idx] if len(self.ends) else 0, 0)
        return s, e


def split(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, delim: bytes,
          empty_is_none: bool = False) -> Fields:
    """Split each span ``[starts[i], ends[i])`` of ``buf`` at ``delim`` (one byte). The
    spans may come in any order (and repeat); each is split on its own bytes only.

    A span of length 0 has one empty field, or none if ``empty_is_none`` (lists).
    """
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    d = np.flatnonzero(buf == ord(delim))
    lo = np.searchsorted(d, starts, side="left")  # first delimiter at or after the start
    inner = np.searchsorted(d, ends, side="left") - lo  # delimiters inside the span
    inner = np.maximum(inner, 0)
    counts = inner + 1
    if empty_is_none:
        counts = np.where(ends > starts, counts, 0)
    dd = gather(d, lo, np.where(counts > 0, inner, 0))  # each span's delimiters, concatenated
    total = int(counts.sum())
    offs = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(counts, out=offs[1:])
    fs = np.empty(total, np.int64)
    fe = np.empty(total, np.int64)
    has = counts > 0
    first = offs[:-1][has]
    last = offs[1:][has] - 1
    other = np.ones(total, bool)
    other[first] = False
    fs[first] = starts[has]
    fs[other] = dd + 1
    other = np.ones(total, bool)
    other[last] = False
    fe[last] = ends[has]
    fe[other] = dd
    return Fields(fs, fe, counts)


_POW10 = 10 ** np.arange(18, -1, -1, dtype=np.int64)  # 10^18 .. 10^0
_MAX_DIGITS = 18  # always fits int64


def _window(buf: np.ndarray, s: np.ndarray, e: np.ndarray, width: int, fill: int) -> np.ndarray:
    """``[m, width]`` uint8: the last ``width`` bytes of each span ``[s, e)``, left-filled
    with ``fill`` where the span is shorter."""
    m = len(s)
    lead = width - (e - s)  # positions before the span start
    if len(buf) >= width:
        # every width-byte window of buf as a view; one row gather per span
        win = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width), strides=(1, 1))
        out = win[np.clip(e - width, 0, len(buf) - width)]
        early = e < width  # spans ending before byte `width`: shift the view right
        if early.any():
            k = np.flatnonzero(early)
            shift = (width - e[k])[:, None]
            cols = np.arange(width) - shift
            out[k] = np.where(cols >= 0, buf[np.clip(cols, 0, len(buf) - 1)], np.uint8(fill))
    else:
        cols = e[:, None] - width + np.arange(width)
        out = np.where(cols >= 0, buf[np.clip(cols, 0, max(len(buf) - 1, 0))] if len(buf) else 0,
                       np.uint8(fill)).astype(np.uint8)
    if m and lead.max() > 0:
        np.putmask(out, np.arange(width) < lead[:, None], np.uint8(fill))
    return out


_CHUNK = 1 << 16  # spans parsed at once: bounds the transient [chunk, width] arrays


def _chunked(fn: Callable[..., Tuple[np.ndarray, ...]], buf: np.ndarray, s: np.ndarray, e: np.ndarray,
             *args: Any) -> Tuple[np.ndarray, ...]:
    s = np.asarray(s, np.int64)
    e = np.asarray(e, np.int64)
    if len(s) <= _CHUNK:
        return fn(buf, s, e, *args)
    parts = [fn(buf, s[i : i + _CHUNK], e[i : i + _CHUNK], *args) for i in range(0, len(s), _CHUNK)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def parse_int(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decimal integers ``-?[0-9]{1,18}`` in spans ``[s, e)``.

    Returns:
        ``values [m]`` int64 (0 where not ok), ``ok [m]`` bool (well formed),
        ``empty [m]`` bool (zero-length span; not ok).
    """
    return _chunked(_parse_int, buf, s, e)  # type: ignore[return-value]


_U = np.uint64
_HIGH = _U(0x8080808080808080)
_LOW7 = _U(0x7F7F7F7F7F7F7F7F)
_ZEROS = _U(0x3030303030303030)


def _bad_digit_words(w: np.ndarray) -> np.ndarray:
    """Per uint64 word of 8 bytes ``b - '0'`` (``[m, k]``): some byte > 9 (SWAR)."""
    return (((w & _LOW7) + _U(0x7676767676767676)) | w) & _HIGH != 0


def _eight_digits(w: np.ndarray) -> np.ndarray:
    """The value of 8 decimal digits per uint64 word (bytes ``b - '0'``, the first digit
    in the lowest byte), as in simdjson's parse_eight_digits."""
    w = (w * _U(10) + (w >> _U(8))) & _U(0x00FF00FF00FF00FF)
    w = (w * _U(100) + (w >> _U(16))) & _U(0x0000FFFF0000FFFF)
    return (w * _U(10000) + (w >> _U(32))) & _U(0xFFFFFFFF)


def _parse_int(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = e - s
    empty = n == 0
    if not len(s):
        return np.zeros(0, np.int64), np.zeros(0, bool), empty
    first = buf.take(s, mode="clip") if len(buf) else np.zeros(len(s), np.uint8)
    neg = (n >= 2) & (first == ord("-"))
    s2 = s + neg
    digits_n = e - s2
    width = 8 * -(-int(min(max(int(digits_n.max()), 1), _MAX_DIGITS)) // 8)  # 8, 16 or 24
    raw = _window(buf, s2, e, width, ord("0"))  # [m, width], left-filled with '0'
    words = raw.view(np.uint64) - _ZEROS  # [m, width / 8]; bytes wrap for non-digits
    bad = np.zeros(len(s), bool)
    value = np.zeros(len(s), np.uint64)
    for k in range(words.shape[1]):
        bad |= _bad_digit_words(words[:, k])
        value = value * _U(100_000_000) + _eight_digits(words[:, k])
    ok = ~bad & (digits_n >= 1) & (digits_n <= _MAX_DIGITS)
    values = np.where(ok, value.astype(np.int64), 0)
    return np.where(neg, -values, values), ok, empty


_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def parse_hex(
    buf: np.ndarray, s: np.ndarray, e: np.ndarray, width: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex ids of exactly ``width`` (<= 16) digits in spans ``[s, e)``, as int64 (the
    uint64 value's bits). Returns ``values``, ``ok``, ``empty`` as :func:`parse_int`."""
    return _chunked(_parse_hex, buf, s, e, width)  # type: ignore[return-value]


def _parse_hex(
    buf: np.ndarray, s: np.ndarray, e: np.ndarray, width: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = e - s
    empty = n == 0
    if len(buf) >= width:
        win = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - width + 1, width), strides=(1, 1))
        nib = _HEX[win[np.minimum(s, len(buf) - width)]]  # first `width` bytes from the start
    else:
        nib = _HEX[_window(buf, s, e, width, ord("0"))]
    if width == 8:  # SWAR: one uint64 word per id
        w = np.ascontiguousarray(nib).view(np.uint64)[:, 0]
        ok = (n == width) & ((w & _HIGH) == 0)  # invalid bytes map to 255
        w = np.where(ok, w, _U(0)).byteswap()  # first digit in the top byte
        w = (w | (w >> _U(4))) & _U(0x00FF00FF00FF00FF)
        w = (w | (w >> _U(8))) & _U(0x0000FFFF0000FFFF)
        w = (w | (w >> _U(16))) & _U(0x00000000FFFFFFFF)
        return w.view(np.int64), ok, empty
    ok = (n == width) & (nib < 16).all(axis=1)
    nib[~ok] = 0
    values = np.zeros(len(s), np.uint64)
    for k in range(width):  # Horner, one column at a time
        values = (values << np.uint64(4)) | nib[:, k].astype(np.uint64)
    return values.view(np.int64), ok, empty


def to_binary(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> pa.Array:
    """The spans as a ``pa.binary()`` array."""
    lengths = (e - s).astype(np.int64)
    data = gather(buf, s.astype(np.int64), lengths)
    offsets = np.zeros(len(s) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(s), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


_FLOAT_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def parse_float(
    buf: np.ndarray, s: np.ndarray, e: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Finite decimal floats (``1``, ``-2.5``, ``.5``, ``3e-2``; not ``nan``/``inf``)
    in spans ``[s, e)``. Returns ``values [m]`` float64, ``ok``, ``empty``."""
    arr = to_binary(buf, s, e)
    ok = pc.match_substring_regex(arr, _FLOAT_RE).to_numpy(zero_copy_only=False)
    text = pc.cast(pc.if_else(pa.array(ok), arr, pa.scalar(b"0", pa.binary())), pa.string())
    values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False).copy()
    ok &= np.isfinite(values)  # e.g. 1e999
    values[~ok] = 0.0
    return values, ok, (e - s) == 0


def equals(buf: np.ndarray, s: np.ndarray, e: np.ndarray, token: bytes) -> np.ndarray:
    """``[m]`` bool: span equals ``token``."""
    match = (e - s) == len(token)
    if not token or not match.any():
        return match
    idx = np.flatnonzero(match)  # only spans of the right length are compared
    w = _window(buf, s[idx], e[idx], len(token), 0)
    match[idx] = (w == np.frombuffer(token, np.uint8)).all(axis=1)
    return match


def parse_label(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Binary labels: exactly ``0`` or ``1`` (not ``-0``, ``01``, ``1.0``). Returns
    ``values [m]`` int8 and ``ok [m]``."""
    one = equals(buf, s, e, b"1")
    ok = one | equals(buf, s, e, b"0")
    return one.astype(np.int8), ok


def rows_with(flags: np.ndarray, row_of: np.ndarray, n: int) -> np.ndarray:
    """``[n]`` bool: rows owning at least one set flag (``row_of [m]`` row of each)."""
    return np.bincount(row_of[flags], minlength=n) > 0


def parse_int_lists(
    buf: np.ndarray, s: np.ndarray, e: np.ndarray, sep: bytes
) -> Tuple[Jagged, np.ndarray, np.ndarray]:
    """Lists of decimal integers joined by ``sep`` in spans ``[s, e)`` (an empty span is
    an empty list). Returns the lists, ``bad [m]`` (some element malformed, e.g. an
    empty element from a doubled or trailing separator) and the first bad element's
    index per row (-1 if none)."""
    f = split(buf, s, e, sep, empty_is_none=True)
    values, ok, _ = parse_int(buf, f.starts, f.ends)
    row_of = np.repeat(np.arange(len(s)), f.counts)
    bad = rows_with(~ok, row_of, len(s))
    first_bad = np.full(len(s), -1, np.int64)
    pos = np.flatnonzero(~ok)
    # first bad element per row: positions are sorted, so reversed assignment keeps the first
    first_bad[row_of[pos[::-1]]] = pos[::-1] - f.offsets[row_of[pos[::-1]]]
    return Jagged(f.counts, values), bad, first_bad


def list_array(j: Jagged) -> pa.Array:
    """A ``list<int64>`` Arrow array of a :class:`Jagged`."""
    return pa.ListArray.from_arrays(pa.array(j.offsets.astype(np.int32)), pa.array(j.values, pa.int64()))


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


def token(buf: np.ndarray, s: int, e: int, limit: int = 40) -> str:
    raw = buf[s : min(e, s + limit)].tobytes().decode("utf-8", "replace")
    return repr(raw + ("..." if e - s > limit else ""))


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
    policy = policy or BadRowPolicy()
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not paths:
        raise ConversionError("no input files")
    for p in paths:
        if not p.is_file():
            raise ConversionError(f"{p}: no such file" + (" (a directory)" if p.is_dir() else ""))
        if not os.access(p, os.R_OK):
            raise ConversionError(f"{p}: not readable (permission denied)")
    split = valid_frac > 0 or test_frac > 0
    if split and len(paths) != 1:
        raise ConversionError("valid_frac/test_frac split needs exactly one input file")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise ValueError(f"need 0 <= valid_frac, test_frac and a sum < 1: {valid_frac}, {test_frac}")
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [p.name.split(".")[0] for p in paths]
    if len(set(stems)) != len(stems):
        raise ConversionError(f"input files share a name stem, outputs would collide: {stems}")

    report = out_dir / "bad_rows.txt"
    report.unlink(missing_ok=True)
    bad = BadRows(policy, report)
    outputs: Dict[str, _Output] = {}
    lines_read = 0
    missing: Dict[str, int] = {}
    try:
        for path, stem in zip(paths, stems):
            bounds = _bounds(count_lines(path) - int(fmt.header), valid_frac, test_frac) if split else None
            names = list(bounds) if bounds else [stem]
            for name in names:
                outputs[name] = _Output(out_dir / f"{name}.parquet", fmt.schema, fmt.label, row_group_size)
            header_pending = fmt.header
            for block in read_blocks(path, block_bytes, max_line_bytes):
                if header_pending:
                    if block.too_long[0]:
                        raise ConversionError(f"{path}:1: header line longer than {max_line_bytes} bytes")
                    fmt.set_header(block.text(0, limit=1 << 20), path)
                    header_pending = False
                    keep = slice(1, None)
                    block = Block(block.buf, block.starts[keep], block.ends[keep], block.line0 + 1,
                                  block.too_long[keep])
                    if not len(block):
                        continue
                lines_read += len(block)
                parsed = fmt.parse(block)
                for c, k in parsed.missing.items():
                    missing[c] = missing.get(c, 0) + int(k)
                bad_rows = parsed.bad | block.too_long
                for i in np.flatnonzero(bad_rows):
                    why = (f"line longer than max_line_bytes={max_line_bytes}" if block.too_long[i]
                           else parsed.reasons.get(int(i), "malformed"))
                    bad.add(path, int(block.line0 + i), why)
                good_lines = block.lines[~parsed.bad]
                table = parsed.table
                if block.too_long.any():  # over-long lines parse as empty; drop them too
                    keep_rows = ~block.too_long[~parsed.bad]
                    table, good_lines = table.filter(pa.array(keep_rows)), good_lines[keep_rows]
                if bounds is None:
                    outputs[stem].add(table)
                    continue
                # line numbers without the header: data line k is file line k + header
                data_line = good_lines - int(fmt.header)
                for name, (lo, hi) in bounds.items():
                    sel = (data_line >= lo) & (data_line <= hi)
                    if sel.any():
                        outputs[name].add(table.filter(pa.array(sel)))
            if header_pending:
                raise ConversionError(f"{path}: empty file, expected a header line")
            for name in names:
                outputs[name].finish()
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
