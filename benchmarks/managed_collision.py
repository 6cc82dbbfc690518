"""Modulo hashing vs managed collision on a drifting log of raw 64-bit ids.

    python benchmarks/managed_collision.py                  # every variant, 3 seeds
    python benchmarks/managed_collision.py --seeds 0 1      # fewer seeds
    python benchmarks/managed_collision.py --quick          # a tiny smoke run (seconds)

The log (:func:`generate_log`, numpy, seeded) is a planted CTR log over ``--days`` days,
written in time order (train = days 0..D-3, valid = day D-2, test = day D-1; row groups in
time order, ``data.shuffle_row_groups: false``, one epoch, so training follows time). Its
columns: ``click``, ``user_id`` and ``item_id`` (raw random 64-bit ids of any sign),
``hist_item_ids`` (the user's last clicked items, most recent last, at most 20) and
``true_prob`` (the planted click probability: the oracle AUC).

* Items are born all the time (``births_per_day``); an item's popularity is its Zipf
  weight (``u^-zipf``, ``u`` uniform: over the items alive the sorted weights follow
  ``rank^-zipf``) times an age profile ``(a/τ)·exp(-a/τ)`` (rises for ``τ`` days, then
  fades; no impressions after ``max_age`` days). So the items alive on one day are about
  the table size while the distinct items of the whole log are several times it.
* Each item has a planted quality (a logit term ``N(0, quality_sd²)``) and a planted
  cluster; each user has two preferred clusters (most of the items shown to them come from
  these) and a small bias. The click logit is
  ``b + quality(item) + bias(user) + match · share of the history in the item's cluster``:
  a row of its own per item matters (collisions mix the qualities of live items, and
  the clusters the model must learn from the ids).

Variants at EQUAL total rows ``R`` of the ``item`` table (``--rows``, 4096): ``hash``
(``id_policy: hash``, ``R`` rows: ``splitmix64(id) % R``) and ``managed_collision`` with
eviction ``lru``, ``lfu``, ``distance_lfu`` (``num_embeddings R - 1`` and ``buckets 1``: R
rows, the last the shared row of the ids without one; ``eviction_interval`` 1), and ``mc
big (lru)`` (rows ≥ the distinct items of the log: the zero-collision reference); then
``hash @N`` and ``mc lru @N`` at each ``--also-rows`` N (8192: between the items of one day
and those of the log). The ``user`` table is the same in every variant (``id_policy:
hash``, ``--user-rows`` rows), so only the item table differs (an MC user table would also
move the user id from the pooled EmbeddingBag to a token of the EmbeddingCollection,
changing the model).

Every MC run also counts the ids that TorchRec's ``profile`` leaves out of admission and
eviction counts (:class:`HistoryBufferProbe`; TorchRec sizes that buffer from the first
training batch, the package grows it, ``interformer_rec.train.tables.prepare_managed_tables``):
the column *ids not profiled* must read 0.

Per variant and seed: test AUC and logloss, training samples/s (the trainer's, one epoch),
and the collisions among the test day's distinct items (targets and histories): the share
of their rows used by ≥ 2 of them, the share of the items that share their row, and the
share of test impressions (target items) whose row is shared; for hash from
``splitmix64(id) % R``, for MC from the trained model's remapping (items without a row all
read the miss row: a shared row as soon as two of them are seen). For ``mc big`` the check
is that every distinct item of the log gets its own row: the trained remapping on the
items of the trained rows, then a copy of it fed the rest of the log in training mode.
The log is one (``--log-seed``); the seeds change the model's initialisation only (the
rows are read in time order).

Writes ``results/managed_collision.json``, ``.md`` (the table, printed at the end) and
``.png``; the log and the runs go under ``results/managed_collision/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
ITEM_FEATURES = ["item_id", "hist_item_ids"]  # the features of the item table, in schema order


# --------------------------------------------------------------------------- the log


@dataclass
class LogSpec:
    days: int = 10
    rows_per_day: int = 20_000
    slots_per_day: int = 24  # popularity is constant within a slot
    births_per_day: int = 800
    zipf: float = 0.7  # item base popularity u^-zipf: rank^-zipf over the items alive
    age_scale: float = 1.5  # τ (days) of the age profile (a/τ)·exp(-a/τ)
    max_age: float = 6.0  # days after birth without impressions
    users: int = 4_000
    user_zipf: float = 0.6  # user activity u^-user_zipf
    clusters: int = 20
    preferred_share: float = 0.6  # shown items drawn from one of the user's two clusters
    quality_sd: float = 1.5
    user_sd: float = 0.3
    match: float = 2.5
    intercept: float = -2.2
    max_len: int = 20
    history_days: float = 2.0  # the history keeps the clicks of the last history_days days
    burn_in_days: float = 2.0  # simulated before day 0 (histories), not written
    row_group_size: int = 4096
    seed: int = 0


def _raw_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random int64 ids of any sign."""
    while True:
        ids = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True)
        if len(np.unique(ids)) == n:
            return ids


