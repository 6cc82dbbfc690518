"""Hypothesis property tests of the raw-format converters: malformed lines are never
silently mis-parsed (each is parsed as the reference parser does, or counted bad), and
parse(format(row)) round-trips."""

from __future__ import annotations

import math
import os
import re
from functools import partial
from typing import List

import numpy as np
from converter_refs import (
    ALLOW_ALL,
    DMR,
    INT,
    check_against_reference,
    convert_criteo_stripped,
    criteo_ref,
    din_ref,
    dmr_ref,
    f32,
    lines_of,
    needs_samples,
    rows,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interformer_rec.data.converters.amazon import (
    DIN_NUM_CATS,
    DIN_NUM_ITEMS,
    convert_amazon_din,
)
from interformer_rec.data.converters.convert import BadRowPolicy
from interformer_rec.data.converters.criteo import convert_criteo
from interformer_rec.data.converters.taobao import (
    convert_taobao_dmr,
)

# --------------------------------------------------------------------------- properties

# HYPOTHESIS_EXAMPLES=2000 for a deeper search than the suite's default
PROPS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

criteo_rows = st.fixed_dictionaries({
    "label": st.integers(0, 1),
    "ints": st.lists(st.one_of(st.none(), st.integers(-(10**18) + 1, 10**18 - 1), st.integers(-5, 5000)),
                     min_size=13, max_size=13),
    "cats": st.lists(st.one_of(st.none(), st.integers(0, 2**32 - 1)), min_size=26, max_size=26),
    "upper": st.booleans(),
    "strip": st.booleans(),
})


def format_criteo(r: dict) -> bytes:
    fields = [str(r["label"])] + ["" if x is None else str(x) for x in r["ints"]]
    fields += ["" if c is None else (f"{c:08X}" if r["upper"] else f"{c:08x}") for c in r["cats"]]
    line = "\t".join(fields)
    if r["strip"]:
        line = line.rstrip("\t")
        if line.count("\t") + 1 < 15:  # a converter never sees fewer than min_fields here
            line += "\t" * (14 - line.count("\t"))
    return line.encode()


@PROPS
@given(st.lists(criteo_rows, min_size=1, max_size=20))
def test_criteo_round_trip(tmp_path_factory, rs) -> None:
    """parse(format(row)) == row, for any valid row (large ints, missing fields, hex case,
    stripped trailing fields)."""
    d = tmp_path_factory.mktemp("rt")
    (d / "x.txt").write_bytes(b"\n".join(map(format_criteo, rs)) + b"\n")
    s = convert_criteo_stripped(d / "x.txt", d, policy=BadRowPolicy(max_bad_rows=0))
    got = rows(d / "x.parquet")
    assert s["bad_rows"] == 0 and len(got) == len(rs)
    for g, r in zip(got, rs):
        assert g["label"] == r["label"]
        assert [g[f"I{j + 1}"] for j in range(13)] == [f32(math.log1p(max(x or 0, 0))) for x in r["ints"]]
        assert [g[f"C{j + 1}"] for j in range(26)] == [c or 0 for c in r["cats"]]


NOISE = st.sampled_from([b"\t", b"\t\t", b"-", b"--", b"x", b"g", b"0", b"9", b"F", b" ", b".", b"e5",
                         b"\r", b"\n", b"\xc3\xa9", b"\x00", b";", b",", b"NULL", b"", b"1" * 19, b"^"])


def mutate(lines: List[bytes], data: st.DataObject) -> bytes:
    out = []
    for line in lines:
        for _ in range(data.draw(st.integers(0, 2))):
            kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
            i = data.draw(st.integers(0, len(line)))
            if kind == "insert":
                line = line[:i] + data.draw(NOISE) + line[i:]
            elif kind == "delete":
                line = line[:i] + line[i + data.draw(st.integers(1, 4)):]
            else:
                line = line[:i] + data.draw(NOISE) + line[i + 1:]
        out.append(line)
    return b"\n".join(out) + data.draw(st.sampled_from([b"", b"\n", b"\r\n"]))


def _never_silently_wrong(tmp_path_factory, data, valid_lines, convert, ref, name="x") -> None:
    d = tmp_path_factory.mktemp("mut")
    raw = mutate(valid_lines, data)
    (d / f"{name}.txt").write_bytes(raw)
    s = convert(d / f"{name}.txt", d, policy=ALLOW_ALL, block_bytes=data.draw(st.sampled_from([64, 1 << 20])))
    check_against_reference(raw, d, s, ref, name)


@PROPS
@given(st.data())
def test_criteo_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    rs = data.draw(st.lists(criteo_rows, min_size=1, max_size=8))
    k = data.draw(st.sampled_from([15, 40]))
    _never_silently_wrong(tmp_path_factory, data, [format_criteo(r) for r in rs],
                          partial(convert_criteo, min_fields=k), partial(criteo_ref, min_fields=k))


def format_din(items: List[int], cats: List[int], item: int, cat: int, label: int) -> bytes:
    return f"{' '.join(map(str, items))};{' '.join(map(str, cats))};{item};{cat};{label}".encode()


din_rows = st.integers(0, 6).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, DIN_NUM_ITEMS - 1), min_size=n, max_size=n),
    st.lists(st.integers(0, DIN_NUM_CATS - 1), min_size=n, max_size=n),
    st.integers(0, DIN_NUM_ITEMS - 1), st.integers(0, DIN_NUM_CATS - 1), st.integers(0, 1)))


