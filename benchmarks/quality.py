"""Quality benchmark: InterFormer (dot / dcn / projection / dhen / dhen_flat / infnet)
against TorchRec's DLRM baselines, BST, DIN, INFNet and OneTrans, trained by the same trainer (the BARS protocol of
each data set's config: early stopping, LR schedule, best checkpoint) on the same
features and splits.

For every data set, model and seed it runs ``interformer-rec train`` (one process per
run, ``--jobs`` at a time) and collects the test metrics of the best validation epoch.
Every model gets the same tuning budget: the same ``--grid`` of overrides is tried on the
first seed and the setting with the best validation AUC is then run on every seed.
A finished run is reused when the config it saved, read by the current code (new keys take
their defaults), equals the one it would run with now
(a changed model default or config file retrains it); code changes are not detected.

    python benchmarks/quality.py --datasets amazon_grocery movielens synthetic --seeds 0 1 2 \
        --grid train.dense_optimizer.lr=0.001,0.003 train.embedding_regularizer=0,0.01
    interformer-rec bench quality --datasets movielens --seeds 0 1 2 --jobs 2
    python benchmarks/quality.py --datasets configs/your_log.yaml --models interformer din dlrm_dcn

A data set is a name (``configs/<name>.yaml`` and the baselines' ``configs/<name>_<model>.yaml``)
or the path of any config (``.yaml``): every model then trains on that config's data,
schema and trainer, chosen by ``model.name``.

Writes ``results/quality.json``, ``results/quality.md`` and ``results/quality.png``.
Data must exist first (``interformer-rec generate`` / ``convert movielens``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


from interformer_rec.config import Config, load_config, model_in_use

ROOT = Path(__file__).resolve().parents[1]
MODELS = [
    "interformer:dhen",
    "interformer:dhen_flat",
    "interformer:dcn",
    "dlrm",
    "dlrm_dcn",
    "dlrm_projection",
    "bst",
    "din",
    "interformer:infnet",
    "infnet",
    "onetrans",
]
METRICS = ("auc", "gauc", "logloss", "ne")


def is_config_path(dataset: str) -> bool:
    """A data set given by its config file (any data: the user's own) rather than by a
    name with ``configs/<name>.yaml`` and ``configs/<name>_<model>.yaml``."""
    return dataset.endswith((".yaml", ".yml"))


def dataset_key(dataset: str) -> str:
    """The name a data set's runs and results are filed under: its config's stem."""
    return Path(dataset).stem if is_config_path(dataset) else dataset


def config_for(dataset: str, model: str) -> Tuple[Path, List[str]]:
    """The config file and overrides that select ``model`` on ``dataset``: ``NAME``,
    ``interformer:INTERACTION``, either followed by ``@key=value`` overrides (a variant,
    e.g. ``interformer:dhen@model.interformer.num_layers=2``). ``dataset`` is a name
    (``configs/<name>.yaml``, baselines ``configs/<name>_<model>.yaml``) or a config file
    of any data set, whose data, schema and trainer every model then shares (the model
    chosen by ``model.name``)."""
    model, *variant = model.split("@")
    name, _, interaction = model.partition(":")
    chosen = [f"model.interformer.interaction={interaction}"] if name == "interformer" and interaction else []
    if is_config_path(dataset):
        return Path(dataset).resolve(), [f"model.name={name}", *chosen, *variant]
    if name == "interformer":
        return ROOT / "configs" / f"{dataset}.yaml", [*chosen, *variant]
    return ROOT / "configs" / f"{dataset}_{name}.yaml", variant


def _in_use(cfg: Config) -> Dict[str, Any]:
    d = cfg.to_dict()
    return {**d, "model": model_in_use(d["model"])}


def run_one(
    dataset: str, model: str, seed: int, overrides: Sequence[str], out: Path, threads: int, train: bool = True
) -> Optional[Dict[str, Any]]:
    """Train one model in a subprocess; return its metrics.json (plus the overrides).
    With ``train=False`` only a finished run is read (``None`` if there is none)."""
    config, extra = config_for(dataset, model)
    run_dir = out / "runs" / dataset_key(dataset) / model.replace(":", "_").replace("@", "+") / f"seed{seed}" / "_".join(
        o.split("=")[-1] for o in overrides
    ).replace("/", "-")
    metrics = run_dir / "metrics.json"
    sets = [*extra, f"train.seed={seed}", f"train.out_dir={run_dir}", "train.progress=false", *overrides]
    saved = run_dir / "config.yaml"
    # the saved config read as the current code reads it: a key added since (with its
    # default), or a changed sub-config of another model, is not a difference
    if metrics.exists() and (not saved.exists() or _in_use(load_config(saved)) != _in_use(load_config(config, sets))):
        if not train:
            print(f"{run_dir}: its config differs from the current one; left out", flush=True)
            return None
        print(f"{run_dir}: its config differs from the current one; retraining", flush=True)
        shutil.rmtree(run_dir)
    if not metrics.exists() and not train:
        return None
    if not metrics.exists():
        cmd = [sys.executable, "-m", "interformer_rec.cli", "train", "--config", str(config)]
        for o in sets:
            cmd += ["--set", o]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "log.txt", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{dataset}/{model}/seed{seed} failed: see {run_dir / 'log.txt'}")
    result = json.loads(metrics.read_text())
    result["overrides"] = list(overrides)
    return result


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"seeds": len(runs), "overrides": runs[0]["overrides"]}
    for k in METRICS:
        out[k] = _mean_std([r["test"][k] for r in runs])
    out["num_parameters"] = runs[0]["num_parameters"]
    out["train_seconds"] = statistics.mean(r["train_seconds"] for r in runs)
    out["epochs"] = [r.get("epochs_trained", len(r["history"])) for r in runs]
    out["best_epoch"] = [r["best_epoch"] for r in runs]
    if "oracle_auc" in runs[0]:
        out["oracle_auc"] = runs[0]["oracle_auc"]
    tasks = runs[0].get("tasks", [])
    if len(tasks) > 1:  # every task's test metrics (and oracle AUC), mean and std over seeds
        out["per_task"] = {
            t: {
                **{k: _mean_std([r["test"][f"{k}/{t}"] for r in runs]) for k in METRICS},
                **({"oracle_auc": runs[0][f"oracle_auc/{t}"]} if f"oracle_auc/{t}" in runs[0] else {}),
            }
            for t in tasks
        }
    return out


def _mean_std(vals: List[float]) -> Dict[str, Any]:
    return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}


def markdown(results: Dict[str, Dict[str, Any]]) -> str:
    lines = []
    for dataset, models in results.items():
        lines += [f"### {dataset}", ""]
        oracle = next((m.get("oracle_auc") for m in models.values() if "oracle_auc" in m), None)
        if oracle:
            lines += [f"Oracle AUC (true click probability): **{oracle:.4f}**", ""]
        lines += [
            "| model | seeds | test AUC | test gAUC | logloss | NE | params | train s | epochs (best) | tuned |"
            + (" gap closed |" if oracle else ""),
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if oracle else ""),
        ]
        for name, m in sorted(models.items(), key=lambda kv: -kv[1]["auc"]["mean"]):
            row = (
                f"| {name} | {m['seeds']} | {m['auc']['mean']:.4f} ± {m['auc']['std']:.4f} "
                f"| {m['gauc']['mean']:.4f} ± {m['gauc']['std']:.4f} "
                f"| {m['logloss']['mean']:.4f} ± {m['logloss']['std']:.4f} "
                f"| {m['ne']['mean']:.4f} ± {m['ne']['std']:.4f} "
                f"| {m['num_parameters']:,} | {m['train_seconds']:.0f} "
                f"| {'/'.join(map(str, m.get('epochs', [])))} ({'/'.join(map(str, m.get('best_epoch', [])))}) "
                f"| {' '.join(m['overrides']) or '-'} |"
            )
            if oracle:
                row += f" {(m['auc']['mean'] - 0.5) / (oracle - 0.5):.1%} |"
            lines.append(row)
        lines += ["", verdict(models), ""]
        per_task = {n: m["per_task"] for n, m in models.items() if "per_task" in m}
        if per_task:
            lines += [
                "Every task (test, mean ± std over seeds):", "",
                "| model | task | AUC | gAUC | logloss | NE | oracle AUC |", "|---|---|---|---|---|---|---|",
            ]
            for name, tasks in per_task.items():
                for t, m in tasks.items():
                    lines.append(
                        f"| {name} | {t} | "
                        + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in METRICS)
                        + (f" | {m['oracle_auc']:.4f} |" if "oracle_auc" in m else " | - |")
                    )
            lines.append("")
    return "\n".join(lines)


def verdict(models: Dict[str, Dict[str, Any]]) -> str:
    """Best InterFormer variant against the best baseline (DLRM family, BST, DIN, INFNet, OneTrans; by mean
    test AUC): the differences in AUC and gAUC points, whether the seed spreads
    (min..max) overlap, and which models reach NE < 1 on test."""
    def best(names: List[str]) -> Tuple[str, Dict[str, Any]]:
        return max(((n, models[n]) for n in names), key=lambda nm: nm[1]["auc"]["mean"])

    ours = [n for n in models if n.startswith("interformer")]
    others = [n for n in models if not n.startswith("interformer")]
    if not ours or not others:
        return ""
    (fi, i), (fb, b) = best(ours), best(others)
    parts = []
    for k in ("auc", "gauc"):
        diff = 100 * (i[k]["mean"] - b[k]["mean"])
        apart = min(i[k]["values"]) > max(b[k]["values"]) or max(i[k]["values"]) < min(b[k]["values"])
        spread = "one seed: no spread" if min(i["seeds"], b["seeds"]) < 2 else (
            f"seed spreads {'do not overlap' if apart else 'overlap'}")
        parts.append(f"{k} {diff:+.2f} points ({spread})")
    line = f"Best InterFormer ({fi}) vs best baseline ({fb}): " + "; ".join(parts) + "."
    oracle = i.get("oracle_auc")
    if oracle:
        gap = lambda m: (m["auc"]["mean"] - 0.5) / (oracle - 0.5)  # noqa: E731
        line += f" Gap to the oracle closed: {gap(i):.1%} vs {gap(b):.1%}."
    above = [n for n, m in models.items() if max(m["ne"]["values"]) >= 1]
    line += " NE < 1 on every test run: " + ("all models." if not above else f"not for {', '.join(above)}.")
    return line


def plot(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for ax, (dataset, models) in zip(axes[0], results.items()):
        names = sorted(models, key=lambda n: -models[n]["auc"]["mean"])
        means = [models[n]["auc"]["mean"] for n in names]
        stds = [models[n]["auc"]["std"] for n in names]
        colors = ["tab:blue" if n.startswith("interformer") else "tab:gray" for n in names]
        ax.barh(names, means, xerr=stds, color=colors, capsize=3)
        oracle = next((m.get("oracle_auc") for m in models.values() if "oracle_auc" in m), None)
        if oracle:
            ax.axvline(oracle, color="tab:red", linestyle="--", label=f"oracle {oracle:.3f}")
            ax.legend(loc="lower right")
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_xlim(max(0.5, lo - 0.02), max(means + [oracle or 0]) + 0.01)
        ax.invert_yaxis()
        ax.set_title(f"{dataset}: test AUC (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["synthetic", "movielens"])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--grid", nargs="*", default=[],
        help="KEY=V1,V2 overrides tried on the first seed for every model, e.g. train.dense_optimizer.lr=0.001,0.003",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the finished runs (a model's row shows how many seeds it has)")
    p.add_argument("--name", default="quality", help="report file names: <out>/<name>.{json,md,png} (runs stay in <out>/runs)")
    args = p.parse_args(argv)

    keys = [g.split("=", 1)[0] for g in args.grid]
    grid = [[f"{k}={v}" for k, v in zip(keys, vs)] for vs in itertools.product(*(g.split("=", 1)[1].split(",") for g in args.grid))]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    start = time.perf_counter()

    def run(task: Tuple[str, str, int, Tuple[str, ...]]) -> Optional[Dict[str, Any]]:
        d, m, s, o = task
        r = run_one(d, m, s, o, args.out, threads, train=not args.report_only)
        auc = f"{r['test']['auc']:.4f}" if r else "(no finished run)"
        print(f"{d:<10} {m:<24} seed {s} {' '.join(o):<40} test AUC {auc}", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        chosen: Dict[Tuple[str, str], Tuple[str, ...]] = {}
        if len(grid) > 1:  # tune on the first seed: best validation AUC
            tasks = [(d, m, args.seeds[0], tuple(g)) for d in args.datasets for m in args.models for g in grid]
            best: Dict[Tuple[str, str], Tuple[float, Tuple[str, ...]]] = {}
            for (d, m, _, o), r in zip(tasks, pool.map(run, tasks)):
                if r is None:
                    continue
                if (d, m) not in best or r["valid"]["auc"] > best[(d, m)][0]:
                    best[(d, m)] = (r["valid"]["auc"], o)
            chosen = {k: o for k, (_, o) in best.items()}
        else:
            chosen = {(d, m): tuple(grid[0]) for d in args.datasets for m in args.models}
        tasks = [(d, m, s, chosen[(d, m)]) for d in args.datasets for m in args.models for s in args.seeds if (d, m) in chosen]
        runs = list(pool.map(run, tasks))

    results: Dict[str, Dict[str, Any]] = {}
    for d in args.datasets:
        for m in args.models:
            rs = [r for t, r in zip(tasks, runs) if t[0] == d and t[1] == m and r is not None]
            if rs:
                results.setdefault(dataset_key(d), {})[m] = summarize(rs)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"seeds": args.seeds, "grid": args.grid, "wall_seconds": time.perf_counter() - start, "cpu_count": os.cpu_count()}
    report = args.out / args.name
    report.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = markdown(results)
    report.with_suffix(".md").write_text(md)
    plot(results, report.with_suffix(".png"))
    print(md)
    print(f"wrote {report}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
