"""Token merging (tvc.compress.merge / tvc.models.merge): exactness, rebuild, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from tvc.compress.merge import merge, parse_schedule
from tvc.errors import ConfigError
from tvc.models import load_model
from tvc.models.merge import MergingBlocks
from tvc.models.structure import apply_structure, describe_structure


@pytest.fixture(scope="module")
def pico():
    return load_model("vit_pico", warn_random=False)


def test_zero_schedule_matches_the_plain_model(pico):
    m = copy.deepcopy(pico.model)
    x = torch.randn(2, *pico.info.input_size)
    ref = m(x)
    m.blocks = MergingBlocks(list(m.blocks), [0, 0], 1, True)
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_merge_shrinks_tokens_and_rebuilds(pico):
    m = copy.deepcopy(pico.model)
    rep = merge(m, [40], pico.info.input_size)
    assert rep["schedule"] == [32, 16] and rep["clamped"]  # 64 patches: at most half each time
    assert rep["tokens_in"] == [65, 33] and rep["tokens_out"] == 17
    structure = describe_structure(m, pico.model)
    assert structure["merge"]["schedule"] == [32, 16]
    fresh = apply_structure(copy.deepcopy(pico.model), structure)
    fresh.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, *pico.info.input_size)
    assert torch.equal(fresh(x), m(x))


@pytest.mark.parametrize("text", ["a", "-1", "0,0", "8,,8"])
def test_bad_schedules_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_schedule(text)


def test_merging_every_a_token_exports_with_parity(pico, tmp_path):
    """A clamped schedule merges the whole A set ([32, 16] on 64 patches): nothing is kept from
    it, and the ONNX graph must still load in ONNX Runtime and match (it once did not)."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.stages.export import export_loaded

    m = copy.deepcopy(pico.model).eval()
    assert merge(m, [40], pico.info.input_size)["schedule"] == [32, 16]
    art = export_loaded(LoadedModel(m, pico.info), tmp_path / "x", OnnxExportConfig(batch=1))
    assert art.meta["metrics"]["parity"]["ok"]
    assert art.meta["metrics"]["parity"]["max_abs_diff"] < 1e-4


