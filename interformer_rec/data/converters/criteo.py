"""Criteo (Kaggle Display Advertising Challenge) TSV -> Parquet in the project's schema.

Input: one impression per line, ``label \\t I1..I13 \\t C1..C26`` (the Kaggle
``train.txt``; ``.gz`` is read directly). Empty fields are missing values. By default a
line must have exactly 40 fields. Some copies have had their trailing empty fields
stripped (``../shared/data/samples/criteo``: half its lines have 37 or 38 fields and no
line ends in an empty field). ``min_fields=15`` (``--min-fields 15``) reads lines of
15..40 fields as if the missing trailing fields were empty. It is opt-in because it
gives up a check: in a 40-field file a stray extra tab makes 41 fields and a bad row,
while in a stripped file it shifts the later columns by one and may still parse (e.g.
an empty I13 moving into C1); a line cut off at a tab is likewise indistinguishable
from a stripped one.

Columns written, as DLRM / TorchRec preprocess Criteo:

* ``label`` (int8): required, ``0`` or ``1``.
* ``I1``..``I13`` (float32): ``log(1 + max(x, 0))`` of the integer ``x``; a missing
  value is 0 (DLRM's transform). A field that is not a decimal integer of at most 18
  digits is a bad row.
* ``C1``..``C26`` (int64): the 8-hex-digit category hash as an integer; a missing
  value is the id 0 (TorchRec maps missing to 0 too, so it gets its own learned row).
  Anything but exactly 8 hex digits is a bad row. The schema (``configs/criteo.yaml``) sets ``id_policy: hash``: the reader passes each id through
  splitmix64 and takes it modulo the table's ``num_embeddings``.

Bad rows (more than 40 or fewer than ``min_fields`` fields, a malformed number or hash,
a missing or non-binary label) are skipped, counted and reported under the
:class:`~interformer_rec.data.converters.convert.BadRowPolicy` (see ``convert.py``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from interformer_rec.data.converters.convert import (
    BadRowPolicy,
    Parsed,
    PathLike,
    Reasons,
    TextFormat,
    convert_text,
)
from interformer_rec.data.converters.text import Block, parse_hex, parse_int, parse_label, split, token

NUM_INT = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_INT + NUM_CAT
INT_COLUMNS = [f"I{i}" for i in range(1, NUM_INT + 1)]
CAT_COLUMNS = [f"C{i}" for i in range(1, NUM_CAT + 1)]
HEX_WIDTH = 8






ARROW_SCHEMA = pa.schema(
    [("label", pa.int8())]
    + [(c, pa.float32()) for c in INT_COLUMNS]
    + [(c, pa.int64()) for c in CAT_COLUMNS]
)


def dense_transform(x: np.ndarray) -> np.ndarray:
    """DLRM's ``log(1 + max(x, 0))``, float32."""
    return np.log1p(np.maximum(x, 0).astype(np.float64)).astype(np.float32)


class CriteoFormat(TextFormat):
    """The Kaggle Criteo TSV (see the module docstring)."""

    name = "criteo"
    schema = ARROW_SCHEMA
    label = "label"

    def __init__(self, min_fields: int = NUM_FIELDS) -> None:
        if not 1 <= min_fields <= NUM_FIELDS:
            raise ValueError(f"min_fields must be in [1, {NUM_FIELDS}], got {min_fields}")
        self.min_fields = min_fields

    def parse(self, block: Block) -> Parsed:
        buf, n = block.buf, len(block)
        f = split(buf, block.starts, block.ends, b"\t")
        r = Reasons(n)
        r.add(f.counts > NUM_FIELDS, lambda i: f"{f.counts[i]} tab-separated fields, expected {NUM_FIELDS}")
        if self.min_fields == NUM_FIELDS:
            hint = " (if trailing empty fields were stripped from this file, use min_fields=15 / --min-fields 15)"
        else:
            hint = f" (at least {self.min_fields} with trailing empty fields stripped)"
        r.add(f.counts < self.min_fields,
              lambda i: f"{f.counts[i]} tab-separated fields, expected {NUM_FIELDS}{hint}")
        s, e = f.grid(NUM_FIELDS)

        y, y_ok = parse_label(buf, s[:, 0], e[:, 0])
        r.add(~y_ok, lambda i: f"label {token(buf, s[i, 0], e[i, 0])} is not 0 or 1")

        iv, i_ok, i_empty = (a.reshape(n, NUM_INT) for a in parse_int(buf, s[:, 1:14].ravel(), e[:, 1:14].ravel()))
        i_bad = ~i_ok & ~i_empty

        def int_reason(i: int) -> str:
            j = int(np.argmax(i_bad[i]))
            return f"{INT_COLUMNS[j]} {token(buf, s[i, 1 + j], e[i, 1 + j])} is not an integer"

        r.add(i_bad.any(axis=1), int_reason)

        cv, c_ok, c_empty = (
            a.reshape(n, NUM_CAT) for a in parse_hex(buf, s[:, 14:].ravel(), e[:, 14:].ravel(), HEX_WIDTH)
        )
        c_bad = ~c_ok & ~c_empty

        def cat_reason(i: int) -> str:
            j = int(np.argmax(c_bad[i]))
            return f"{CAT_COLUMNS[j]} {token(buf, s[i, 14 + j], e[i, 14 + j])} is not an {HEX_WIDTH}-digit hex id"

        r.add(c_bad.any(axis=1), cat_reason)

        good = ~r.bad
        dense = dense_transform(np.where(i_empty, 0, iv)[good])
        cats = np.where(c_empty, 0, cv)[good]
        cols: Dict[str, Any] = {"label": pa.array(y[good].astype(np.int8))}
        cols.update({c: pa.array(dense[:, j]) for j, c in enumerate(INT_COLUMNS)})
        cols.update({c: pa.array(cats[:, j]) for j, c in enumerate(CAT_COLUMNS)})
        miss = np.concatenate([i_empty[good].sum(0), c_empty[good].sum(0)])
        missing = dict(zip(INT_COLUMNS + CAT_COLUMNS, miss.tolist()))
        return Parsed(pa.table(cols, schema=ARROW_SCHEMA), r.bad, r.reasons, missing)


def convert_criteo(
    inputs: Union[PathLike, Sequence[PathLike]],
    out_dir: PathLike,
    *,
    policy: Optional[BadRowPolicy] = None,
    min_fields: int = NUM_FIELDS,
    valid_frac: float = 0.0,
    test_frac: float = 0.0,
    **kw: Any,
) -> Dict[str, Any]:
    """Convert Criteo TSV file(s) to Parquet in ``out_dir`` (see the module docstring;
    ``valid_frac``/``test_frac`` and the other keywords as in
    :func:`~interformer_rec.data.converters.convert.convert_text`). DLRM's Kaggle split is the
    first 6/7 of the lines for training and the last 1/7 halved into valid and test:
    ``valid_frac=1/14, test_frac=1/14``."""
    return convert_text(
        CriteoFormat(min_fields), inputs, out_dir, policy=policy,
        valid_frac=valid_frac, test_frac=test_frac, **kw,
    )
