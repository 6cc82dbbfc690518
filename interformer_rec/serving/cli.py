"""Sub-commands ``predict`` and ``serve`` of ``interformer-rec``.

They import the predictor (torch, numpy, pyarrow) and the server library inside the
command functions, never torchrec, so ``interformer-rec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from interformer_rec.serving.server_config import add_server_flags


def _fail(command: str, error: object) -> int:
    print(f"interformer-rec {command}: error: {error}", file=sys.stderr)
    return 2


def cmd_predict(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from interformer_rec.serving.features import InputError
    from interformer_rec.serving.predictor import ModelDirError, Predictor

    try:
        predictor = Predictor(args.model)
        summary = predictor.predict_parquet(
            args.data, args.out, batch_size=args.batch_size, keep=args.keep if args.keep else None
        )
    except (InputError, ModelDirError) as e:
        return _fail("predict", e)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _threads(args.threads)
    from interformer_rec.serving.predictor import ModelDirError
    from interformer_rec.serving.server import serve
    from interformer_rec.serving.server_config import server_config_from_flags

    cfg = server_config_from_flags(args)
    try:
        serve(args.model, cfg)
    except ModelDirError as e:
        return _fail("serve", e)
    except OSError as e:  # e.g. the port is taken
        return _fail("serve", f"cannot listen on {args.host}:{args.port} ({e})")
    return 0


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``predict`` and ``serve`` to the ``interformer-rec`` parser."""
    p = sub.add_parser("predict", help="score a Parquet file with an exported model")
    p.add_argument("--model", required=True, help="export directory")
    p.add_argument("--data", required=True, nargs="+", help="Parquet file(s) or directories")
    p.add_argument("--out", help="Parquet file for the scores (p_<task> columns)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--keep", action="append", default=[], metavar="COLUMN", help="input column copied to --out")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser(
        "serve",
        help="HTTP JSON scoring endpoint for an exported model",
        description="POST /v1/score {user: {...}, candidates: [{...}]} -> {scores: {task: [...]}}; "
        "GET /healthz; GET /v1/metadata. SIGINT/SIGTERM drain in-flight requests, then exit.",
    )
    s.add_argument("--model", required=True, help="export directory")
    add_server_flags(s)
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    s.set_defaults(func=cmd_serve)
