"""Sharded training on gloo: every CPU sharding type, 1-rank vs 2-rank equivalence,
checkpoint resharding (2 -> 1 and 1 -> 2 ranks), kill-and-resume (on 2 ranks and on 1).

The runs are shared between assertions (one module-scoped fixture): three 2-rank spawns
and two 1-rank runs inside the test process. Every spawn has a deadline: a rank stuck in
a collective must fail the test, not hang it.

Equivalence set-up: 1 rank with batch ``2B`` against 2 ranks with batch ``B`` (the
reader gives both the same rows per step); SGD for embeddings and dense, so that a
wrong gradient scale shows in the tables, not just in the loss.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from dist_helpers import (
    CONFIG,
    DROPOUT,
    PLAN_A,
    PLAN_B,
    PLAN_C,
    REGULARIZER,
    STEPS,
    B,
    _inline,
    _load,
    _overrides,
    _spawn,
)

from interformer_rec.config import (
    SyntheticConfig,
    load_config,
)
from interformer_rec.data.synthetic import generate

# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """Runs shared by the tests below, in six spawns:

    1. 2 ranks: fit under PLAN_A (checkpoint every 2 steps), PLAN_B and PLAN_C; PLAN_A
       with dropout.
    2. 1 rank, batch 2B, in this process: fit the reference; evaluate A's checkpoint
       (2 -> 1 ranks).
    3. 2 ranks: evaluate the reference's checkpoint under PLAN_A (1 -> 2 ranks); fit
       PLAN_A again, SIGKILLed while writing its step-6 checkpoint.
    4. 1 rank, in this process: resume a copy of the killed run (another world size).
    5. 2 ranks: fit PLAN_A with dropout, SIGKILLed while writing its step-6 checkpoint.
    6. 2 ranks: resume both killed runs.

    Every run but the dropout ones sets dropout to 0 (see :func:`_overrides`).
    """
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    generate(
        SyntheticConfig(num_users=200, num_items=100, rows={"train": 1024, "valid": 512}, row_group_size=256),
        data,
    )
    o = lambda name, world, tables, *extra: _overrides(  # noqa: E731
        data, tmp / name, B * 2 // world, tables, *extra
    )
    every = "train.checkpoint_every_steps=2"
    r: Dict[str, Any] = {"tmp": tmp, "times": {}}
    r["times"]["2 ranks: fit A, B, C"] = _spawn(2, [
        {"kind": "fit", "overrides": o("a", 2, PLAN_A, every), "result": tmp / "a.json"},
        {"kind": "fit", "overrides": o("b", 2, PLAN_B), "result": tmp / "b.json"},
        {"kind": "fit", "overrides": o("c", 2, PLAN_C, "dist.cpu_row_wise=true"), "result": tmp / "c.json"},
        {"kind": "fit", "overrides": o("d", 2, PLAN_A, every, *DROPOUT), "result": tmp / "d.json"},
        {"kind": "fit", "overrides": o("e", 2, PLAN_A, REGULARIZER), "result": tmp / "e.json"},
    ])
    r["times"]["1 rank (in process): fit ref, eval A"] = _inline([
        {"kind": "fit", "overrides": o("ref", 1, {}), "result": tmp / "ref.json"},
        {"kind": "fit", "overrides": o("ref_e", 1, {}, REGULARIZER), "result": tmp / "ref_e.json"},
        {"kind": "eval", "overrides": o("eval_a", 1, {}), "ckpt": tmp / "a" / "checkpoints", "result": tmp / "a_on_1.json"},
    ])
    r["times"]["2 ranks: eval ref, fit killed"] = _spawn(2, [
        {"kind": "eval", "overrides": o("eval_ref", 2, PLAN_A), "ckpt": tmp / "ref" / "checkpoints", "result": tmp / "ref_on_2.json"},
        {"kind": "fit", "overrides": o("k", 2, PLAN_A, every), "result": tmp / "k_first.json", "kill_in_save": "step_00000006"},
    ], expect_kill=True)
    r["killed_dir_listing"] = sorted(p.name for p in (tmp / "k" / "checkpoints").iterdir())
    shutil.copytree(tmp / "k", tmp / "k1")  # the same killed job, resumed on 1 rank below
    r["times"]["1 rank (in process): resume the 2-rank job"] = _inline([
        {"kind": "fit", "overrides": o("k1", 1, {}, every, "train.resume=true"), "result": tmp / "k1.json"},
    ])
    r["times"]["2 ranks: fit killed, with dropout"] = _spawn(2, [
        {"kind": "fit", "overrides": o("kd", 2, PLAN_A, every, *DROPOUT), "result": tmp / "kd_first.json",
         "kill_in_save": "step_00000006"},
    ], expect_kill=True)
    r["times"]["2 ranks: resume both"] = _spawn(2, [
        {"kind": "fit", "overrides": o("k", 2, PLAN_A, every, "train.resume=true"), "result": tmp / "k.json"},
        {"kind": "fit", "overrides": o("kd", 2, PLAN_A, every, *DROPOUT, "train.resume=true"), "result": tmp / "kd.json"},
    ])
    for name in ("a", "b", "c", "d", "e", "ref", "ref_e", "a_on_1", "ref_on_2", "k", "k1", "kd"):
        r[name] = _load(tmp / f"{name}.json")
    print("spawn times:", {k: round(v, 1) for k, v in r["times"].items()})
    return r


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(700)
def test_every_cpu_sharding_type_is_planned_as_asked(runs: Dict[str, Any]) -> None:
    seen, across = {}, set()
    for name, want in (("a", PLAN_A), ("b", PLAN_B), ("c", PLAN_C)):
        plan = runs[name]["plan"]
        for table, c in want.items():
            p = plan[table]
            assert p["sharding_type"] == c["sharding_types"][0], (name, table, p)
            module = p["module"].split(".")[-1]
            seen.setdefault(module, set()).add(p["sharding_type"])
            if p["sharding_type"] != "table_wise" and p["sharding_type"] != "data_parallel":
                assert len(p["shards"]) == 2, (table, p)  # really split
                if len(set(p["ranks"])) == 2:
                    across.add((module, p["sharding_type"]))
    # every split type has run with its shards on both ranks
    assert across == {(m, t) for m, ts in seen.items() for t in ts} - {
        ("ebc", "table_wise"), ("ebc", "data_parallel"), ("ec", "table_wise")
    }, across
    assert seen == {
        "ebc": {"table_wise", "column_wise", "table_column_wise", "data_parallel", "row_wise", "table_row_wise"},
        "ec": {"table_wise", "row_wise", "column_wise"},
    }
    # the plan is saved beside the checkpoint
    ckpt = runs["tmp"] / "a" / "checkpoints" / (runs["tmp"] / "a" / "checkpoints" / "latest").read_text().strip()
    assert "column_wise" in (ckpt / "plan.txt").read_text()


def _table_deltas(ckpt_root: Path, cfg_overrides: List[str]) -> Dict[str, torch.Tensor]:
    """Each table's change from its (plan-independent) initial values, read from a
    checkpoint into an unsharded model."""
    from interformer_rec.models import build_model
    from interformer_rec.train import checkpoint
    from interformer_rec.train.tables import table_init_values, table_weights
    from interformer_rec.train.ranking import RankingTrain

    cfg = load_config(CONFIG, cfg_overrides)
    model = RankingTrain(build_model(cfg.data.schema, cfg.model, embedding_device=torch.device("cpu")))
    checkpoint.load_checkpoint(checkpoint.resolve(ckpt_root), model)
    out = {}
    for table, _, w in table_weights(model):
        n, d = w.shape
        out[table] = w - table_init_values(cfg.train.seed, table, n, d, (0, n), (0, d))
    return out


@pytest.mark.timeout(700)
def test_two_ranks_match_one_rank(runs: Dict[str, Any]) -> None:
    ref = runs["ref"]
    assert runs["ref"]["world_size"] == 1 and runs["a"]["world_size"] == 2
    for name in ("a", "b", "c"):
        r = runs[name]
        l1, l2 = ref["step_losses"][0], r["step_losses"][0]
        print(f"{name}: loss diffs vs 1 rank {[f'{x - y:+.1e}' for x, y in zip(l1, l2)]}; "
              f"valid AUC {ref['valid']['auc']:.6f} (1 rank) vs {r['valid']['auc']:.6f}")
        assert len(l1) == len(l2) == STEPS
        assert abs(l1[0] - l2[0]) < 1e-6, (l1[0], l2[0])  # same initial model
        diffs = [abs(x - y) for x, y in zip(l1, l2)]
        assert max(diffs) < 1e-5, diffs  # seen: <= 1e-7 (float rounding); 2x embedding lr: 5e-5
        assert abs(ref["valid"]["auc"] - r["valid"]["auc"]) < 1e-4, (ref["valid"], r["valid"])
    # the embedding updates agree table by table: TorchRec's gradient division by the
    # world size makes a 2-rank step equal a 1-rank step over both ranks' rows
    tmp = runs["tmp"]
    base = _overrides(tmp / "data", tmp / "x", 2 * B, {})
    d1 = _table_deltas(tmp / "ref" / "checkpoints", base)
    for name in ("a", "b", "c"):
        d2 = _table_deltas(tmp / name / "checkpoints", base)
        rels = {}
        for table, delta in d1.items():
            assert delta.abs().max() > 0, table  # it did train
            rels[table] = float((delta - d2[table]).norm() / delta.norm())
        print(f"{name}: relative difference of each table's update vs 1 rank", {k: f"{v:.1e}" for k, v in rels.items()})
        assert max(rels.values()) < 5e-3, (name, rels)


@pytest.mark.timeout(700)
def test_rank_0_logs_the_windowed_training_metrics_of_all_ranks(runs: Dict[str, Any]) -> None:
    """The RecMetricModule's window holds every rank's rows: 2 ranks of B rows log the
    windowed AUC that 1 rank of 2B rows (the same rows, the same model) logs."""
    from test_train_metrics import scalars

    tag = "train_metrics/auc-click/window_auc"
    one, two = scalars(runs["tmp"] / "ref")[tag], scalars(runs["tmp"] / "a")[tag]
    assert set(one) == set(two) == {STEPS // 2, STEPS}
    assert len(list((runs["tmp"] / "a" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0's
    for step, value in two.items():
        assert value == pytest.approx(one[step], abs=1e-4), (step, value, one[step])
    print(f"windowed training AUC, 1 rank vs 2 ranks: {one} vs {two}")


@pytest.mark.timeout(700)
def test_embedding_regularizer_on_two_ranks_matches_one_and_moves_looked_up_rows_only(runs: Dict[str, Any]) -> None:
    """With ``train.embedding_regularizer``, 2 ranks (PLAN_A: table-, column-,
    table-column-, row-wise and data-parallel tables) update every table as 1 rank does;
    the regularizer changed the update of the rows the batches looked up, and a row no
    batch looked up stays exactly at its initial value (no whole-table decay)."""
    tmp = runs["tmp"]
    base = _overrides(tmp / "data", tmp / "x", 2 * B, {})
    plain = _table_deltas(tmp / "ref" / "checkpoints", base)
    one = _table_deltas(tmp / "ref_e" / "checkpoints", base)
    two = _table_deltas(tmp / "e" / "checkpoints", base)
    untouched_somewhere = False
    for table, d in plain.items():
        touched = d.abs().sum(1) > 0
        assert touched.any(), table
        untouched_somewhere |= bool((~touched).any())  # small tables are looked up whole
        assert torch.equal(one[table][~touched], torch.zeros_like(one[table][~touched])), table
        assert torch.equal(two[table][~touched], torch.zeros_like(two[table][~touched])), table
        effect = float((one[table] - d).norm() / d.norm())
        assert effect > 1e-3, (table, effect)  # the regularizer did act on the looked-up rows
        rel = float((two[table] - one[table]).norm() / one[table].norm())
        assert rel < 5e-3, (table, rel)
    assert untouched_somewhere


@pytest.mark.timeout(700)
def test_checkpoints_reshard_between_world_sizes(runs: Dict[str, Any]) -> None:
    # 2 ranks (PLAN_A) -> 1 rank (planner's own plan): same model, same metrics
    a, a_on_1 = runs["a"]["valid"], runs["a_on_1"]
    assert runs["a_on_1"]["plan"] != {k: v["sharding_type"] for k, v in runs["a"]["plan"].items()}
    for k in ("auc", "gauc", "logloss", "rows"):
        assert a_on_1[k] == pytest.approx(a[k], abs=1e-5), k
    # 1 rank -> 2 ranks (PLAN_A)
    ref, ref_on_2 = runs["ref"]["valid"], runs["ref_on_2"]
    for k in ("auc", "gauc", "logloss", "rows"):
        assert ref_on_2[k] == pytest.approx(ref[k], abs=1e-5), k
    print(f"reshard: A (2 ranks) valid AUC {a['auc']:.6f}, loaded on 1 rank {a_on_1['auc']:.6f}; "
          f"ref (1 rank) {ref['auc']:.6f}, loaded on 2 ranks {ref_on_2['auc']:.6f}")


@pytest.mark.timeout(700)
def test_killed_job_resumes_where_it_stopped(runs: Dict[str, Any]) -> None:
    # killed while writing step 6: that write is left as .tmp, latest is step 4
    listing = runs["killed_dir_listing"]
    assert "step_00000006.tmp" in listing and "step_00000006" not in listing, listing
    ckpts = runs["tmp"] / "k" / "checkpoints"
    # the resumed run continued from step 4 and ends where the uninterrupted run A ends
    k, a = runs["k"], runs["a"]
    assert k["step_losses"][0][:4] == a["step_losses"][0][:4]  # restored, not retrained
    assert k["step_losses"][0] == pytest.approx(a["step_losses"][0], abs=1e-6)
    assert k["valid"]["auc"] == pytest.approx(a["valid"]["auc"], abs=1e-6)
    assert not any(p.name.endswith(".tmp") for p in ckpts.iterdir())  # pruned by the next save
    # the same checkpoint resumed on 1 rank with batch 2B (another plan): the rest of the
    # epoch matches, as 1 rank matches 2 ranks
    k1 = runs["k1"]
    assert k1["world_size"] == 1 and k1["step_losses"][0][:4] == k["step_losses"][0][:4]
    assert k1["step_losses"][0] == pytest.approx(a["step_losses"][0], abs=1e-5)
    assert k1["valid"]["auc"] == pytest.approx(a["valid"]["auc"], abs=1e-4)
    print(f"kill/resume on 1 rank: losses {k1['step_losses'][0]}, valid AUC {k1['valid']['auc']:.6f}")
    print(f"kill/resume: left {listing}; resumed losses {k['step_losses'][0]}; uninterrupted "
          f"{a['step_losses'][0]}; valid AUC {k['valid']['auc']:.6f} vs {a['valid']['auc']:.6f}")


@pytest.mark.timeout(700)
def test_killed_job_with_dropout_resumes_exactly(runs: Dict[str, Any]) -> None:
    # the checkpoint restores every rank's RNG state, so the dropout masks after the
    # resume are the ones the uninterrupted run drew
    kd, d, a = runs["kd"], runs["d"], runs["a"]
    assert kd["step_losses"][0][:4] == d["step_losses"][0][:4]
    assert kd["step_losses"][0] == pytest.approx(d["step_losses"][0], abs=1e-6)
    assert kd["valid"]["auc"] == pytest.approx(d["valid"]["auc"], abs=1e-6)
    assert max(abs(x - y) for x, y in zip(d["step_losses"][0][1:], a["step_losses"][0][1:])) > 1e-4  # dropout acted