@PROPS
@given(st.data())
def test_amazon_din_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    rs = data.draw(st.lists(din_rows, min_size=1, max_size=8))
    _never_silently_wrong(tmp_path_factory, data, [format_din(*r) for r in rs], convert_amazon_din, din_ref)


@PROPS
@given(st.lists(din_rows, min_size=1, max_size=10))
def test_amazon_din_round_trip(tmp_path_factory, rs) -> None:
    d = tmp_path_factory.mktemp("rt")
    (d / "x.txt").write_bytes(b"\n".join(format_din(*r) for r in rs))
    convert_amazon_din(d / "x.txt", d, policy=BadRowPolicy(max_bad_rows=0))
    got = rows(d / "x.parquet")
    assert [(g["hist_item_ids"], g["hist_cat_ids"], g["item_id"], g["cat_id"], g["label"]) for g in got] == \
        [tuple(r) for r in rs]


@needs_samples
@PROPS
@given(st.data())
def test_dmr_malformed_lines_are_never_silently_misparsed(tmp_path_factory, data) -> None:
    sample = lines_of(DMR.read_bytes())
    picked = data.draw(st.lists(st.sampled_from(sample), min_size=1, max_size=4))
    _never_silently_wrong(tmp_path_factory, data, picked, convert_taobao_dmr, dmr_ref)


def _spans(tokens: List[bytes], sep: bytes = b"|"):
    data = sep.join(tokens) + sep
    s, pos = [], 0
    for t in tokens:
        s.append(pos)
        pos += len(t) + 1
    s = np.array(s, np.int64)
    return np.frombuffer(data, np.uint8), s, s + np.array([len(t) for t in tokens], np.int64)


tokens = st.lists(
    st.one_of(st.binary(max_size=24), st.from_regex(rb"\A-?[0-9]{1,20}\Z"),
              st.from_regex(rb"\A[0-9a-fA-F]{6,10}\Z"), st.sampled_from([b"-", b"/", b":", b"0" * 8, b"9" * 18])),
    max_size=40,
).map(lambda ts: [t for t in ts if b"|" not in t])


@settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 200)), deadline=None)
@given(tokens)
def test_parse_int_and_hex_match_a_regex_reference(ts) -> None:
    """The vectorised (SWAR) number parsers against Python's int() behind a strict regex."""
    from interformer_rec.data.converters.text import parse_hex, parse_int

    buf, s, e = _spans(ts)
    v, ok, empty = parse_int(buf, s, e)
    assert ok.tolist() == [bool(INT.fullmatch(t)) for t in ts]
    assert v[ok].tolist() == [int(t) for t in ts if INT.fullmatch(t)]
    assert empty.tolist() == [t == b"" for t in ts]
    v, ok, _ = parse_hex(buf, s, e, 8)
    hexok = [bool(re.fullmatch(rb"[0-9a-fA-F]{8}", t)) for t in ts]
    assert ok.tolist() == hexok
    assert v[ok].tolist() == [int(t, 16) for t, h in zip(ts, hexok) if h]
