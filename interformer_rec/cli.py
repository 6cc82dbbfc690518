"""``interformer-rec``: generate / convert data, train, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from interformer_rec.config import ConfigError, load_config


def _quiet() -> None:
    """Keep the console readable: TorchRec and torch warn a lot on CPU."""
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("", "torchrec", "torch.distributed", "fbgemm_gpu", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cmd_generate(args: argparse.Namespace) -> int:
    from interformer_rec.data.synthetic import generate

    cfg = load_config(args.config, args.set)
    if cfg.data.synthetic is None:
        raise ConfigError(f"{args.config}: no data.synthetic section to generate from")
    out = Path(args.out) if args.out else Path(cfg.data.train).parent
    summary = generate(cfg.data.synthetic, out)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.format == "movielens":
        from interformer_rec.data.movielens import convert_movielens

        summary = convert_movielens(Path(args.raw), Path(args.out), max_len=args.max_len)
    else:  # argparse restricts choices
        raise AssertionError(args.format)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from interformer_rec.train.trainer import Trainer, format_summary

    cfg = load_config(args.config, args.set)
    trainer = Trainer(cfg)
    result = trainer.fit()
    if trainer.env.is_main:
        print(format_summary(result))
        print(f"metrics: {trainer.out_dir / 'metrics.json'}  checkpoints: {trainer.ckpt_dir}")
    return 0


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

    c = sub.add_parser("convert", help="convert a public raw data set to Parquet")
    c.add_argument("format", choices=["movielens"])
    c.add_argument("--raw", required=True, help="directory of the raw files")
    c.add_argument("--out", required=True, help="output directory for train/valid/test.parquet")
    c.add_argument("--max-len", type=int, default=50, help="history length kept per row")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="train a model and report validation/test metrics")
    with_config(t)
    t.set_defaults(func=cmd_train)

    from interformer_rec.export.cli import register as register_serving

    register_serving(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    _quiet()
    args = build_parser().parse_args(argv)
    from interformer_rec.data.reader import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"interformer-rec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
