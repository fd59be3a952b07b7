import numpy as np
import pytest
import torch

from tvc.errors import ParityError
from tvc.export.kv_decoder import (
    decoder_parity,
    export_decoder,
    export_full,
    full_parity,
    generate_with_cache,
    generate_without_cache,
    generation_speed,
)
from tvc.models.igpt import generate_greedy
from tvc.runtime.ort import session_from_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tvc.models.igpt import CONFIGS, ImageGPT

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ImageGPT(CONFIGS["igpt_pico"]).eval()
    d = tmp_path_factory.mktemp("igpt")
    return model, export_full(model, d / "model.onnx"), export_decoder(model, d / "decoder.onnx")


def test_full_graph_parity(exported, tokens):
    model, full, _ = exported
    facts = full_parity(model, full, tokens)
    assert set(facts) == {"logits", "features", "class_logits"}
    assert all(f["ok"] and f["max_abs_diff"] < 1e-4 for f in facts.values())
    sess = session_from_onnx(full, threads=1)
    five = np.repeat(tokens, 2, 0)[:5]  # the batch is dynamic
    assert sess.run(["logits"], {"tokens": five})[0].shape == (5, 64, 8)


def test_decoder_parity_and_identical_greedy_tokens(exported, tokens):
    model, full, dec = exported
    facts = decoder_parity(model, full, dec, tokens[:, :16])
    assert facts["prefill_logits"]["ok"] and facts["step_logits"]["ok"]
    assert facts["greedy_identical_torch_vs_ort_cache"]
    assert facts["greedy_identical_ort_cache_vs_full"]
    assert facts["generated_tokens"] == 48
    sess = session_from_onnx(dec, threads=1)
    ours = generate_with_cache(sess, tokens[:, :16], 64, model.sos)
    ref = generate_greedy(model, torch.from_numpy(tokens[:, :16])).numpy()
    assert np.array_equal(ours, ref)
    # from an empty prefix too (a zero-length cache)
    empty = np.zeros((2, 0), np.int64)
    assert np.array_equal(
        generate_with_cache(sess, empty, 64, model.sos),
        generate_without_cache(session_from_onnx(full, threads=1), empty, 64),
    )


def test_decoder_parity_catches_a_different_model(exported, tokens, tmp_path):
    model, full, _ = exported
    other = type(model)(model.cfg).eval()  # fresh random weights
    wrong = export_decoder(other, tmp_path / "decoder.onnx")
    with pytest.raises(ParityError):
        decoder_parity(model, full, wrong, tokens[:, :16])


def test_generation_speed_reports_both_paths(exported, tokens):
    model, full, dec = exported
    r = generation_speed(full, dec, tokens[:1, :8], total=64, start=model.sos, cache_repeats=1)
    assert r["same_tokens"] and r["new_tokens_per_image"] == 56
    assert r["kv_cache"]["tokens_per_s"] > 0 and r["no_cache"]["tokens_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["no_cache"]["seconds"] / r["kv_cache"]["seconds"], 0.02)


def test_fixed_batch_export_is_run_one_image_at_a_time(exported, tokens, tmp_path):
    from tvc.export.kv_decoder import run_full

    model = exported[0]
    fixed = export_full(model, tmp_path / "fixed.onnx", dynamic_batch=False)
    sess = session_from_onnx(fixed, threads=1)
    logits = run_full(sess, tokens, ["logits"])[0]
    assert logits.shape == (3, 64, 8)
    assert np.allclose(logits, model.logits(torch.from_numpy(tokens)).detach().numpy(), atol=1e-5)
    ref = generate_greedy(model, torch.from_numpy(tokens[:, :16])).numpy()
    assert np.array_equal(generate_without_cache(sess, tokens[:, :16], 64), ref)


def test_image_shaped_float_tokens_are_accepted(exported, tokens):
    model = exported[0]
    as_image = torch.from_numpy(tokens).float().reshape(3, 1, 8, 8)
    assert torch.equal(model(as_image)[0], model(torch.from_numpy(tokens))[0])
