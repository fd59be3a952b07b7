"""--target-latency: the latency table (fit, roundtrip, refusal of bad files), the candidate search
on a tiny ViT with a fake table, and the command line's refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.compress.latency_table import Measured, load_table, make_table, save_table
from tvc.compress.latency_target import (
    build_candidates,
    choose,
    describe_choice,
    frontier,
    refine_schedule,
    schedule_candidate,
)
from tvc.errors import ConfigError
from tvc.models import load_model
from tvc.tasks.classification import ClassificationTask


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fake_measured(fixed=0.05, per_gmac=20.0, per_ktoken=0.4, per_merge=0.01) -> list[Measured]:
    """Points lying exactly on a known linear latency model."""
    points = [(0.0, [0, 0], 5_500_000, 130), (0.5, [0, 0], 1_400_000, 130),
              (0.0, [16, 16], 4_000_000, 98), (0.5, [32, 16], 900_000, 82),
              (0.2, [8, 0], 3_000_000, 122)]  # fmt: skip
    return [Measured(prune=p, merge=m, macs=macs, tokens=t,
                     ms=fixed + per_gmac * macs / 1e9 + per_ktoken * t / 1e3
                     + per_merge * sum(1 for r in m if r))
            for p, m, macs, t in points]  # fmt: skip


def test_table_fit_recovers_a_linear_model_and_roundtrips(tmp_path):
    table = make_table("vit_pico", (3, 32, 32), "ort", 1, fake_measured())
    assert table.coefficients["ms_fixed"] == pytest.approx(0.05, rel=1e-6)
    assert table.coefficients["ms_per_gmac"] == pytest.approx(20.0, rel=1e-6)
    assert table.coefficients["ms_per_ktoken"] == pytest.approx(0.4, rel=1e-6)
    assert table.coefficients["ms_per_merging_block"] == pytest.approx(0.01, rel=1e-6)
    assert table.fit_max_rel_error < 1e-6
    path = save_table(table, tmp_path / "t.json")
    again = load_table(path)
    assert again == table
    assert again.predict(2_000_000, 100) == pytest.approx(0.05 + 0.04 + 0.04)
    assert again.predict(2_000_000, 100, 2) == pytest.approx(0.05 + 0.04 + 0.04 + 0.02)
    with pytest.raises(ConfigError, match="exists"):  # never replaced without force
        save_table(table, path)
    save_table(table, path, force=True)


def test_factorized_layers_have_their_own_cost_and_older_tables_still_read(tmp_path):
    """Two thin GEMMs cost more per MAC than one: the fit recovers that extra cost from
    factorized measurements; a table written before the feature predicts as it did and says
    it cannot price factorized layers (the search then leaves low-rank out)."""
    pts = fake_measured()
    for macs, lr in ((3_000_000, 2_000_000), (1_500_000, 1_000_000)):
        ms = 0.05 + 20.0 * macs / 1e9 + 0.4 * 130 / 1e3 + 30.0 * lr / 1e9
        pts.append(Measured(prune=0.0, lowrank=0.9, merge=[0, 0], macs=macs, lowrank_macs=lr,
                            tokens=130, ms=ms))  # fmt: skip
    table = make_table("vit_pico", (3, 32, 32), "ort", 1, pts)
    assert table.coefficients["ms_per_lowrank_gmac"] == pytest.approx(30.0, rel=1e-6)
    assert table.fit_max_rel_error < 1e-6 and table.knows_lowrank
    assert table.predict(1e6, 100, 0, 1e6) - table.predict(1e6, 100) == pytest.approx(0.03)
    old = json.loads(table.model_dump_json())
    del old["coefficients"]["ms_per_lowrank_gmac"]
    old["measured"] = [m for m in old["measured"] if not m["lowrank_macs"]]
    for m in old["measured"]:
        del m["lowrank_macs"], m["lowrank"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    before = load_table(tmp_path / "old.json")
    assert not before.knows_lowrank
    assert before.predict(2_000_000, 100) == pytest.approx(table.predict(2_000_000, 100))


def test_fit_never_gives_a_negative_coefficient():
    """More MACs measured faster (noise) must not produce a negative per-MAC cost."""
    pts = fake_measured()
    pts[0] = pts[0].model_copy(update={"ms": pts[1].ms * 0.9})
    table = make_table("vit_pico", (3, 32, 32), "ort", 1, pts)
    assert all(v >= 0 for v in table.coefficients.values())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not json {",
        lambda d: json.dumps({**d, "kind": "something-else"}),
        lambda d: json.dumps({**d, "coefficients": {**d["coefficients"], "ms_per_gmac": -1.0}}),
        lambda d: json.dumps({k: v for k, v in d.items() if k != "measured"}),
        lambda d: json.dumps({**d, "threads": 0}),
        lambda d: json.dumps({**d, "surprise": 1}),
    ],
    ids=["not-json", "wrong-kind", "negative", "missing-field", "zero-threads", "unknown-key"],
)
def test_bad_table_files_are_refused(tmp_path, mutate):
    good = make_table("vit_pico", (3, 32, 32), "ort", 1, fake_measured())
    path = tmp_path / "bad.json"
    path.write_text(mutate(json.loads(good.model_dump_json())))
    with pytest.raises(ConfigError):
        load_table(path)


def test_table_for_another_model_is_refused():
    table = make_table("vit_pico", (3, 32, 32), "ort", 1, fake_measured())
    with pytest.raises(ConfigError, match="measured for vit_pico"):
        table.check_fits("deit_small_patch16_224", (3, 224, 224))


@pytest.fixture
def pico_search():
    """vit_pico, its task, 16 random inputs and the prune step the search calls."""
    pico = load_model("vit_pico", warn_random=False)
    task = ClassificationTask()
    samples, _ = task.sample_inputs(pico.info, None, 16)

    def prune(m, ratio, global_prune=False):
        task.prune(m, {"prune": ratio, "round_to": 8, "global_": global_prune},
                   example=samples[:1])  # fmt: skip

    return pico, task, samples, prune


def test_search_picks_a_candidate_predicted_within_the_target(pico_search):
    pico, task, samples, prune = pico_search

    grid = {"prune_grid": (0.0, 0.25, 0.5), "merge_values": [0, 8, 16]}
    cands, models = build_candidates(pico.model, pico.info.input_size, prune, **grid)
    assert len(cands) == 9 and models.keys == {(c.prune, False, None, c.merge) for c in cands}
    dense = next(c for c in cands if c.prune == 0 and c.merge == 0)
    assert all(c.macs < dense.macs for c in cands if c is not dense)
    assert all(c.tokens < dense.tokens for c in cands if c.merge)
    table = make_table(pico.info.arch, pico.info.input_size, "ort", 1, fake_measured())
    predicted = sorted(table.predict(c.macs, c.tokens, c.merging_blocks) for c in cands)
    target = (predicted[0] + predicted[-1]) / 2
    reference = task.outputs(pico.model, samples)
    scored = []

    def score(c):
        scored.append(c)
        return task.agreement(reference, task.outputs(models[c.key], samples))["agreement"]

    best, front = choose(cands, table, target, score)
    assert best.predicted_ms <= target and best in front
    assert all(c.predicted_ms <= target for c in front) and scored == front
    assert best.agreement == max(c.agreement for c in front)
    # the frontier is the least merging per ratio that meets the target
    for c in front:
        same = [o for o in cands if o.prune == c.prune and o.predicted_ms <= target]
        assert c.merge == min(o.merge for o in same)
    assert frontier(cands, predicted[0] / 2) == []
    with pytest.raises(ConfigError, match="raise --target-latency"):
        choose(cands, table, predicted[0] / 2, score)


def test_low_rank_is_an_axis_of_the_search(pico_search):
    """With a factorize step the grid holds every width twice (plain and factorized), the
    factorized candidates have fewer MACs, the frontier keeps one per width variant, and the
    models mapping rebuilds a factorized, merged candidate; a low-rank step that saves nothing
    adds no candidates."""
    from tvc.compress.latency_target import calibration_points
    from tvc.compress.lowrank import LowRankConfig, LowRankLinear

    pico, task, samples, prune = pico_search

    def factorize(m, share):  # a fixed share of full rank: always saves on a random model
        task.factorize(m, LowRankConfig(rank_ratio=share, round_to=8), samples=samples)

    grid = {"prune_grid": (0.0, 0.5), "merge_values": [0, 8], "lowrank_grid": (None, 0.25)}
    cands, models = build_candidates(pico.model, (3, 32, 32), prune, factorize=factorize, **grid)
    assert len(cands) == 8 and {c.lowrank for c in cands} == {None, 0.25}
    for c in (c for c in cands if c.lowrank):
        plain = next(o for o in cands if o.key == (c.prune, False, None, c.merge))
        assert c.macs < plain.macs and c.tokens == plain.tokens
    merged = models[(0.5, False, 0.25, 8)]
    assert any(isinstance(m, LowRankLinear) for m in merged.modules())
    assert merged.blocks.schedule == [8, 8]
    for c in cands:
        c.predicted_ms = c.macs / 1e6  # a table that only counts MACs
    front = frontier(cands, max(c.predicted_ms for c in cands))
    assert [c.width for c in front] == [
        (0.0, False, None),
        (0.0, False, 0.25),
        (0.5, False, None),
        (0.5, False, 0.25),
    ]
    assert all(c.merge == 0 for c in front)
    points = calibration_points((0.0, 0.5), [0, 8], (None, 0.25))
    assert (0.0, False, 0.25, 0) in points and all(p in models for p in points)
    nothing, _ = build_candidates(pico.model, (3, 32, 32), prune,
                                  factorize=lambda m, e: None, **grid)  # fmt: skip
    assert {c.lowrank for c in nothing} == {None}


def test_globally_ranked_pruning_is_an_axis_of_the_search():
    """prune_modes (False, True) prunes every ratio above 0 both per block and ranked across
    blocks (--global, per-layer keep ratios by importance); ratio 0 is built once."""
    pico = load_model("vit_pico", warn_random=False)
    task = ClassificationTask()
    samples, _ = task.sample_inputs(pico.info, None, 16)
    calls = []

    def prune(m, ratio, global_prune):
        calls.append((ratio, global_prune))
        task.prune(m, {"prune": ratio, "round_to": 8, "global_": global_prune},
                   example=samples[:1])  # fmt: skip

    grid = {"prune_grid": (0.0, 0.5), "merge_values": [0], "prune_modes": (False, True)}
    cands, models = build_candidates(pico.model, (3, 32, 32), prune, **grid)
    assert calls == [(0.5, False), (0.5, True)]
    assert sorted(c.width for c in cands) == [(0.0, False, None), (0.5, False, None),
                                              (0.5, True, None)]  # fmt: skip
    assert (0.5, True, None, 0) in models and models[(0.5, True, None, 0)] is not pico.model
    assert describe_choice(cands[-1].as_dict()) == "prune 0.5 (global) + merge 0 per block"


def test_refined_schedule_moves_merging_to_the_block_where_it_costs_nothing():
    """A scorer that charges only for merging in the last block: the sensitivity pass finds
    that, the refined schedule still meets the target, merges more in block 0 than in block 1,
    and scores better than the uniform schedule it replaces."""
    pico = load_model("vit_pico", warn_random=False)
    table = make_table(pico.info.arch, pico.info.input_size, "ort", 1, fake_measured())
    uniform, _ = schedule_candidate(pico.model, 0.0, [12, 12], pico.info.input_size)
    uniform.per_block = False
    uniform.predicted_ms = table.predict(uniform.macs, uniform.tokens, uniform.merging_blocks)

    def agreement(m) -> float:
        schedule = getattr(m.blocks, "schedule", [0, 0])
        return 1.0 - 0.01 * schedule[1]

    uniform.agreement = agreement(schedule_candidate(pico.model, 0.0, [12, 12], (3, 32, 32))[1])
    refined, rows = refine_schedule(
        uniform, pico.model, pico.info.input_size, table, uniform.predicted_ms, agreement
    )
    assert [r["lost"] for r in rows] == [0.0, pytest.approx(0.12)]
    assert refined is not None and refined.per_block
    assert refined.predicted_ms <= uniform.predicted_ms
    assert refined.schedule[0] > refined.schedule[1]
    assert refined.agreement > uniform.agreement
    assert refined.merge_option == ",".join(map(str, refined.schedule))
    # charged alike everywhere, a merged token saves most in the first block: all goes there
    flat, _ = refine_schedule(
        uniform, pico.model, pico.info.input_size, table, uniform.predicted_ms,
        lambda m: 1.0 - 0.01 * sum(getattr(m.blocks, "schedule", [0])),
    )  # fmt: skip
    assert flat is not None and flat.schedule[1] == 0 and flat.agreement > 1 - 0.01 * 24


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-latency", "5", "--prune", "0.3"], "--target-latency chooses"),
        (["--target-latency", "5", "--merge-tokens", "4"], "--target-latency chooses"),
        (["--on", "ort:1", "--prune", "0.3"], "--on only applies with --target-latency"),
        (["--target-latency", "5", "--on", "trt:1"], "unknown backend"),
        (["--target-latency", "5", "--on", "ort:zero"], "thread count"),
    ],
)
def test_cli_refuses_inconsistent_target_options(tmp_path, extra, message):
    res = run("compress", "vit_pico", "-o", tmp_path / "o", *extra)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_bad_table_file_before_any_work(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text('{"kind": "tvc-latency-table", "version": 1}')
    res = run("compress", "vit_pico", "-o", tmp_path / "o", "--target-latency", "5",
              "--latency-table", bad)  # fmt: skip
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: latency table") and len(res.output.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_target_latency_with_a_carried_table(tmp_path, monkeypatch):
    """A table file given (as if measured on a board): no table is measured here, the chosen
    compression is applied and recorded, and predicted and measured latency are reported."""
    monkeypatch.setattr("tvc.stages.latency.FINAL_TIME_S", (0.2, 0.5))  # a short timing
    pico = load_model("vit_pico", warn_random=False)
    table = make_table(pico.info.arch, pico.info.input_size, "ort", 1, fake_measured())
    path = save_table(table, tmp_path / "board.json")
    dense = table.predict(5_538_688, 130)  # vit_pico's MACs and block tokens
    res = run("compress", "vit_pico", "-o", tmp_path / "o", "--target-latency",
              round(dense * 0.8, 4), "--latency-table", path,
              "--merge-metric", "tokens")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "latency target" in res.output and "measured" in res.output
    from tvc.artifact import load_artifact

    art = load_artifact(tmp_path / "o")
    lt = art.meta["metrics"]["compression"]["latency_target"]
    assert lt["table"] == str(path) and lt["predicted_ms"] <= round(dense * 0.8, 4)
    assert lt["measured_ms"] > 0 and lt["parent_measured_ms"] > 0
    chosen, spec = lt["chosen"], art.meta["spec"]
    assert (spec["prune"] or {}).get("ratio") == (chosen["prune"] or None)
    assert (spec["merge"] or {}).get("schedule", [0, 0]) == chosen["schedule"]
    # every candidate was matched on the metric asked for, and the chosen model keeps it
    assert lt["merge_metric"] == "tokens"
    if any(chosen["schedule"]):  # random weights: which candidate wins is a near tie
        assert spec["merge"]["metric"] == "tokens"
    else:
        assert spec["merge"] is None
    assert path.read_text() == table.model_dump_json(indent=2) + "\n"  # read, never rewritten
    # the parent timed beside the student says how far this machine is from the table's speed
    assert lt["parent_predicted_ms"] == pytest.approx(dense, abs=1e-4)
    drift = lt["parent_measured_ms"] / lt["parent_predicted_ms"] - 1
    assert lt["machine_drift"] == pytest.approx(drift, abs=1e-3)
    at_table = lt["measured_ms"] / (1 + drift) <= round(dense * 0.8, 4) * 1.1
    assert lt["meets_target_at_table_speed"] == at_table
    assert ("this machine's speed changed" in res.output) == (abs(drift) > 0.10)


def test_cli_refuses_a_table_path_in_a_missing_folder_before_any_work(tmp_path):
    res = run("compress", "vit_pico", "-o", tmp_path / "o", "--target-latency", "5",
              "--latency-table", tmp_path / "no" / "such" / "t.json")  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.output and len(res.output.splitlines()) == 1
    assert not (tmp_path / "o").exists()
