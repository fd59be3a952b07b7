"""Quality metrics, numpy only (they run on a board): top-1/top-5 and agreement of classifiers
(classification.py), COCO mAP of detectors (detection.py). Which model runs on which data is
the eval stage's (tvc/stages/evaluate.py)."""

from tvc.eval.classification import evaluate

__all__ = ["evaluate"]
