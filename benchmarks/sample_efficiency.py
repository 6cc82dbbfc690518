"""Sample efficiency on a planted target–history matching task: how many training steps
each model needs to reach a held-out AUC of 0.95.

    python benchmarks/sample_efficiency.py                      # every model, 3 seeds
    python benchmarks/sample_efficiency.py --models din interformer --seeds 0 1 2 3 4
    python benchmarks/sample_efficiency.py --models interformer "interformer[target_attention=false]"

The task (issue 32): each row has a history of ``--seq-len`` item ids (T = 50; lengths
uniform in ``1..T``) drawn from ``--items`` items (500) and a target item; the label is 1
iff the target occurs in the history. Half of the targets are drawn from the row's own
history, half uniformly (so about half of the labels are 1, and the target's marginal
carries no signal). A pooled user id and a dense value are noise. Every model of the
project is built at its defaults (``embedding_dim`` ``--dim`` = 16) and trained with
Adam (lr 3e-3, batch 128) on fresh rows each step; every ``--eval-every`` steps its AUC
on 2,048 held-out rows is measured, and the first step at which it reaches ``--target``
(0.95) is recorded (``--max-steps`` if never: reported as "> max").

A model name may carry overrides of its own section, ``name[key=value,...]`` (e.g.
``interformer[target_attention=false]``, the paper's model; ``--set`` applies to every
InterFormer run). Writes ``<out>.json``, ``<out>.md`` (median steps to the target per model, and each
seed's) and ``<out>.png`` (held-out AUC against steps, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import model_config  # noqa: E402

from interformer_rec.config import Schema, SequenceFeature, SparseFeature, TableConfig  # noqa: E402
from interformer_rec.models import build_model  # noqa: E402
from interformer_rec.ops.metrics import auc as roc_auc  # noqa: E402

MODELS = ["interformer", "din", "bst", "onetrans", "infnet", "dlrm", "dlrm_dcn", "dlrm_projection"]
Inputs = Tuple[Tensor, KeyedJaggedTensor, KeyedJaggedTensor]


def planted_schema(items: int, seq_len: int) -> Schema:
    """A dense noise value, a pooled noise user id, the target item sharing ``item`` with
    the history."""
    return Schema(
        labels=["label"],
        dense=["noise"],
        sparse=[SparseFeature("user_id", "user"), SparseFeature("item_id", "item")],
        sequence=[SequenceFeature("hist_item_ids", "item", seq_len)],
        tables=[TableConfig("user", 100), TableConfig("item", items)],
    )


def planted_rows(n: int, items: int, seq_len: int, g: torch.Generator) -> Tuple[Inputs, Tensor]:
    """``n`` rows of the task: ``((dense [n, 1], pooled KJT, sequence KJT), labels [n, 1])``."""
    lengths = torch.randint(1, seq_len + 1, (n,), generator=g)
    history = torch.randint(0, items, (n, seq_len), generator=g)
    valid = torch.arange(seq_len) < lengths.unsqueeze(1)
    from_history = torch.rand(n, generator=g) < 0.5
    step = (torch.rand(n, generator=g) * lengths).long()
    target = torch.where(from_history, history[torch.arange(n), step], torch.randint(0, items, (n,), generator=g))
    labels = ((history == target.unsqueeze(1)) & valid).any(1).float().unsqueeze(1)
    pooled = KeyedJaggedTensor.from_lengths_sync(
        keys=["user_id"], values=torch.randint(0, 100, (n,), generator=g), lengths=torch.ones(n, dtype=torch.int64)
    )
    sequence = KeyedJaggedTensor.from_lengths_sync(
        keys=["item_id", "hist_item_ids"],
        values=torch.cat([target, history[valid]]),
        lengths=torch.cat([torch.ones(n, dtype=torch.int64), lengths]),
    )
    return (torch.randn(n, 1, generator=g), pooled, sequence), labels


def steps_to_target(
    name: str, sets: Sequence[str], seed: int, args: argparse.Namespace
) -> Dict[str, Any]:
    """Train one model on fresh rows; its held-out AUC every ``eval_every`` steps and the
    first step at which it reaches ``target``."""
    schema = planted_schema(args.items, args.seq_len)
    torch.manual_seed(seed)
    base, _, own = name.partition("[")
    own_sets = [f"{base.split(':')[0]}.{kv}" for kv in own.rstrip("]").split(",") if kv]
    model = build_model(schema, model_config(base, args.dim, [*sets, *own_sets]))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(1000 + seed)
    held_out, held_labels = planted_rows(2048, args.items, args.seq_len, torch.Generator().manual_seed(10**6 + seed))
    curve: List[Tuple[int, float]] = []
    reached = None
    start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        model.train()
        inputs, labels = planted_rows(args.batch_size, args.items, args.seq_len, g)
        loss = F.binary_cross_entropy_with_logits(model(*inputs), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            model.eval()
            with torch.no_grad():
                auc = float(roc_auc(held_labels.squeeze(1), model(*held_out)[:, 0]))
            curve.append((step, auc))
            if auc >= args.target:
                reached = step
                break
    return {"model": name, "sets": list(sets), "seed": seed, "steps_to_target": reached, "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS, help="model names (interformer:<interaction> too)")
    p.add_argument("--set", action="append", default=[], help="model override for InterFormer runs, e.g. interformer.pma_context=false")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--out", type=Path, default=Path("results/sample_efficiency"))
    args = p.parse_args()
    runs = []
    jobs = [(m, s) for m in args.models for s in args.seeds]
    for name, seed in tqdm(jobs, desc="models x seeds"):
        sets = args.set if name.startswith("interformer") else []
        runs.append(steps_to_target(name, sets, seed, args))
        r = runs[-1]
        tqdm.write(f"{name} seed {seed}: {r['steps_to_target'] or f'> {args.max_steps}'} steps "
                   f"(last AUC {r['curve'][-1][1]:.3f}, {r['seconds']} s)")
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": "cpu",
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=2))
    Path(f"{args.out}.md").write_text(to_markdown(result))
    plot(result, Path(f"{args.out}.png"))
    print(to_markdown(result))


def _median_steps(runs: List[Dict[str, Any]], cap: int) -> float:
    """Median steps to the target, a run that never reached it counted as ``cap + 1``."""
    return statistics.median(r["steps_to_target"] or cap + 1 for r in runs)


def to_markdown(r: Dict[str, Any]) -> str:
    a = r["args"]
    cap = a["max_steps"]
    by_model: Dict[str, List[Dict[str, Any]]] = {}
    for run in r["runs"]:
        by_model.setdefault(run["model"], []).append(run)
    din = _median_steps(by_model["din"], cap) if "din" in by_model else None
    lines = [
        f"Steps to held-out AUC {a['target']} on the planted target-in-history task (T = {a['seq_len']}, "
        f"{a['items']} items, d = {a['dim']}, Adam {a['lr']}, batch {a['batch_size']}, evaluated every "
        f"{a['eval_every']} steps, at most {cap}; {r['machine']}, {r['device']})"
        + (f"; InterFormer overrides: {', '.join(a['set'])}" if a["set"] else ""),
        "",
        "| model | median steps | / DIN | per seed | AUC at the last evaluation (per seed) |",
        "|---|---:|---:|---|---|",
    ]
    for name, runs in by_model.items():
        med = _median_steps(runs, cap)
        shown = f"> {cap}" if med > cap else f"{med:.0f}"
        ratio = f"{med / din:.1f}x" if din and med <= cap else "–"
        per_seed = ", ".join(str(x["steps_to_target"] or f"> {cap}") for x in runs)
        last = ", ".join(f"{x['curve'][-1][1]:.3f}" for x in runs)
        lines.append(f"| {name} | {shown} | {ratio} | {per_seed} | {last} |")
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_model: Dict[str, List[Dict[str, Any]]] = {}
    for run in r["runs"]:
        by_model.setdefault(run["model"], []).append(run)
    for name, runs in by_model.items():
        steps = sorted({s for run in runs for s, _ in run["curve"]})
        # a run that stopped at the target keeps its last AUC afterwards
        mean = [statistics.mean(next((a for s2, a in reversed(run["curve"]) if s2 <= s), 0.5) for run in runs)
                for s in steps]
        ax.plot(steps, mean, label=name)
    ax.axhline(r["args"]["target"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training steps (batch %d)" % r["args"]["batch_size"])
    ax.set_ylabel("held-out AUC (mean over seeds)")
    ax.set_title("Planted target-in-history task")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