def _merge_by_hand(x, metric, size, r: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching written as loops, one image at a time: the reference.
    Moved tokens are averaged into their partners weighted by size; returns x and sizes."""
    out, sizes = [], []
    for xi, mi, si in zip(x, metric, size, strict=True):
        patches = list(range(prefix, len(xi)))
        a_idx, b_idx = patches[::2], patches[1::2]
        unit = mi / mi.norm(dim=-1, keepdim=True)
        partner, score = {}, {}
        for i in a_idx:
            sims = [float(unit[i] @ unit[j]) for j in b_idx]
            partner[i] = b_idx[max(range(len(sims)), key=sims.__getitem__)]
            score[i] = max(sims)
        ranked = sorted(a_idx, key=lambda i: -score[i])
        merged, kept = ranked[:r], ranked[r:]
        b_rows = {j: xi[j] * si[j] for j in b_idx}
        b_size = {j: si[j].clone() for j in b_idx}
        for i in merged:
            b_rows[partner[i]] = b_rows[partner[i]] + xi[i] * si[i]
            b_size[partner[i]] = b_size[partner[i]] + si[i]
        order = [*range(prefix), *kept]
        rows = [xi[k] for k in order] + [b_rows[j] / b_size[j] for j in b_idx]
        out.append(torch.stack(rows))
        sizes.append(torch.stack([si[k] for k in order] + [b_size[j] for j in b_idx]))
    return torch.stack(out), torch.stack(sizes)


@pytest.mark.parametrize(("tokens", "r"), [(65, 8), (65, 32), (50, 10), (12, 1)])
def test_matching_agrees_with_a_loop_by_loop_reference(tokens, r):
    from tvc.models.merge import bipartite_matching

    gen = torch.Generator().manual_seed(tokens + r)
    metric = torch.randn(3, tokens, 8, generator=gen)
    x = torch.randn(3, tokens, 5, generator=gen)
    size = torch.randint(1, 4, (3, tokens, 1), generator=gen).float()
    size[:, :1] = 1  # the prefix (class) token never merges: it always stands for one patch
    matching = bipartite_matching(metric, r, prefix=1)
    for given in (size, torch.ones_like(size)):  # tokens of several patches; all of one
        got, got_size = matching.weighted(x, None if given is not size else size)
        want, want_size = _merge_by_hand(x, metric, given, r, prefix=1)
        assert got.shape == (3, tokens - r, 5)
        assert torch.allclose(got, want, atol=1e-5) and torch.equal(got_size, want_size)


def test_decision_margins_find_a_tie_and_only_exist_on_merging_models(pico):
    from tvc.models.merge import bipartite_matching, decision_margins

    metric = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(3))
    # image 1: A token 5 is identical to B tokens 4 and 6, a tie for its best partner
    metric[1, 4] = metric[1, 6] = metric[1, 5]
    margins: list[torch.Tensor] = []
    bipartite_matching(metric, 2, prefix=1, margins=margins)
    (closest,) = margins
    assert closest[0] > 1e-4 and closest[1] == 0
    x = torch.randn(3, *pico.info.input_size)
    assert decision_margins(pico.model, x) is None
    m = copy.deepcopy(pico.model)
    merge(m, [8], pico.info.input_size)
    got = decision_margins(m, x)
    assert got.shape == (3,) and bool((got >= 0).all()) and torch.isfinite(got).all()
    assert m.blocks.margins is None  # recording is off again


def test_export_proves_parity_on_the_images_with_the_clearest_merge_choices(pico):
    import numpy as np

    from tvc.export.onnx import MERGE_POOL, OnnxExportConfig, _sample_batches
    from tvc.models.merge import decision_margins
    from tvc.tasks import task_for_info

    m = copy.deepcopy(pico.model).eval()
    merge(m, [8], pico.info.input_size)
    task, cfg = task_for_info(pico.info), OnnxExportConfig(batch=1, parity_samples=4)
    batches = _sample_batches(task, pico.info, cfg, m)
    assert [len(b) for b in batches] == [1, 1, 1, 1]
    pool, _ = task.sample_inputs(pico.info, None, 4 * MERGE_POOL)
    margins = decision_margins(m, pool)
    chosen = decision_margins(m, torch.from_numpy(np.concatenate(batches)))
    assert torch.allclose(chosen.sort().values, margins.sort().values[-4:])
    plain = _sample_batches(task, pico.info, cfg, pico.model)  # no merging: the first 4
    assert np.array_equal(np.concatenate(plain), pool[:4].numpy())


def test_cli_says_when_the_schedule_is_capped(tmp_path):
    from click.testing import CliRunner

    from tvc.cli import cli

    res = CliRunner().invoke(cli, ["compress", "vit_pico", "--merge-tokens", "40",
                                   "-o", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "--merge-tokens asked [40, 40]; capped" in res.output
    assert (tmp_path / "o" / "artifact.json").exists()


def test_the_merging_graph_copies_whole_rows_and_sums_keys_token_major(pico, tmp_path):
    """What makes merging cheap on ONNX Runtime: rows are gathered with Gather (GatherElements
    reads an index as large as its output, ~4x slower) and the key metric is a ReduceSum in
    the token-major layout (ReduceMean over the heads axis was ~3x slower); parity still holds
    at batch 3, where the gather's per-image row offsets matter."""
    import onnx

    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.stages.export import export_loaded

    m = copy.deepcopy(pico.model).eval()
    merge(m, [8], pico.info.input_size)
    art = export_loaded(LoadedModel(m, pico.info), tmp_path / "x", OnnxExportConfig(batch=3))
    assert art.meta["metrics"]["parity"]["ok"]
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(art.file("model.onnx")))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    ops = [n.op_type for n in graph.node]
    assert "Gather" in ops and "ReduceSum" in ops
    assert not {"ReduceMean", "Expand"} & set(ops)
    # GatherElements only picks each moved token's partner index (int64), never float rows
    picks = [n for n in graph.node if n.op_type == "GatherElements"]
    assert picks and all(types[n.input[0]] == onnx.TensorProto.INT64 for n in picks)


