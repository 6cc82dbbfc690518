"""Evaluate a checkpoint on any world size (the launchers' ``evaluate`` component).

    python -m interformer_rec.train.evaluate --config configs/synthetic.yaml \\
        [--checkpoint runs/synthetic/checkpoints/best] [--split test] [--set KEY=VALUE ...]
    torchrun --nproc_per_node 2 -m interformer_rec.train.evaluate --config ...

The model is sharded by this job's own plan (any world size) and the checkpoint is
resharded into it by DCP; metrics are computed on the union of every rank's rows.
Rank 0 prints them as JSON and writes ``<out_dir>/eval_<split>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from interformer_rec.config import ConfigError, load_config


def main(argv: Optional[List[str]] = None) -> int:
    from interformer_rec.console import quiet

    quiet()
    p = argparse.ArgumentParser(prog="python -m interformer_rec.train.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", help="checkpoint dir, or a checkpoints dir / run dir (its `best`)")
    p.add_argument("--pointer", default="best", help="pointer to follow under a checkpoints dir")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from interformer_rec.data.reader import DataError
    from interformer_rec.train import checkpoint
    from interformer_rec.train.trainer import Trainer

    try:
        cfg = load_config(args.config, args.set)
        if getattr(cfg.data, args.split) is None:
            raise ConfigError(f"{args.config}: data.{args.split} is not set")
        trainer = Trainer(cfg, write_outputs=False)
        ckpt = checkpoint.resolve(args.checkpoint or trainer.ckpt_dir, args.pointer)
        result = trainer.evaluate_checkpoint(ckpt, args.split)
        result["world_size"] = trainer.env.world_size
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    if trainer.env.is_main:
        text = json.dumps(result, indent=2)
        print(text)
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        (trainer.out_dir / f"eval_{args.split}.json").write_text(text)
        trainer.sync_outputs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
