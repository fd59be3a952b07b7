"""Pruning's collapse warning and the seed of random importance."""

from __future__ import annotations

import logging

from tvc.compress.pipeline import _warn_collapse
from tvc.stages.compress import Config


def test_collapsed_agreement_is_warned_and_recorded(caplog):
    report = {"agreement": {"agreement": 0.0, "inputs": "random inputs"}}
    with caplog.at_level(logging.WARNING, logger="tvc"):
        _warn_collapse(report)
    assert "collapsed" in report["warning"]
    assert "PRUNING COLLAPSED" in caplog.text


def test_kept_agreement_is_not_warned():
    report = {"agreement": {"agreement": 0.9, "inputs": "random inputs"}}
    _warn_collapse(report)
    assert "warning" not in report


def test_seed_is_a_prune_option():
    cfg = Config.parse({"model": "m", "output": "o", "prune": 0.3, "importance": "random",
                        "seed": 3})  # fmt: skip
    assert cfg.seed == 3
