"""Matching a dataset's classes to a classifier's by name.

A folder's labels count its class folders in sorted order; a model's outputs count the classes it
was trained on, in the order its training data or its config gave them. Where both have names,
label k must mean the class output k means: the data is relabelled by name, and a class that sits
at another position in each is refused rather than scored against the wrong output.
"""

from __future__ import annotations

import logging

import numpy as np

from tvc.data.base import ImageSet
from tvc.errors import DataError

log = logging.getLogger("tvc")


def listed_names(names: list[str], limit: int = 5) -> str:
    """The first `limit` names, and how many there are in all when more."""
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def align_classes(data: ImageSet, model_names: list[str] | None) -> ImageSet:
    """`data` with labels in the model's class order (`model_names`; None: unknown, so the
    labels stay as they are). A data class the model also names must sit at the position the
    model gives it, unless every data class can be matched by name."""
    names = data.class_names
    if not model_names or names == model_names:
        return data
    where = {n: i for i, n in enumerate(model_names)}
    if len(where) != len(model_names):
        return data  # repeated names cannot be matched by name
    if all(n in where for n in names):
        log.info("%s: its %d classes matched to the model's %d by name",
                 data.name, len(names), len(model_names))  # fmt: skip
        return data.relabel(np.array([where[n] for n in names]), list(model_names))
    moved = [n for i, n in enumerate(names) if n in where and where[n] != i]
    unknown = [n for n in names if n not in where]
    if moved:
        first = moved[0]
        raise DataError(
            f"{data.name}'s class '{first}' is label {names.index(first)} there but output "
            f"{where[first]} of the model, and its classes {listed_names(unknown)} are not the "
            "model's, so its labels cannot be matched to the model's outputs",
            f"name its class folders as the model's classes ({listed_names(model_names)})",
        )
    if len(unknown) < len(names):
        log.warning(
            "%s: classes %s are not among the model's (%s); labels are matched by position",
            data.name, listed_names(unknown), listed_names(model_names),
        )  # fmt: skip
    return data
