"""Reading raw text for the converters, vectorised: files in blocks of complete lines,
lines split into fields, fields parsed into integers, hex ids, floats and labels that
also say, per field, whether they are well formed (see ``convert.py`` for how the
converters use them). No per-row Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from interformer_rec.arrays import ConversionError, Jagged, gather


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


def token(buf: np.ndarray, s: int, e: int, limit: int = 40) -> str:
    raw = buf[s : min(e, s + limit)].tobytes().decode("utf-8", "replace")
    return repr(raw + ("..." if e - s > limit else ""))