def generate_log(spec: LogSpec, out: Path) -> Dict[str, Any]:
    """Write ``out/{train,valid,test}.parquet`` (time order) and return the log's
    statistics (distinct items per split and per day, click rate, ...)."""
    rng = np.random.default_rng(spec.seed)
    start = -spec.burn_in_days
    # items: born uniformly over [start - max_age, days)
    span = spec.days - start + spec.max_age
    n_items = int(round(span * spec.births_per_day))
    birth = np.sort(rng.uniform(start - spec.max_age, spec.days, n_items))
    base = rng.uniform(1e-6, 1.0, n_items) ** -spec.zipf
    cluster = rng.integers(0, spec.clusters, n_items)
    quality = rng.normal(0.0, spec.quality_sd, n_items)
    item_raw = _raw_ids(rng, n_items)
    # users
    activity = rng.uniform(1e-6, 1.0, spec.users) ** -spec.user_zipf
    activity /= activity.sum()
    prefs = np.stack([rng.integers(0, spec.clusters, spec.users), rng.integers(0, spec.clusters, spec.users)], 1)
    user_bias = rng.normal(0.0, spec.user_sd, spec.users)
    user_raw = _raw_ids(rng, spec.users)

    # impressions, slot by slot: popularity = base · age profile over the items alive
    n_slots = int(round((spec.days - start) * spec.slots_per_day))
    per_slot = spec.rows_per_day // spec.slots_per_day
    users, items, times = [], [], []
    for s in range(n_slots):
        t = start + (s + 0.5) / spec.slots_per_day
        age = t - birth
        alive = np.flatnonzero((age > 0) & (age < spec.max_age))
        w = base[alive] * (age[alive] / spec.age_scale) * np.exp(-age[alive] / spec.age_scale)
        u = rng.choice(spec.users, size=per_slot, p=activity)
        target = np.empty(per_slot, dtype=np.int64)
        pref = rng.random(per_slot) < spec.preferred_share
        target[~pref] = alive[rng.choice(len(alive), size=int((~pref).sum()), p=w / w.sum())]
        want = prefs[u, rng.integers(0, 2, per_slot)]
        for c in np.unique(want[pref]):
            rows = np.flatnonzero(pref & (want == c))
            in_c = cluster[alive] == c
            wc = w[in_c]
            target[rows] = alive[in_c][rng.choice(len(wc), size=len(rows), p=wc / wc.sum())]
        users.append(u)
        items.append(target)
        times.append(t + (np.arange(per_slot) + 0.5) / (per_slot * spec.slots_per_day) - 0.5 / spec.slots_per_day)
    user = np.concatenate(users)
    item = np.concatenate(items)
    time_ = np.concatenate(times)

    # clicks in time order: the history is the user's last clicked items
    fixed = spec.intercept + quality[item] + user_bias[user]
    draws = rng.random(len(item))
    cl = cluster.tolist()
    hists: List[List[int]] = [[] for _ in range(spec.users)]
    hist_times: List[List[float]] = [[] for _ in range(spec.users)]
    times_l = time_.tolist()
    hist_values: List[int] = []
    hist_offsets = np.zeros(len(item) + 1, dtype=np.int64)
    logit = np.empty(len(item))
    clicks = np.empty(len(item), dtype=np.int64)
    for r, (uu, ii) in enumerate(zip(user.tolist(), item.tolist())):
        h, ht, now = hists[uu], hist_times[uu], times_l[r]
        while ht and ht[0] < now - spec.history_days:
            del h[0], ht[0]
        c = cl[ii]
        m = sum(1 for x in h if cl[x] == c) / len(h) if h else 0.0
        z = fixed[r] + spec.match * m
        logit[r] = z
        click = int(draws[r] < 1.0 / (1.0 + math.exp(-z)))
        clicks[r] = click
        hist_values.extend(h)
        hist_offsets[r + 1] = len(hist_values)
        if click:
            h.append(ii)
            ht.append(now)
            if len(h) > spec.max_len:
                del h[0], ht[0]
    hist = np.asarray(hist_values, dtype=np.int64)
    prob = 1.0 / (1.0 + np.exp(-logit))

    day = np.floor(time_).astype(np.int64)
    splits = {"train": (0, spec.days - 2), "valid": (spec.days - 2, spec.days - 1), "test": (spec.days - 1, spec.days)}
    out.mkdir(parents=True, exist_ok=True)
    stats: Dict[str, Any] = {"items_total": n_items, "users": spec.users, "click_rate": {}, "rows": {}}
    split_items: Dict[str, np.ndarray] = {}
    for split, (lo, hi) in splits.items():
        rows = np.flatnonzero((day >= lo) & (day < hi))
        a, z = rows[0], rows[-1] + 1  # contiguous: time order
        offs = hist_offsets[a:z + 1] - hist_offsets[a]
        h = hist[hist_offsets[a]:hist_offsets[z]]
        table = pa.table({
            "click": pa.array(clicks[a:z]),
            "user_id": pa.array(user_raw[user[a:z]]),
            "item_id": pa.array(item_raw[item[a:z]]),
            "hist_item_ids": pa.ListArray.from_arrays(pa.array(offs.astype(np.int32)), pa.array(item_raw[h])),
            "true_prob": pa.array(prob[a:z].astype(np.float32)),
        })
        pq.write_table(table, out / f"{split}.parquet", row_group_size=spec.row_group_size)
        split_items[split] = np.unique(np.concatenate([item[a:z], h]))
        stats["rows"][split] = int(z - a)
        stats["click_rate"][split] = float(clicks[a:z].mean())
    written = np.flatnonzero(day >= 0)
    per_day_targets, per_day_all = [], []
    for d in range(spec.days):
        rows = np.flatnonzero(day == d)
        a, z = rows[0], rows[-1] + 1
        per_day_targets.append(int(len(np.unique(item[a:z]))))
        per_day_all.append(int(len(np.unique(np.concatenate([item[a:z], hist[hist_offsets[a]:hist_offsets[z]]])))))
    a, z = written[0], written[-1] + 1
    log_items = np.unique(np.concatenate([item[a:z], hist[hist_offsets[a]:hist_offsets[z]]]))
    test_targets = item[day == spec.days - 1]
    seen = np.isin(test_targets, split_items["train"])
    stats.update({
        "distinct_items": {k: int(len(v)) for k, v in split_items.items()},
        "distinct_items_log": int(len(log_items)),
        "distinct_users_log": int(len(np.unique(user[a:z]))),
        "distinct_items_per_day": per_day_all,
        "distinct_target_items_per_day": per_day_targets,
        "test_impressions_on_items_seen_in_training": float(seen.mean()),
        "mean_history_length": float(np.diff(hist_offsets[a:z + 1]).mean()),
    })
    return stats


