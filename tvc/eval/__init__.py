"""Evaluation: accuracy on real data and agreement with a reference, for any backend."""

from tvc.eval.classification import evaluate, runner_predict

__all__ = ["evaluate", "runner_predict"]
