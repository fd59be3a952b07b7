import numpy as np
import pytest
import torch

from tvc.errors import ConfigError
from tvc.models.igpt import CONFIGS, IGPTConfig, ImageGPT, generate_greedy


def test_causality_later_tokens_never_change_earlier_logits(igpt, tokens):
    x = torch.from_numpy(tokens)
    base = igpt.logits(x)
    for pos in (0, 17, 63):
        changed = x.clone()
        changed[:, pos] = (changed[:, pos] + 3) % 8
        out = igpt.logits(changed)
        # logits at i predict token i from tokens < i: positions <= pos must not move
        assert torch.equal(out[:, : pos + 1], base[:, : pos + 1])
        if pos < 63:  # and the next position does see the change
            assert not torch.allclose(out[:, pos + 1], base[:, pos + 1])


def test_training_attention_is_the_same_function_and_stays_causal(igpt, tokens):
    # training takes PyTorch's fused attention kernel; it must compute what inference does
    x = torch.from_numpy(tokens)
    with torch.no_grad():
        inference = igpt.logits(x)
        igpt.train()
        training = igpt.logits(x)
        changed = x.clone()
        changed[:, 40] = (changed[:, 40] + 3) % 8
        later = igpt.logits(changed)
    igpt.eval()
    assert torch.allclose(training, inference, atol=1e-5)
    assert torch.allclose(later[:, :41], training[:, :41], atol=1e-6)
    assert not torch.allclose(later[:, 41], training[:, 41])


def test_features_and_class_logits(igpt, tokens):
    logits, feats, cls = igpt(torch.from_numpy(tokens))
    assert logits.shape == (3, 64, 8) and feats.shape == (3, 32) and cls.shape == (3, 10)
    assert torch.allclose(feats, igpt.features(torch.from_numpy(tokens)))
    assert torch.allclose(logits, igpt.logits(torch.from_numpy(tokens)), atol=1e-6)


def test_kv_cache_steps_equal_the_full_forward(igpt, tokens):
    x = torch.from_numpy(tokens)
    full = igpt.logits(x)
    inp = igpt.shifted(x)
    out = igpt.step(inp[:, :10], *igpt.empty_cache(3))  # fill from a 10-token prefix
    assert torch.allclose(out[0], full[:, :10], atol=1e-5)
    cache = out[1:]
    for i in range(10, 64):  # then one token at a time
        out = igpt.step(inp[:, i : i + 1], *cache)
        cache = out[1:]
        assert torch.allclose(out[0][:, 0], full[:, i], atol=1e-5)
    assert cache[0].shape == (3, 2, 64, 16)


def test_greedy_generation_with_and_without_cache_agree(igpt, tokens):
    prefix = torch.from_numpy(tokens[:, :16])
    a = generate_greedy(igpt, prefix)
    b = generate_greedy(igpt, prefix, use_cache=False)
    assert a.shape == (3, 64) and torch.equal(a, b) and torch.equal(a[:, :16], prefix)


def test_config_validation_and_sizes():
    with pytest.raises(ConfigError):
        ImageGPT(IGPTConfig(dim=30, heads=4))
    with pytest.raises(ConfigError):
        ImageGPT(IGPTConfig(probe_layer=9))
    micro = ImageGPT(CONFIGS["igpt_micro"])
    n = sum(p.numel() for p in micro.parameters())
    assert 100_000 < n < 1_250_000  # under 5 MB in float32
    assert micro.seq_len == 196


def test_load_model_builds_igpt_by_name_and_from_info(igpt_loaded):
    from tvc.models.load import build_from_info, load_model

    loaded = load_model("igpt_pico", warn_random=False)
    assert loaded.info.family == "igpt" and loaded.info.extra["palette"]["kind"] == "levels"
    rebuilt = build_from_info(loaded.info)
    assert isinstance(rebuilt, ImageGPT) and rebuilt.seq_len == 64
    assert np.array_equal(np.array(loaded.info.input_size), [1, 8, 8])


def test_layer_features_match_the_probe_features(igpt, tokens):
    x = torch.from_numpy(tokens)
    per_layer = igpt.layer_features(x)
    assert len(per_layer) == 2
    assert torch.allclose(per_layer[igpt.probe_layer - 1], igpt(x)[1], atol=1e-6)
