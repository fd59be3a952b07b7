"""Detectors sized for their data: classes from the data's categories, object queries from the
most objects one image holds, and loading that honours both (plus --input-size).

A DETR predicts one object per query, so the query count caps how many objects an image can
yield: `max(10, ceil(1.5 x the most objects in one training image))` by default, so a set with
40 objects per image gets 60 queries, and tvc's built-in scenes (at most 4) keep DETR's usual
10. A Hugging Face checkpoint keeps its own query count when it already covers the data (its
query embeddings are trained); changing it re-initialises them, and that is said. A tvc artifact
keeps what it was trained with: compress and export never change the queries or classes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from tvc.errors import ConfigError

log = logging.getLogger("tvc")

MIN_QUERIES = 10  # DETR's usual count on small scenes
QUERY_HEADROOM = 1.5
MIN_INPUT_SIZE = 32  # the backbone downsamples 16-32x


def default_queries(max_objects: int) -> int:
    """max(10, ceil(1.5 x the most objects in one image))."""
    return max(MIN_QUERIES, math.ceil(QUERY_HEADROOM * max_objects))


def _artifact_model(path: Path) -> dict[str, Any] | None:
    try:
        if (path / "artifact.json").is_file():
            return json.loads((path / "artifact.json").read_text()).get("model") or {}
    except (OSError, ValueError):
        return None  # the regular loader explains a damaged artifact
    return None


def _checkpoint_config(path: Path) -> dict[str, Any] | None:
    try:
        if (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return None


def sized_for_data(model: str, train: Any, options: dict[str, Any]) -> dict[str, Any]:
    """load_detector keyword arguments that fit detector `model` to the train split `train`
    (a DetectionSet): classes from its categories, queries from its fullest image. Announces
    both; `options` are the train stage's set options (num_classes, num_queries, input_size)."""
    need = int(train.max_objects)
    asked = options.get("num_queries")
    path = Path(model)
    art = _artifact_model(path) if path.is_dir() else None
    if art is not None:  # an artifact keeps its head and queries
        have = int((art.get("extra") or {}).get("num_queries", 0)) or None
        if have is not None and have < need:
            log.warning(
                "%s has %d object queries but a training image holds %d objects: at most %d "
                "can be found; train from the model it came from with --num-queries %d",
                model,
                have,
                need,
                have,
                default_queries(need),
            )
        return {"num_queries": asked} if asked else {}
    derived = default_queries(need)
    reason = (
        f"max({MIN_QUERIES}, ceil({QUERY_HEADROOM} x {need})), {need} being the most objects "
        "in one training image; change with --num-queries"
    )
    ckpt = _checkpoint_config(path) if path.is_dir() else None
    if ckpt is not None and int(ckpt.get("num_queries", 0)) >= need:
        derived = int(ckpt["num_queries"])
        reason = f"the checkpoint's own, enough for the {need} objects of the fullest image"
    queries = asked or derived
    if asked:
        reason = "--num-queries"
    log.info("object queries: %d (%s)", queries, reason)
    if queries < need:
        log.warning(
            "%d object queries for images of up to %d objects: the rest can never be found; "
            "raise --num-queries to at least %d",
            queries,
            need,
            need,
        )
    names = list(train.class_names)
    classes = options.get("num_classes") or len(names)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    log.info(
        "classes: %d%s (%s)",
        classes,
        " from the data's categories" if not options.get("num_classes") else " (--num-classes)",
        shown,
    )
    fits = classes == len(names)
    return {
        "num_classes": classes,
        "num_queries": queries,
        "class_names": names if fits else None,
        "category_ids": list(train.category_ids) if fits else None,
        "input_size": options.get("input_size"),
    }


def load_detector(
    spec: str,
    *,
    num_queries: int | None = None,
    class_names: list[str] | None = None,
    category_ids: list[Any] | None = None,
    **kwargs: Any,
):
    """tvc.models.load_model for detectors, with what only they take: a query count, class
    names and category ids, and --input-size for a Hugging Face directory as well."""
    from tvc.models.detection import DETECTION_CONFIGS, det_from_directory, det_from_name
    from tvc.models.load import load_model

    input_size = kwargs.get("input_size")
    if input_size is not None and input_size < MIN_INPUT_SIZE:
        raise ConfigError(
            f"--input-size {input_size} is too small for a detector "
            "(the backbone downsamples 16-32x)",
            f"use {2 * MIN_INPUT_SIZE} or more",
        )
    path = Path(spec)
    if path.is_dir() and _artifact_model(path) is not None:
        loaded = load_model(spec, **kwargs)
        have = int(getattr(loaded.model, "num_queries", 0))
        if num_queries is not None and num_queries != have:
            raise ConfigError(
                f"--num-queries {num_queries} differs from the {have} queries {spec} was "
                "trained with",
                "drop --num-queries (an artifact keeps its queries), or train from the model "
                "it came from",
            )
        return loaded
    sized = {"num_queries": num_queries, "class_names": class_names, "category_ids": category_ids}
    if path.is_dir() and (path / "config.json").is_file():
        return det_from_directory(
            path, num_classes=kwargs.get("num_classes"), input_size=input_size, **sized
        )
    if spec in DETECTION_CONFIGS:
        return det_from_name(
            spec,
            weights=kwargs.get("weights"),
            num_classes=kwargs.get("num_classes"),
            input_size=input_size,
            warn_random=kwargs.get("warn_random", True),
            **sized,
        )
    return load_model(spec, **kwargs)
