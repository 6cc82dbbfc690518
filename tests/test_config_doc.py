"""docs/config.md is the reference `python -m interformer_rec.config_doc` prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from interformer_rec import config as C
from interformer_rec.config_doc import field_comments, reference, sections

DOC = Path(__file__).parents[1] / "docs" / "config.md"


def test_docs_config_md_is_up_to_date() -> None:
    assert DOC.read_text() == reference(), "regenerate: python -m interformer_rec.config_doc > docs/config.md"


def test_every_key_of_every_section_is_listed() -> None:
    text = reference()
    for prefix, cls in sections():
        for f in dataclasses.fields(cls):
            assert f"| `{prefix}{f.name}` |" in text
    keys = {p for p, _ in sections()}
    assert {"model.interformer.", "train.lr_schedule.", "dist.tables.<name>.", "data.schema.sequence[]."} <= keys


def test_field_comments_above_and_inline() -> None:
    @dataclasses.dataclass
    class Example:
        # first line
        # second line
        a: int = 1
        b: int = 2  # inline
        c: int = 3

    assert field_comments(Example) == {"a": "first line second line", "b": "inline", "c": ""}
    assert "num_embeddings" in field_comments(C.TableConfig) and field_comments(C.TableConfig)["init"]
