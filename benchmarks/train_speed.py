"""End-to-end training speed: ``interformer-rec train`` samples/s per epoch, run side by
side for several variants of one config, and the model's own step on the same batches.

    python benchmarks/train_speed.py --config configs/amazon_grocery.yaml --before 61c7099
    python benchmarks/train_speed.py --config configs/synthetic.yaml --steps 300

Variants, run one after the other (never two at once on the same cores):

* ``before`` (with ``--before REF``): the CLI of commit ``REF``, checked out in a
  temporary git worktree and run with this environment;
* ``buckets off`` / ``buckets on``: this checkout with ``data.length_buckets`` false / true;
* or, with ``--variant NAME:KEY=VALUE;KEY=VALUE`` (repeatable), those named override
  sets instead (e.g. ``hash:data.schema.id_policy=hash`` against
  ``managed:data.schema.id_policy=managed_collision``); the in-memory step breakdown is
  then timed for each.

Each run trains ``--epochs`` epochs of at most ``--steps`` steps (a checkpoint is written
after each, so epoch 1 is "the epoch after a checkpoint") and reports each epoch's
samples/s from its ``metrics.json``. ``model only`` is the model's forward, backward and
optimizer steps (unsharded, no reader, no pipeline, no metrics) on the same batches the
``buckets on`` run reads, held in memory: the share ``end to end / model only`` is the
trainer's overhead, split by :func:`step_breakdown` into the sharded model's own cost,
the pipeline's and the rest (reader, metrics, logging). Writes ``<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
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


def step_breakdown(config: Path, sets: List[str], steps: Optional[int], repeats: int) -> Dict[str, float]:
    """Samples/s of three ever fuller training steps on the first ``steps`` (default: all)
    training batches of epoch 0 of ``config``, read once and held in memory (no reader):

    * ``model only``: the unsharded model's forward, backward and fused Adam;
    * ``sharded model``: the trainer's DMP (sharded tables, fused embedding optimizer,
      the combined optimizer) called step by step;
    * ``pipeline``: the same DMP driven by the trainer's ``TrainPipelineSparseDist``.

    The first two are timed alternately, ``repeats`` passes each (the pipeline rewrites
    the DMP's forward, so it runs after them); medians."""
    import torch

    from interformer_rec.config import load_config
    from interformer_rec.models import build_model
    from interformer_rec.train.ranking import RankingTrain
    from interformer_rec.train.trainer import Trainer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import run_train_step

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [*sets, f"train.out_dir={tmp}", "train.progress=false"])
        trainer = Trainer(cfg, write_outputs=False)
    batches = list(itertools.islice(iter(trainer.reader("train", train=True)), steps))
    rows = sum(b.batch_size for b in batches)
    torch.manual_seed(cfg.train.seed)
    model = RankingTrain(build_model(cfg.data.schema, cfg.model), cfg.train.embedding_regularizer, "fp32", "cpu")
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as throughput.py
    dmp, opt = trainer.dmp, trainer.optimizer

    def plain() -> None:
        for b in batches:
            run_train_step(model, adam, b)

    def sharded() -> None:
        for b in batches:
            run_train_step(dmp, opt, b)  # type: ignore[arg-type]

    def pipeline() -> None:
        it = iter(batches)
        with contextlib.suppress(StopIteration):
            while True:
                trainer.pipeline.progress(it)

    def rate(f: Any) -> float:
        start = time.perf_counter()
        f()
        return rows / (time.perf_counter() - start)

    rates: Dict[str, List[float]] = {"model only": [], "sharded model": [], "pipeline": []}
    for _ in range(repeats):
        rates["model only"].append(rate(plain))
        rates["sharded model"].append(rate(sharded))
    for _ in range(repeats):
        rates["pipeline"].append(rate(pipeline))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/amazon_grocery.yaml"))
    p.add_argument("--before", help="a git ref to run as the 'before' variant")
    p.add_argument("--steps", type=int, default=0, help="training steps per epoch (train.max_steps_per_epoch; 0: whole epochs)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="extra config overrides for every variant")
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE;KEY=VALUE, replaces the buckets variants")
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
    named = [(v.split(":", 1)[0], ROOT, [*base, *v.split(":", 1)[1].split(";")]) for v in args.variant]
    variants += named or [("buckets off", ROOT, [*base, "data.length_buckets=false"]),
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
    print("model only, sharded model, pipeline: timing ...", flush=True)
    breakdowns = {name: step_breakdown(args.config, sets, args.steps or None, repeats=3) for name, _, sets in named}
    steps = step_breakdown(args.config, [*base, "data.length_buckets=true"], args.steps or None, repeats=3) if not named else None
    result = {
        "config": str(args.config), "steps_per_epoch": args.steps, "epochs": args.epochs, "sets": args.set,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": "cpu",
        "torch_threads": __import__("torch").get_num_threads(), "variants": rows, "in_memory_samples_per_s": steps or breakdowns[named[0][0]],
        "in_memory_by_variant": breakdowns,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    Path(f"{args.out}.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(r: Dict[str, Any]) -> str:
    alone = r["in_memory_samples_per_s"]["model only"]
    first = r["variants"][0]["epoch_samples_per_s"]
    ref = statistics.median(first[1:] or first)
    lines = [
        f"End-to-end `interformer-rec train` on `{r['config']}` ({r['epochs']} "
        + (f"epochs of {r['steps_per_epoch']} steps" if r["steps_per_epoch"] else "whole epochs")
        + f", a checkpoint after each; {r['machine']}, {r['device']})",
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
            + f" | {later / alone:.0%} | {v['valid_auc']:.4f} |"
        )
    by_variant = r.get("in_memory_by_variant") or {"buckets on": r["in_memory_samples_per_s"]}
    names = list(by_variant)
    ratios = [f"{n} / {names[0]}" for n in names[1:]] or ["share of model only"]
    lines += ["", f"The training step on the same batches ({', '.join(f'`{n}`' for n in names)}), held in memory "
              "(no reader), median of 3, samples/s:", "",
              "| step | " + " | ".join([*names, *ratios]) + " |", "|---|" + "---:|" * (len(names) + len(ratios))]
    for step in by_variant[names[0]]:
        xs = [by_variant[n][step] for n in names]
        rel = [x / xs[0] for x in xs[1:]] or [xs[0] / by_variant[names[0]]["model only"]]
        lines.append(f"| {step} | " + " | ".join(f"{x:,.0f}" for x in xs) + " | "
                     + " | ".join(f"{x:.2f}x" if len(xs) > 1 else f"{x:.0%}" for x in rel) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
