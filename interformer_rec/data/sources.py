"""Where Parquet data lives: local paths and URIs of any filesystem ``pyarrow.fs`` knows.

A data set (``data.train``, ``--data``, ...) is one of these, or a list of them:

* a Parquet file;
* a folder, searched recursively for ``*.parquet`` (names starting with ``.`` or ``_``
  are skipped, as ``pyarrow.dataset`` does: ``_SUCCESS``, ``.crc``); its ``key=value``
  folders are hive partitions, which ``filters`` select (``[[column, op, value], ...]``,
  all must hold; ``op`` as in ``pyarrow.parquet.filters_to_expression``);
* a glob (``*`` and ``?`` within a path segment, ``**`` across segments);
* on the local disk or as a URI: ``s3://bucket/prefix/``, ``gs://``, ``hdfs://``,
  ``file://``, anything ``pyarrow.fs.FileSystem.from_uri`` accepts. Credentials and
  endpoints come from the environment as the filesystem reads them (S3:
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...), never
  from the config, which is copied into every run's outputs.

Files are named by strings (local paths, or URIs with the scheme), sorted within each
item, in the order of the items. Partition values select files; they are not columns
(a column the schema needs must be in the files). Only numpy and pyarrow are imported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from interformer_rec.arrays import DataError

Paths = Union[str, Path, Sequence[Union[str, Path]]]
Filters = Sequence[Sequence[Any]]

def is_uri(path: Union[str, Path]) -> bool:
    return isinstance(path, str) and "://" in path


def filesystem(path: Union[str, Path]) -> Tuple[pafs.FileSystem, str, str]:
    """``(filesystem, path within it, prefix)``: ``prefix + path`` names a file found in it."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(path), ""
    scheme, rest = str(path).split("://", 1)
    if scheme == "file":
        return pafs.LocalFileSystem(), "/" + rest.lstrip("/"), ""
    try:
        fs, inner = pafs.FileSystem.from_uri(str(path))
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: no filesystem for this URI ({first})") from None
    return fs, inner, f"{scheme}://"


def open_input(path: Union[str, Path]) -> Any:
    """``path`` for ``pq.ParquetFile``: a local path as it is, a URI as an open file."""
    if not is_uri(path):
        return path
    fs, inner, _ = filesystem(path)
    return fs.open_input_file(inner)


def exists(path: Union[str, Path]) -> bool:
    fs, inner, _ = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def _glob_regex(pattern: str) -> "re.Pattern[str]":
    """``*``, ``?`` and ``[...]`` within a segment, ``**/`` or ``**`` across segments."""
    out = ""
    for token in re.split(r"(\*\*/?|\*|\?|\[!?[^\]]+\])", pattern):
        if token.startswith("[") and token.endswith("]") and len(token) > 2:
            out += "[^" + re.escape(token[2:-1]) + "]" if token[1] == "!" else "[" + re.escape(token[1:-1]) + "]"
        else:
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + r"\Z")


def _hidden(path: str, base: str) -> bool:
    return any(part.startswith((".", "_")) for part in path[len(base):].split("/") if part)


def _files(item: Union[str, Path], filters: Optional[Filters]) -> List[str]:
    fs, inner, prefix = filesystem(item)
    globbed = any(c in inner for c in "*?[")
    base = re.split(r"[*?\[]", inner, maxsplit=1)[0].rsplit("/", 1)[0] if globbed else inner
    kind = fs.get_file_info(base or "/").type
    if kind == pafs.FileType.File and not globbed:
        return [str(item)]
    if kind != pafs.FileType.Directory:
        raise DataError(f"{item}: no such file or directory")
    infos = fs.get_file_info(pafs.FileSelector(base or "/", recursive=True))
    regex = _glob_regex(inner) if globbed else None
    found = sorted(
        i.path for i in infos
        if i.type == pafs.FileType.File and not _hidden(i.path, base)
        and (regex.match(i.path) if regex else i.path.endswith(".parquet"))
    )
    if found and filters:
        try:
            dataset = ds.dataset(found, filesystem=fs, format="parquet", partitioning=ds.HivePartitioning.discover(),
                                 partition_base_dir=base)
            chosen = {f.path for f in dataset.get_fragments(filter=pq.filters_to_expression([tuple(c) for c in filters]))}
        except (OSError, ValueError, TypeError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{item}: cannot select its partitions by {list(filters)!r} ({e})") from None
        found = [f for f in found if f in chosen]
    if not found:
        if filters:
            raise DataError(f"{item}: no *.parquet file under it is in a partition that data.filters "
                            f"{list(filters)!r} selects")
        raise DataError(f"{item}: " + ("no file matches" if globbed else "directory holds no *.parquet files"))
    return [prefix + f for f in found]


def resolve_paths(paths: Paths, filters: Optional[Filters] = None) -> List[str]:
    """The Parquet files of ``paths`` (see the module docstring), in order. ``filters``
    select the hive partitions of folders."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return [f for item in items for f in _files(item, filters)]
