"""End-to-end training speed: ``interformer-rec train`` samples/s per epoch, run side by
side for several variants of one config, and the model's own step on the same batches.

    python benchmarks/train_speed.py --config configs/amazon_grocery.yaml --before 61c7099
    python benchmarks/train_speed.py --config configs/synthetic.yaml --steps 300

Variants, run one after the other (never two at once on the same cores):

* ``before`` (with ``--before REF``): the CLI of commit ``REF``, checked out in a
  temporary git worktree and run with this environment;
* ``buckets off`` / ``buckets on``: this checkout with ``data.length_buckets`` false / true.

Each run trains ``--epochs`` epochs of at most ``--steps`` steps (a checkpoint is written
after each, so epoch 1 is "the epoch after a checkpoint") and reports each epoch's
samples/s from its ``metrics.json``. ``model only`` is the model's forward, backward and
optimizer steps (unsharded, no reader, no pipeline, no metrics) on the same batches the
``buckets on`` run reads, held in memory: the share ``end to end / model only`` is the
trainer's overhead. Writes ``results/train_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


def run_train(cli_root: Path, config: Path, out_dir: Path, sets: List[str]) -> Dict[str, Any]:
    """One ``interformer-rec train`` in a subprocess (its code from ``cli_root``);
    returns its metrics.json."""
    shutil.rmtree(out_dir, ignore_errors=True)
    # -P: the working directory does not shadow PYTHONPATH (the 'before' worktree's code)
    cmd = [sys.executable, "-P", "-m", "interformer_rec.cli", "train", "--config", str(config)]
    for s in [f"train.out_dir={out_dir}", "train.progress=false", *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(cli_root)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out_dir / "metrics.json").read_text())


def model_only(config: Path, sets: List[str], steps: Optional[int], repeats: int) -> float:
    """Samples/s of the model's own training step on the first ``steps`` (default: all)
    training batches of epoch 0 of ``config`` (read once, held in memory): forward,
    backward, Adam; the median of ``repeats`` passes."""
    import torch

    from interformer_rec.config import load_config
    from interformer_rec.data.reader import ParquetBatchReader
    from interformer_rec.models import build_model
    from interformer_rec.train.ranking import RankingTrain

    cfg = load_config(config, sets)
    tc, d = cfg.train, cfg.data
    reader = ParquetBatchReader(d.train, d.schema, tc.batch_size, shuffle=d.shuffle_row_groups, seed=tc.seed,
                                drop_last=True, length_buckets=d.length_buckets)
    batches = list(itertools.islice(reader, steps))
    torch.manual_seed(tc.seed)
    model = RankingTrain(build_model(d.schema, cfg.model), tc.embedding_regularizer, "fp32", "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as throughput.py
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            loss = model(b)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(sum(b.batch_size for b in batches) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/amazon_grocery.yaml"))
    p.add_argument("--before", help="a git ref to run as the 'before' variant")
    p.add_argument("--steps", type=int, default=0, help="training steps per epoch (train.max_steps_per_epoch; 0: whole epochs)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every variant")
    p.add_argument("--out", type=Path, default=Path("results/train_speed"))
    args = p.parse_args()

    base = [f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps or 'null'}", "train.early_stopping_patience=null",
            *args.set]
    variants: List[tuple] = []
    worktree: Optional[Path] = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="train_speed_")) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        variants.append((f"before ({args.before})", worktree, base))
    variants += [("buckets off", ROOT, [*base, "data.length_buckets=false"]),
                 ("buckets on", ROOT, [*base, "data.length_buckets=true"])]
    rows = []
    try:
        for name, root, sets in variants:
            print(f"{name}: training ...", flush=True)
            m = run_train(root, args.config, args.out / "runs" / name.split()[0], sets)
            rates = [h["train_samples_per_s"] for h in m["history"]]
            rows.append({"variant": name, "epoch_samples_per_s": rates, "valid_auc": m["valid"]["auc"]})
            print(f"{name}: {', '.join(f'{r:.0f}' for r in rates)} samples/s per epoch", flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    print("model only: timing ...", flush=True)
    alone = model_only(args.config, [*base, "data.length_buckets=true"], args.steps or None, repeats=3)
    result = {
        "config": str(args.config), "steps_per_epoch": args.steps, "epochs": args.epochs, "sets": args.set,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": "cpu",
        "torch_threads": __import__("torch").get_num_threads(), "variants": rows, "model_only_samples_per_s": alone,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    Path(f"{args.out}.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(r: Dict[str, Any]) -> str:
    first = r["variants"][0]["epoch_samples_per_s"]
    ref = statistics.median(first[1:] or first)
    lines = [
        f"End-to-end `interformer-rec train` on `{r['config']}` ({r['steps_per_epoch'] or 'whole'} epochs of steps, "
        f"{r['epochs']} epochs, a checkpoint after each; {r['machine']}, {r['device']})",
        "",
        "| variant | " + " | ".join(f"epoch {i} samples/s" for i in range(r["epochs"]))
        + " | after a save / before | vs first variant (epochs ≥ 1) | share of model only | valid AUC |",
        "|---|" + "---:|" * (r["epochs"] + 4),
    ]
    for v in r["variants"]:
        rates = v["epoch_samples_per_s"]
        later = statistics.median(rates[1:] or rates)
        lines.append(
            f"| {v['variant']} | " + " | ".join(f"{x:,.0f}" for x in rates)
            + f" | {rates[1] / rates[0] if len(rates) > 1 else float('nan'):.2f} | {later / ref:.2f}x"
            + f" | {later / r['model_only_samples_per_s']:.0%} | {v['valid_auc']:.4f} |"
        )
    lines += ["", f"Model only (forward, backward, Adam on the same batches, bucketed): "
              f"{r['model_only_samples_per_s']:,.0f} samples/s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
