"""``interformer-rec``: generate / convert data, train, evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

from interformer_rec.config import ConfigError, load_config
from interformer_rec.console import quiet


def cmd_generate(args: argparse.Namespace) -> int:
    from interformer_rec.data.synthetic import generate

    cfg = load_config(args.config, args.set)
    if cfg.data.synthetic is None:
        raise ConfigError(f"{args.config}: no data.synthetic section to generate from")
    out = Path(args.out) if args.out else Path(cfg.data.train).parent
    summary = generate(cfg.data.synthetic, out)
    print(json.dumps(summary, indent=2))
    return 0


CONVERT_FORMATS = ["movielens", "criteo", "taobao", "taobao_fuxictr", "amazon", "amazon_reviews",
                   "amazon_grocery", "s3rec"]


def cmd_convert(args: argparse.Namespace) -> int:
    from interformer_rec.data.converters.convert import BadRowPolicy

    raw = [Path(p) for p in args.raw]
    out = Path(args.out)
    policy = BadRowPolicy(max_bad_rows=args.max_bad_rows, max_bad_fraction=args.max_bad_fraction)
    kw = dict(policy=policy, row_group_size=args.row_group_size,
              valid_frac=args.valid_frac or 0.0, test_frac=args.test_frac or 0.0)
    max_len = 50 if args.max_len is None else args.max_len  # movielens, amazon_reviews
    if args.format == "movielens":
        from interformer_rec.data.converters.movielens import convert_movielens

        if len(raw) != 1:
            raise ConfigError("convert movielens: --raw takes one directory")
        summary = convert_movielens(raw[0], out, max_len=max_len, corating_dim=args.corating_dim)
    elif args.format == "criteo":
        from interformer_rec.data.converters.criteo import convert_criteo

        summary = convert_criteo(raw, out, min_fields=args.min_fields, **kw)
    elif args.format == "taobao":
        from interformer_rec.data.converters.taobao import convert_taobao_dmr

        summary = convert_taobao_dmr(raw, out, **kw)
    elif args.format == "taobao_fuxictr":
        from interformer_rec.data.converters.taobao import convert_taobao_fuxictr

        summary = convert_taobao_fuxictr(raw, out, **kw)
    elif args.format == "amazon":
        from interformer_rec.data.converters.amazon import convert_amazon_din

        summary = convert_amazon_din(raw, out, **kw)
    elif args.format == "amazon_reviews":
        from interformer_rec.data.converters.amazon import build_amazon_din

        if len(raw) != 1 or not args.meta:
            raise ConfigError("convert amazon_reviews: --raw REVIEWS.json --meta META.json")
        summary = build_amazon_din(raw[0], Path(args.meta), out, max_len=max_len,
                                   seed=args.seed, policy=policy, row_group_size=args.row_group_size)
    elif args.format == "amazon_grocery":
        from interformer_rec.data.converters.grocery import convert_amazon_grocery

        if len(raw) != 1:
            raise ConfigError("convert amazon_grocery: --raw takes one directory (train.csv, item_meta.csv)")
        summary = convert_amazon_grocery(
            raw[0], out, max_len=100 if args.max_len is None else args.max_len, seed=args.seed,
            valid_frac=0.1 if args.valid_frac is None else args.valid_frac,
            test_frac=0.1 if args.test_frac is None else args.test_frac,
            policy=policy, row_group_size=args.row_group_size,
        )
    elif args.format == "s3rec":
        from interformer_rec.data.converters.s3rec import convert_s3rec

        if len(raw) != 1:
            raise ConfigError("convert s3rec: --raw takes one directory (<name>.txt, <name>_item2attributes.json)")
        summary = convert_s3rec(raw[0], out, max_len=max_len, seed=args.seed, policy=policy,
                                row_group_size=args.row_group_size)
    else:  # argparse restricts choices
        raise AssertionError(args.format)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from interformer_rec.data.inspect import format_report, inspect_data, report_json

    schema = load_config(args.config, args.set).data.schema if args.config else None
    report = inspect_data(args.data, schema)
    print(report_json(report) if args.json else format_report(report))
    return 1 if args.strict and report["problems"] else 0


def cmd_train(args: argparse.Namespace) -> int:
    from interformer_rec.train.checkpoint import CheckpointWriteError
    from interformer_rec.train.trainer import NonFiniteLoss, Trainer, format_summary

    cfg = load_config(args.config, args.set)
    try:
        trainer = Trainer(cfg)
        result = trainer.fit()
    except NonFiniteLoss as e:
        print(f"interformer-rec train: error: {e}", file=sys.stderr)
        return 3
    except CheckpointWriteError as e:
        print(f"interformer-rec train: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        text = str(e)
        if "timed out" in text.lower() or "timeout" in text.lower():
            what = (f"a collective got no answer from a peer rank within dist.timeout_s={cfg.dist.timeout_s:g} s "
                    "(a rank is hung, stopped or gone)")
        elif "closed by peer" in text or "reset by peer" in text:
            what = "a peer rank closed its connection (it exited or was killed: see that rank's log)"
        else:
            raise
        print(f"interformer-rec train: error: {what}: {text.splitlines()[0]}", file=sys.stderr)
        return 3
    if trainer.env.is_main:
        print(format_summary(result))
        out = trainer.remote_out or trainer.out_dir
        print(f"metrics: {out}/metrics.json  checkpoints: {trainer.ckpt_dir}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/<name>.py`` of this checkout with the remaining arguments."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.name}.py"
    if not script.exists():
        raise FileNotFoundError(f"{script}: benchmarks ship with the source checkout")
    sys.argv = [str(script), *args.args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _add_convert(sub: Any) -> None:
    """The ``convert`` sub-command: raw public data sets to Parquet."""
    c = sub.add_parser(
        "convert", help="convert a public raw data set to Parquet",
        description="movielens: --raw is the ml-100k directory (train/valid/test by time). "
        "criteo, taobao (DMR's Alimama lines), taobao_fuxictr (FuxiCTR's CSV), amazon "
        "(DIN form): each --raw file becomes OUT/<stem>.parquet, or, with --valid-frac/"
        "--test-frac and one file, OUT/train|valid|test.parquet split by position. "
        "amazon_reviews: --raw reviews JSON lines and --meta metadata -> DIN-form "
        "train/test with sampled negatives. amazon_grocery: --raw the directory with "
        "train.csv and item_meta.csv -> DIN protocol (one sampled negative per review) "
        "split 80/10/10 by global time (--valid-frac/--test-frac, default 0.1 each). "
        "s3rec (S3-Rec's release form: Amazon Beauty, Sports, Toys): --raw the directory with "
        "<name>.txt and <name>_item2attributes.json -> leave-last-out per user, one sampled "
        "negative per event. "
        "Malformed lines are skipped and listed in OUT/bad_rows.txt; above --max-bad-rows / "
        "--max-bad-fraction the job fails and writes nothing.",
    )
    c.add_argument("format", choices=CONVERT_FORMATS)
    c.add_argument("--raw", required=True, nargs="+", help="raw file(s) (movielens, amazon_grocery: the directory)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--max-len", type=int, default=None,
                   help="history length kept per row (movielens, amazon_reviews, s3rec: default 50; "
                   "amazon_grocery: default 100)")
    c.add_argument("--corating-dim", type=int, default=16,
                   help="movielens: width of the co-rating item embeddings written (= model.embedding_dim)")
    c.add_argument("--meta", help="amazon_reviews: the item metadata file")
    c.add_argument("--seed", type=int, default=0, help="amazon_reviews, amazon_grocery, s3rec: negative sampling seed")
    c.add_argument("--max-bad-rows", type=int, default=None,
                   help="fail when more malformed lines than this (default: no count cap)")
    c.add_argument("--max-bad-fraction", type=float, default=0.001,
                   help="fail when more than this fraction of lines is malformed (default 0.001)")
    c.add_argument("--row-group-size", type=int, default=65536, help="rows per Parquet row group")
    c.add_argument("--valid-frac", type=float, default=None,
                   help="split off this fraction for valid (default 0; amazon_grocery: 0.1)")
    c.add_argument("--test-frac", type=float, default=None,
                   help="... and this (the last lines) for test (default 0; amazon_grocery: 0.1)")
    c.add_argument("--min-fields", type=int, default=40,
                   help="criteo: fewest tab-separated fields accepted; 15 reads files whose "
                   "trailing empty fields were stripped (default 40: exact)")
    c.set_defaults(func=cmd_convert)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interformer-rec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, help="YAML config (see configs/)")
        sp.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.epochs=1 (repeatable)",
        )

    g = sub.add_parser("generate", help="write the synthetic data set of a config")
    with_config(g)
    g.add_argument("--out", help="output directory (default: the directory of data.train)")
    g.set_defaults(func=cmd_generate)

    _add_convert(sub)

    i = sub.add_parser(
        "inspect", help="data-quality report of Parquet data (null rates, distinct counts, "
        "sequence lengths, label rate), streaming",
    )
    i.add_argument("data", nargs="+", help="Parquet file(s) or directories")
    i.add_argument("--config", help="YAML config: adds label rates and schema checks")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("--strict", action="store_true", help="exit 1 if any problem is found")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("train", help="train a model and report validation/test metrics")
    with_config(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate", add_help=False,
        help="score a checkpoint on a split (any world size); see `interformer-rec evaluate --help`",
    )
    e.add_argument("args", nargs=argparse.REMAINDER)  # main() hands them to train/evaluate.py

    b = sub.add_parser("bench", help="run a benchmark from benchmarks/ (quality, throughput, ...)")
    b.add_argument("name", help="benchmark name: quality, throughput, planted, scaling, serving, data")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    b.set_defaults(func=cmd_bench)

    from interformer_rec.export.cli import register as register_export
    from interformer_rec.serving.cli import register as register_serving

    register_export(sub)
    register_serving(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        from interformer_rec.train.evaluate import main as evaluate

        return evaluate(argv[1:])
    quiet()
    args = build_parser().parse_args(argv)
    from interformer_rec.arrays import DataError  # torch-free: predict/serve stay light

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"interformer-rec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