def test_tokens_metric_matches_on_the_features_the_mlp_reads_and_rebuilds(pico, tmp_path):
    """metric "tokens": the matching compares the residual stream after attention, each token
    standardized over its channels; their cosine is that of the centred tokens (Pearson
    correlation), which the by-hand block matches on. The merged model equals it, rebuilds from
    its structure (which records the metric), and exports with parity."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.models.merge import _attention, merge_tokens
    from tvc.stages.export import export_loaded

    m = copy.deepcopy(pico.model).eval()
    rep = merge(m, [6, 0], pico.info.input_size, metric="tokens")
    assert rep["metric"] == "tokens" and m.blocks.metric == "tokens"
    x = torch.randn(2, *pico.info.input_size)
    with torch.no_grad():
        t = m._pos_embed(m.patch_embed(x))
        b0, b1 = m.blocks[0], m.blocks[1]
        y, _ = _attention(b0.attn, b0.norm1(t), None)
        t = t + y
        t, size = merge_tokens(t, t - t.mean(-1, keepdim=True), None, 6, 1)
        t = t + b0.mlp(b0.norm2(t))
        y, _ = _attention(b1.attn, b1.norm1(t), size)
        t = t + y
        t = t + b1.mlp(b1.norm2(t))
        want = m.forward_head(m.norm(t))
        assert torch.allclose(m(x), want, atol=1e-5)
        keys = copy.deepcopy(pico.model).eval()
        merge(keys, [6, 0], pico.info.input_size)  # the default compares keys: other choices
        assert not torch.allclose(keys(x), want, atol=1e-4)

    structure = describe_structure(m, pico.model)
    assert structure["merge"]["metric"] == "tokens"
    fresh = apply_structure(copy.deepcopy(pico.model), structure)
    fresh.load_state_dict(m.state_dict(), strict=True)
    assert torch.equal(fresh.eval()(x), m(x))
    art = export_loaded(LoadedModel(m, pico.info), tmp_path / "x", OnnxExportConfig(batch=1))
    assert art.meta["metrics"]["parity"]["ok"]


def test_structures_written_before_the_metric_option_rebuild_with_keys(pico):
    m = copy.deepcopy(pico.model).eval()
    merge(m, [6], pico.info.input_size)
    structure = describe_structure(m, pico.model)
    del structure["merge"]["metric"]
    fresh = apply_structure(copy.deepcopy(pico.model), structure)
    assert fresh.blocks.metric == "keys"
    fresh.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, *pico.info.input_size)
    assert torch.equal(fresh.eval()(x), m(x))


def test_merge_metric_errors_name_the_fix(tmp_path):
    from click.testing import CliRunner

    from tvc.cli import cli

    with pytest.raises(ConfigError, match="--merge-metric"):
        merge(copy.deepcopy(load_model("vit_pico", warn_random=False).model), [4], (3, 32, 32),
              metric="values")  # fmt: skip
    res = CliRunner().invoke(cli, ["compress", "vit_pico", "--prune", "0.2", "--merge-metric",
                                   "tokens", "-o", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code != 0
    assert "--merge-metric only applies with --merge-tokens or --target-latency" in res.output
    assert not (tmp_path / "o").exists()
    args = ["compress", "vit_pico", "--merge-tokens", "6", "--merge-metric", "tokens"]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    import json

    spec = json.loads((tmp_path / "t" / "artifact.json").read_text())["spec"]
    assert spec["merge"]["metric"] == "tokens"


def test_cli_merges_a_hugging_face_directory_and_exports_it(hf_dir, tmp_path):
    """`tvc compress HF_DIR --merge-tokens R` (the issue's Hugging Face ViT/DINOv2-style
    directories), then `tvc export` of the artifact with parity."""
    import json

    from click.testing import CliRunner

    from tvc.cli import cli

    out = tmp_path / "merged"
    res = CliRunner().invoke(cli, ["compress", str(hf_dir), "--merge-tokens", "6", "-o", str(out)])
    assert res.exit_code == 0, res.output
    merge_spec = json.loads((out / "artifact.json").read_text())["model"]["structure"]["merge"]
    assert merge_spec["schedule"] == [6, 6] and merge_spec["prefix"] == 1
    res = CliRunner().invoke(cli, ["export", str(out), "-o", str(tmp_path / "onnx")])
    assert res.exit_code == 0, res.output
    parity = json.loads((tmp_path / "onnx/artifact.json").read_text())["metrics"]["parity"]
    assert parity["ok"]
