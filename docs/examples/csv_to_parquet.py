"""Turn an impression log in CSV into the Parquet splits interformer_rec trains on.

One CSV row per impression; list columns hold space-separated ids, oldest first:

    user_id,item_id,cat_id,price,hist_item_ids,hist_cat_ids,time,clicked
    17,2045,3,12.5,881 90 2045,3 3 7,1382400000,1

    python docs/examples/csv_to_parquet.py log.csv --out data/my_log --lists hist_item_ids hist_cat_ids

writes ``train.parquet``, ``valid.parquet`` and ``test.parquet`` split by ``--time``
(80 / 10 / 10 of the rows, the oldest first), so nothing is learned from the future.
Every other column keeps the type pyarrow infers from the CSV.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq


def parse_lists(table: pa.Table, columns: list[str]) -> pa.Table:
    """Each of ``columns`` (space-separated ids) as ``list<int64>``; an empty cell is an
    empty list."""
    for name in columns:
        ids = [[int(x) for x in (s or "").split()] for s in table.column(name).to_pylist()]
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(ids, pa.list_(pa.int64())))
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", help="the impression log")
    p.add_argument("--out", required=True, help="directory for train/valid/test.parquet")
    p.add_argument("--lists", nargs="*", default=[], help="columns of space-separated ids")
    p.add_argument("--time", default="time", help="column that orders the rows")
    args = p.parse_args()

    lists = {c: pa.string() for c in args.lists}
    table = pcsv.read_csv(args.csv, convert_options=pcsv.ConvertOptions(column_types=lists))
    table = parse_lists(table, args.lists).sort_by(args.time)
    n = table.num_rows
    cuts = [0, int(0.8 * n), int(0.9 * n), n]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, start, end in zip(("train", "valid", "test"), cuts, cuts[1:]):
        pq.write_table(table.slice(start, end - start), out / f"{split}.parquet", row_group_size=65536)
        print(f"{out / f'{split}.parquet'}: {end - start} rows")


if __name__ == "__main__":
    main()