# --------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str
    policy: str  # hash | managed_collision
    eviction: Optional[str]  # lru | lfu | distance_lfu (managed_collision)
    rows: int  # total rows of the item table (num_embeddings + buckets for MC)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name).strip("_")


def variants(rows: int, big_rows: int, names: Sequence[str], also_rows: Sequence[int] = ()) -> List[Variant]:
    """``hash`` and the MC variants of ``names`` (``lru``, ``lfu``, ``distance_lfu``,
    ``big``) at ``rows``; then ``hash`` and ``lru`` at each of ``also_rows``."""
    out = []
    for n in names:
        if n == "hash":
            out.append(Variant("hash", "hash", None, rows))
        elif n == "big":
            out.append(Variant("mc big (lru)", "managed_collision", "lru", big_rows))
        else:
            out.append(Variant(f"mc {n}", "managed_collision", n, rows))
    for r in also_rows:
        out.append(Variant(f"hash @{r}", "hash", None, r))
        out.append(Variant(f"mc lru @{r}", "managed_collision", "lru", r))
    return out


def item_table(v: Variant, eviction_interval: int, decay_exponent: float) -> Dict[str, Any]:
    if v.policy == "hash":
        return {"name": "item", "num_embeddings": v.rows, "id_policy": "hash"}
    return {
        "name": "item", "num_embeddings": v.rows - 1, "id_policy": "managed_collision",
        "managed_collision": {"eviction_policy": v.eviction, "eviction_interval": eviction_interval,
                              "decay_exponent": decay_exponent, "buckets": 1},
    }


def make_config(data: Path, out_dir: Path, v: Variant, args: argparse.Namespace, seed: int, spec: LogSpec):
    """The config of one run: ``configs/synthetic.yaml``'s model and train sections, this
    log's schema, one epoch in time order, then ``--set``."""
    from interformer_rec.config import config_from_dict
    from interformer_rec.typed_yaml import apply_overrides, read_yaml

    raw = read_yaml(ROOT / "configs" / "synthetic.yaml")
    raw["data"] = {
        "train": str(data / "train.parquet"), "valid": str(data / "valid.parquet"), "test": str(data / "test.parquet"),
        "shuffle_row_groups": False,
        "schema": {
            "labels": ["click"],
            "sparse": [{"name": "user_id", "table": "user"}, {"name": "item_id", "table": "item"}],
            "sequence": [{"name": "hist_item_ids", "table": "item", "max_len": spec.max_len}],
            "tables": [{"name": "user", "num_embeddings": args.user_rows, "id_policy": "hash"},
                       item_table(v, args.eviction_interval, args.decay_exponent)],
            "group_key": "user_id",
            "oracle": "true_prob",
        },
    }
    raw["train"].update({
        "epochs": 1, "early_stopping_patience": None, "out_dir": str(out_dir), "progress": False, "seed": seed,
        "lr_schedule": {"name": "constant"},
    })
    return config_from_dict(apply_overrides(raw, [*SMALL_MODEL, *args.set]), "managed_collision benchmark")


