"""Sub-command ``export`` of ``interformer-rec``.

Heavy imports (torchrec, the model code) happen inside the command function, so
``interformer-rec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def _fail(command: str, error: Exception) -> int:
    print(f"interformer-rec {command}: error: {error}", file=sys.stderr)
    return 2


def cmd_export(args: argparse.Namespace) -> int:
    from interformer_rec.export.export import ExportError, export

    try:
        manifest = export(
            args.checkpoint,
            args.out,
            pointer=args.pointer,
            quantize=None if args.quantize == "none" else args.quantize,
            data=args.data or None,
            parity_rows=args.parity_rows,
            parity_tol=args.parity_tol,
            max_batch=args.max_batch,
            kjt_program=args.kjt_program,
        )
    except ExportError as e:
        return _fail("export", e)
    parity = manifest["parity"]
    summary = {
        "out": args.out,
        "model": manifest["model"]["name"],
        "package": manifest["package"],
        "parity_max_abs_diff_logit": parity["max_abs_diff_logit"],
        "parity_cases": {k: v["max_abs_diff_logit"] for k, v in parity["cases"].items()},
        "quantization": manifest["quantization"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``export`` to the ``interformer-rec`` parser."""
    e = sub.add_parser(
        "export",
        help="export a checkpoint with torch.export + AOTInductor for serving",
        description="Build the inference model from a training checkpoint, export it with "
        "torch.export (dynamic batch and jagged lengths), compile it with AOTInductor, and "
        "write model.pt2, schema.json and manifest.json (with parity figures) to --out.",
    )
    e.add_argument("--checkpoint", required=True, help="a run dir, its checkpoints/ dir, or a checkpoint dir")
    e.add_argument("--pointer", default="best", choices=["best", "latest"], help="checkpoint pointer to follow")
    e.add_argument("--out", required=True, help="export directory")
    e.add_argument("--quantize", default="none", choices=["none", "int8", "fp16"], help="embedding table dtype")
    e.add_argument(
        "--data", action="append", default=[], metavar="PARQUET",
        help="held-out data for parity / quantization quality (default: the config's test, else valid split)",
    )
    e.add_argument("--parity-rows", type=int, default=2048, help="held-out rows compared")
    e.add_argument("--parity-tol", type=float, default=1e-5, help="max abs logit difference allowed")
    e.add_argument("--max-batch", type=int, default=65536, help="largest batch the package accepts")
    e.add_argument(
        "--kjt-program", action="store_true",
        help="also save program_kjt.pt2: the torch.export-ed model with KJT inputs (needs torchrec to load)",
    )
    e.set_defaults(func=cmd_export)
