"""The schema of each converter's files is defined once, in its ``configs/<name>.yaml``;
tests that read converted files take it from there (with smaller tables or sequences for
small test data)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from interformer_rec.config import Schema, load_config

ROOT = Path(__file__).resolve().parents[1]


def config_schema(name: str, max_len: Optional[int] = None, **num_embeddings: int) -> Schema:
    """``data.schema`` of ``configs/<name>.yaml``; ``max_len`` replaces every sequence's
    length, ``num_embeddings`` (table name -> rows; ``all`` for every table) table sizes."""
    schema = load_config(ROOT / "configs" / f"{name}.yaml").data.schema
    every = num_embeddings.pop("all", None)
    unknown = set(num_embeddings) - {t.name for t in schema.tables}
    assert not unknown, f"configs/{name}.yaml has no tables {unknown}"
    tables = [
        dataclasses.replace(t, num_embeddings=num_embeddings.get(t.name, every or t.num_embeddings))
        for t in schema.tables
    ]
    sequence = [dataclasses.replace(s, max_len=max_len or s.max_len) for s in schema.sequence]
    return dataclasses.replace(schema, tables=tables, sequence=sequence)