SMALL_MODEL = [
    "model.embedding_dim=16",
    "model.interformer.num_layers=1",
    "model.interformer.interaction_mlp=[32]",
    "model.interformer.over_arch=[32]",
]


# --------------------------------------------------------------------------- collisions


def split_ids(data: Path, split: str, first: Optional[int] = None, skip: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(target item ids [N], every item id of the split: targets and histories)``, raw,
    of rows ``[skip, first)`` of the split (default: all)."""
    table = pq.read_table(data / f"{split}.parquet", columns=["item_id", "hist_item_ids"])
    table = table.slice(skip, (table.num_rows if first is None else first) - skip)
    targets = table.column("item_id").to_numpy().astype(np.int64)
    hist = table.column("hist_item_ids").combine_chunks().flatten().to_numpy().astype(np.int64)
    return targets, np.concatenate([targets, hist])


def trained_rows(data: Path, batch_size: int) -> int:
    """Rows of the training split that one epoch on one rank trains on: the reader drops
    the last partial batch (the file's last rows: length buckets regroup only between a
    window's batch boundaries)."""
    n = pq.ParquetFile(data / "train.parquet").metadata.num_rows
    return n - n % batch_size


def mixed(raw: np.ndarray, space: int) -> np.ndarray:
    """Raw ids mixed as the reader mixes a managed-collision table's
    (``interformer_rec.data.decode.apply_id_policy``)."""
    from interformer_rec.arrays import splitmix64

    return (splitmix64(raw) % np.uint64(space)).astype(np.int64)


def mc_rows(mcc: Any, ids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The rows that the ``ManagedCollisionCollection`` ``mcc`` gives the mixed ids
    ``ids`` (in its current mode: eval remaps only; train also admits)."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    out = []
    with torch.no_grad():
        for a in range(0, len(ids), chunk):
            v = torch.from_numpy(ids[a:a + chunk])
            n = len(v)
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=ITEM_FEATURES, values=v,
                lengths=torch.cat([torch.ones(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)]),
            )
            out.append(mcc(kjt).values().numpy().copy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def collision_shares(id_rows: Dict[int, int], targets: np.ndarray, miss_row: Optional[int] = None) -> Dict[str, float]:
    """Among the distinct ids of ``id_rows`` (id -> row): the share of their rows used by
    ≥ 2 of them, the share of the ids whose row is shared, the share of the ``targets``
    (impressions) whose row is shared; and the shares of ids and impressions on the miss
    row (MC: ids without a row of their own)."""
    ids = np.fromiter(id_rows.keys(), dtype=np.int64, count=len(id_rows))
    rows = np.fromiter(id_rows.values(), dtype=np.int64, count=len(id_rows))
    urows, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    shared_id = counts[inverse] >= 2
    order = np.argsort(ids)
    pos = order[np.searchsorted(ids[order], targets)]
    r = {
        "distinct_ids": int(len(ids)),
        "distinct_rows": int(len(urows)),
        "rows_shared": float((counts >= 2).mean()),
        "ids_sharing": float(shared_id.mean()),
        "impressions_shared": float(shared_id[pos].mean()),
    }
    if miss_row is not None:
        on_miss = rows == miss_row
        r["ids_on_miss_row"] = float(on_miss.mean())
        r["impressions_on_miss_row"] = float(on_miss[pos].mean())
    return r


def hash_collisions(data: Path, rows: int) -> Dict[str, float]:
    from interformer_rec.arrays import splitmix64

    targets, every = split_ids(data, "test")
    ids = np.unique(every)
    r = (splitmix64(ids) % np.uint64(rows)).astype(np.int64)
    return collision_shares(dict(zip(ids.tolist(), r.tolist())), targets)


def mc_collisions(run_dir: Path, data: Path, big: bool) -> Dict[str, Any]:
    """Test-day collisions from the trained model's remapping; for the big table also the
    zero-collision check over every item of the log."""
    from interformer_rec.export.export import load_model

    model, cfg, _, _ = load_model(run_dir)
    mcc = model.mc_ec._managed_collision_collection
    mcc.eval()
    table = cfg.data.schema.table("item")
    space = table.managed_collision.input_hash_size
    miss = table.num_embeddings + table.managed_collision.buckets - 1  # one bucket: its last row
    targets, every = split_ids(data, "test")
    ids = np.unique(every)
    rows = mc_rows(mcc, mixed(ids, space))
    out: Dict[str, Any] = {"test": collision_shares(dict(zip(ids.tolist(), rows.tolist())), targets, miss)}
    # the training ids: how many got (and kept) a row of their own by the end of training
    trained = trained_rows(data, cfg.train.batch_size)
    _, train_every = split_ids(data, "train", first=trained)
    train_ids = np.unique(train_every)
    train_rows = mc_rows(mcc, mixed(train_ids, space))
    out["train_ids_with_own_row_at_end"] = float((train_rows != miss).mean())
    if big:
        own = train_rows[train_rows != miss]
        check: Dict[str, Any] = {
            "train_ids": int(len(train_ids)),
            "train_ids_on_miss_row": int((train_rows == miss).sum()),
            "train_distinct_rows": int(len(np.unique(own))),
        }
        # feed the rest of the log (the dropped last partial training batch, the valid
        # and test days) to a copy in training mode (admits them), then remap every item
        # (in equal chunks: TorchRec sizes its history buffer from the first one)
        rest = np.unique(np.concatenate(
            [split_ids(data, "train", skip=trained)[1], split_ids(data, "valid")[1], split_ids(data, "test")[1]]))
        admit = copy.deepcopy(mcc).train()
        mc_rows(admit, mixed(rest, space), chunk=4096)
        admit.eval()
        log_ids = np.unique(np.concatenate([train_ids, rest]))
        log_rows = mc_rows(admit, mixed(log_ids, space))
        check.update({
            "log_ids": int(len(log_ids)),
            "log_ids_on_miss_row": int((log_rows == miss).sum()),
            "log_distinct_rows": int(len(np.unique(log_rows))),
            "mixed_id_collisions": int(len(log_ids) - len(np.unique(mixed(log_ids, space)))),
        })
        check["zero_collisions"] = (
            check["log_ids_on_miss_row"] == 0 and check["log_distinct_rows"] == check["log_ids"]
        )
        out["zero_collision_check"] = check
    return out


# --------------------------------------------------------------------------- TorchRec's history buffer


class HistoryBufferProbe:
    """Counts, during training, the ids that ``MCHManagedCollisionModule.profile`` drops.

    TorchRec's module sizes the buffer of the ids it profiles between admissions (what
    is admitted, LRU/LFU counts) from the FIRST training batch (``values ×
    eviction_interval × 1.25``, ``_init_history_buffers``) and silently drops the ids of
    a later step beyond it (``profile``: ``values[:free_elements]``): they are looked up
    (their row if they have one, else the miss row) but neither admitted nor counted.
    With length buckets the first batch is the one of the shortest histories, so without
    the package's growing buffer most history ids of later steps would be dropped. The
    probe wraps the class's ``profile`` (under the package's per-module wrapper, so it
    sees the buffer after any growth) and counts what would not fit."""

    def __init__(self) -> None:
        self.seen = self.dropped = 0

    def __enter__(self) -> "HistoryBufferProbe":
        from torchrec.modules.mc_modules import MCHManagedCollisionModule

        self._cls = MCHManagedCollisionModule
        self._profile = profile0 = MCHManagedCollisionModule.profile
        probe = self

        def profile(mod: Any, features: Dict[str, Any]) -> Dict[str, Any]:
            if mod.training:
                n = [f.values().numel() for f in features.values()]
                size = mod._input_history_buffer_size
                if size == -1:  # the buffer this call will create
                    size = int(sum(n) * mod._eviction_interval * 1.25)
                free = size - mod._current_history_buffer_offset
                for k in n:
                    take = min(max(free, 0), k)
                    probe.seen += k
                    probe.dropped += k - take
                    free -= take
            return profile0(mod, features)

        MCHManagedCollisionModule.profile = profile  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cls.profile = self._profile  # type: ignore[method-assign]

    def summary(self) -> Dict[str, Any]:
        return {"ids_profiled": self.seen, "ids_dropped": self.dropped,
                "dropped_share": self.dropped / self.seen if self.seen else 0.0}


# --------------------------------------------------------------------------- runs


def run_variant(data: Path, out_dir: Path, v: Variant, args: argparse.Namespace, seed: int, spec: LogSpec) -> Dict[str, Any]:
    import shutil

    from interformer_rec.train.trainer import Trainer

    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = make_config(data, out_dir, v, args, seed, spec)
    start = time.perf_counter()
    probe = HistoryBufferProbe()
    with probe:
        m = Trainer(cfg).fit()
    wall = time.perf_counter() - start
    row: Dict[str, Any] = {
        "variant": v.name, "policy": v.policy, "seed": seed, "rows": v.rows,
        "test_auc": m["test"]["auc"], "test_gauc": m["test"]["gauc"], "test_logloss": m["test"]["logloss"],
        "valid_auc": m["valid"]["auc"], "oracle_auc": m.get("oracle_auc"),
        "train_samples_per_s": m["history"][-1]["train_samples_per_s"], "train_seconds": m["train_seconds"],
        "wall_seconds": wall,
    }
    if v.policy == "hash":
        row["collisions"] = hash_collisions(data, v.rows)
    else:
        mc = mc_collisions(out_dir, data, big=v.name.startswith("mc big"))
        row["collisions"] = mc.pop("test")
        row.update(mc)
        row["history_buffer"] = probe.summary()
    return row


# --------------------------------------------------------------------------- report


def _mean_sd(xs: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per variant: means over seeds; the AUC gap vs hash (per seed, then mean ± sd) and
    the samples/s ratio to hash: the hash run of the same rows and seed, else (the big
    table) of the first hash variant's rows."""
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    hashes = {(r["rows"], r["seed"]): r for r in runs if r["policy"] == "hash"}
    main_rows = next((r["rows"] for r in runs if r["policy"] == "hash"), None)
    rows = []
    for name, rs in by.items():
        ref = {r["seed"]: hashes.get((r["rows"], r["seed"]), hashes.get((main_rows, r["seed"]))) for r in rs}
        hash_by_seed = {k: v for k, v in ref.items() if v is not None}
        auc = _mean_sd([r["test_auc"] for r in rs])
        gaps = [r["test_auc"] - hash_by_seed[r["seed"]]["test_auc"] for r in rs if r["seed"] in hash_by_seed]
        ratios = [hash_by_seed[r["seed"]]["train_samples_per_s"] / r["train_samples_per_s"]
                  for r in rs if r["seed"] in hash_by_seed]
        col = {k: statistics.mean(r["collisions"][k] for r in rs) for k in rs[0]["collisions"]}
        s = {
            "variant": name, "rows": rs[0]["rows"], "seeds": [r["seed"] for r in rs],
            "test_auc_mean": auc[0], "test_auc_sd": auc[1],
            "test_logloss_mean": statistics.mean(r["test_logloss"] for r in rs),
            "gap_vs_hash_mean": statistics.mean(gaps) if gaps else None,
            "gap_vs_hash_sd": statistics.stdev(gaps) if len(gaps) > 1 else 0.0 if gaps else None,
            "train_samples_per_s": statistics.median(r["train_samples_per_s"] for r in rs),
            "hash_time_ratio": statistics.median(ratios) if ratios else None,
            "collisions": col,
        }
        if "train_ids_with_own_row_at_end" in rs[0]:
            s["train_ids_with_own_row_at_end"] = statistics.mean(r["train_ids_with_own_row_at_end"] for r in rs)
        if "history_buffer" in rs[0]:
            s["ids_dropped_by_profile"] = statistics.mean(r["history_buffer"]["dropped_share"] for r in rs)
        if "zero_collision_check" in rs[0]:
            s["zero_collisions"] = all(r["zero_collision_check"]["zero_collisions"] for r in rs)
        rows.append(s)
    return rows


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(result: Dict[str, Any]) -> str:
    st, spec = result["log_stats"], result["log"]
    lines = [
        f"Modulo hashing vs managed collision, item table of equal total rows ({result['machine']}, "
        f"torch threads {result['torch_threads']}; {len(result['seeds'])} seed(s): {result['seeds']}).",
        "",
        f"Log: {spec['days']} days × {spec['rows_per_day']:,} rows (train {st['rows']['train']:,}, valid "
        f"{st['rows']['valid']:,}, test {st['rows']['test']:,}); distinct items: {st['distinct_items_log']:,} "
        f"in the log, {st['distinct_items']['train']:,} in training, {st['distinct_items']['test']:,} on the "
        f"test day (per day {min(st['distinct_items_per_day']):,}–{max(st['distinct_items_per_day']):,}, "
        f"of which targets {min(st['distinct_target_items_per_day']):,}–{max(st['distinct_target_items_per_day']):,}); "
        f"{_pct(st['test_impressions_on_items_seen_in_training'])} of the test impressions are of items seen in "
        f"training; click rate (test) {st['click_rate']['test']:.3f}; oracle test AUC {result['oracle_auc']:.4f}. "
        f"User table: hash, {result['user_rows']:,} rows in every variant ({st['distinct_users_log']:,} distinct users).",
        "",
        "Collisions among the test day's distinct items (targets and histories): *rows shared* = share of their rows "
        "used by ≥ 2 of them; *items sharing* = share of the items whose row another one uses; *impressions shared* = "
        "share of test impressions (target items) whose row is shared; *on miss row* = items (impressions) without a "
        "row of their own in the trained MC remapping (they all read the one shared miss row); *ids not profiled* = "
        "share of the item ids of the training steps that TorchRec's `profile` dropped (history buffer full: not "
        "admitted, not counted; must be 0).",
        "",
        "| variant | item rows | test AUC (mean ± sd) | gap vs hash | test logloss | rows shared | items sharing "
        "| impressions shared | impressions on miss row | ids not profiled | train samples/s | hash samples/s ÷ this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["summary"]:
        c = s["collisions"]
        gap = "–" if s["gap_vs_hash_mean"] is None or s["variant"].startswith("hash") else (
            f"{s['gap_vs_hash_mean']:+.4f} ± {s['gap_vs_hash_sd']:.4f}")
        lines.append(
            f"| {s['variant']} | {s['rows']:,} | {s['test_auc_mean']:.4f} ± {s['test_auc_sd']:.4f} | {gap} | "
            f"{s['test_logloss_mean']:.4f} | {_pct(c['rows_shared'])} | {_pct(c['ids_sharing'])} | "
            f"{_pct(c['impressions_shared'])} | {_pct(c.get('impressions_on_miss_row'))} | "
            f"{_pct(s.get('ids_dropped_by_profile'))} | "
            f"{s['train_samples_per_s']:,.0f} | "
            + ("–" if s["hash_time_ratio"] is None else f"{s['hash_time_ratio']:.2f}×") + " |"
        )
    own = [s for s in result["summary"] if "train_ids_with_own_row_at_end" in s]
    if own:
        lines += ["", "Training items that hold a row of their own at the end of training: "
                  + ", ".join(f"{s['variant']} {_pct(s['train_ids_with_own_row_at_end'])}" for s in own) + "."]
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in result["runs"]:
        if "zero_collision_check" in r:
            by.setdefault(r["variant"], []).append(r)
    for name, rs in by.items():
        cs = [r["zero_collision_check"] for r in rs]
        ok = sum(c["zero_collisions"] for c in cs)
        join = lambda key: "/".join(f"{c[key]:,}" for c in cs)  # noqa: E731
        lines += ["", f"Zero-collision check, {name} ({rs[0]['rows']:,} rows; seeds {', '.join(str(r['seed']) for r in rs)}): "
                  f"the trained remapping gives the {cs[0]['train_ids']:,} items of the trained rows {join('train_distinct_rows')} "
                  f"distinct rows, {join('train_ids_on_miss_row')} of them on the miss row; after admitting the rest of the log "
                  f"(a copy in training mode), its {cs[0]['log_ids']:,} items → {join('log_distinct_rows')} distinct rows, "
                  f"{join('log_ids_on_miss_row')} on the miss row ({cs[0]['mixed_id_collisions']} collisions of the mixed ids) "
                  f"→ **{'zero collisions' if ok == len(cs) else 'COLLISIONS'}** in {ok if ok == len(cs) else len(cs) - ok}/{len(cs)} seeds."]
    gaps = []
    for s in result["summary"]:
        if s["variant"].startswith("hash") or s["gap_vs_hash_mean"] is None:
            continue
        per = {r["seed"]: r["test_auc"] for r in result["runs"] if r["variant"] == s["variant"]}
        ref_rows = s["rows"] if any(x["variant"].startswith("hash") and x["rows"] == s["rows"] for x in result["summary"]) else result["rows"]
        ref = {r["seed"]: r["test_auc"] for r in result["runs"] if r["policy"] == "hash" and r["rows"] == ref_rows}
        gaps.append(f"{s['variant']} " + " ".join(f"{per[k] - ref[k]:+.4f}" for k in sorted(per) if k in ref))
    if gaps:
        lines += ["", "Test AUC gap vs hash of the same rows (the big table: vs hash at "
                  f"{result['rows']:,}), seed by seed: " + "; ".join(gaps) + "."]
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    names = [s["variant"] for s in summary]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.bar(x, [s["test_auc_mean"] for s in summary], yerr=[s["test_auc_sd"] for s in summary], capsize=4,
           color=["tab:gray" if n.startswith("hash") else "tab:blue" for n in names])
    for r in result["runs"]:
        ax.plot(names.index(r["variant"]), r["test_auc"], "k.", ms=4)
    aucs = [r["test_auc"] for r in result["runs"]]
    ax.set_ylim(min(aucs) - 0.01, max(aucs) + 0.01)
    ax.set_title(f"test AUC (mean ± sd, dots: seeds; oracle {result['oracle_auc']:.3f})")
    ax = axes[1]
    w = 0.27
    for k, (key, label) in enumerate([("rows_shared", "rows shared"), ("ids_sharing", "items sharing"),
                                      ("impressions_shared", "impressions shared")]):
        ax.bar(x + (k - 1) * w, [100 * s["collisions"][key] for s in summary], w, label=label)
    ax.set_title("collisions among the test day's items (%)")
    ax.legend()
    ax = axes[2]
    ax.bar(x, [s["train_samples_per_s"] for s in summary], color=["tab:gray" if n.startswith("hash") else "tab:orange" for n in names])
    ax.set_title("training samples/s (median over seeds)")
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right")
    fig.suptitle(f"hash vs managed collision, item table rows {result['rows']:,} "
                 f"(@N: N rows; big: {result['big_rows']:,}); {len(result['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (the log is one)")
    p.add_argument("--variants", nargs="+", default=["hash", "lru", "lfu", "distance_lfu", "big"],
                   help="of hash, lru, lfu, distance_lfu, big")
    p.add_argument("--rows", type=int, default=4096, help="total rows of the item table (every variant but big)")
    p.add_argument("--also-rows", nargs="*", type=int, default=[8192],
                   help="further item table sizes, hash and mc lru only (rows between the live and the distinct items)")
    p.add_argument("--big-rows", type=int, default=0, help="rows of the big MC table (0: a power of 2 ≥ the log's items)")
    p.add_argument("--user-rows", type=int, default=8192, help="rows of the user table (hash, every variant)")
    p.add_argument("--eviction-interval", type=int, default=1)
    p.add_argument("--decay-exponent", type=float, default=1.0, help="managed_collision.decay_exponent (lru, distance_lfu)")
    p.add_argument("--days", type=int, default=LogSpec.days)
    p.add_argument("--rows-per-day", type=int, default=LogSpec.rows_per_day)
    p.add_argument("--births-per-day", type=int, default=LogSpec.births_per_day)
    p.add_argument("--log-seed", type=int, default=0)
    p.add_argument("--log", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other LogSpec field of the generated log (e.g. --log zipf=0.8)")
    p.add_argument("--set", action="append", default=[], help="config overrides for every run (a.b=value)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run: a small log, small tables, one seed")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "managed_collision")
    p.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the .json of --out")
    args = p.parse_args(argv)
    if args.report_only:
        result = json.loads(args.out.with_suffix(".json").read_text())
        md = markdown(result) + f"\nWall time {result['wall_seconds']:.0f} s.\n"
        args.out.with_suffix(".md").write_text(md)
        plot(result, args.out.with_suffix(".png"))
        print(md)
        return 0

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = LogSpec(days=args.days, rows_per_day=args.rows_per_day, births_per_day=args.births_per_day, seed=args.log_seed)
    if args.quick:
        spec = LogSpec(days=5, rows_per_day=2_400, births_per_day=120, users=500, row_group_size=1024, seed=args.log_seed)
        args.rows, args.user_rows, args.seeds = 512, 1024, args.seeds[:1]
        args.out = args.out.with_name(args.out.name + "_quick")
    for kv in args.log:
        key, _, value = kv.partition("=")
        setattr(spec, key, type(getattr(spec, key))(value))
    start = time.perf_counter()
    data = args.out / "data"
    print(f"generating the log into {data} ...", flush=True)
    stats = generate_log(spec, data)
    print(json.dumps(stats), flush=True)
    big = args.big_rows or 1 << math.ceil(math.log2(stats["distinct_items_log"] + 1))
    runs: List[Dict[str, Any]] = []
    chosen = variants(args.rows, big, args.variants, [] if args.quick else args.also_rows)
    for seed in args.seeds:
        for v in chosen:
            print(f"[{time.perf_counter() - start:6.0f}s] {v.name} ({v.rows} rows), seed {seed} ...", flush=True)
            r = run_variant(data, args.out / "runs" / f"{v.slug}_s{seed}", v, args, seed, spec)
            runs.append(r)
            c = r["collisions"]
            print(f"    test AUC {r['test_auc']:.4f}  logloss {r['test_logloss']:.4f}  {r['train_samples_per_s']:,.0f} samples/s"
                  f"  rows shared {_pct(c['rows_shared'])}  impressions shared {_pct(c['impressions_shared'])}"
                  + (f"  on miss row {_pct(c['impressions_on_miss_row'])}" if "impressions_on_miss_row" in c else "")
                  + (f"  ids dropped by profile {_pct(r['history_buffer']['dropped_share'])}" if "history_buffer" in r else ""),
                  flush=True)
    result = {
        "log": asdict(spec), "log_stats": stats, "seeds": args.seeds, "user_rows": args.user_rows,
        "rows": args.rows, "also_rows": args.also_rows, "big_rows": big, "eviction_interval": args.eviction_interval, "decay_exponent": args.decay_exponent, "sets": [*SMALL_MODEL, *args.set],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": "cpu",
        "torch_threads": torch.get_num_threads(), "oracle_auc": runs[0]["oracle_auc"],
        "summary": summarize(runs), "runs": runs, "wall_seconds": time.perf_counter() - start,
    }
    name = args.out.name
    out = args.out.parent
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result) + f"\nWall time {result['wall_seconds']:.0f} s.\n"
    (out / f"{name}.md").write_text(md)
    plot(result, out / f"{name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
