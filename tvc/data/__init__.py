"""Datasets for every command that takes --data, prepared for one model's input.

`load_images(spec, split, input_size=..., mean=..., std=...)` understands:
- `fashion-mnist`: Debian's copy in /usr/share/datasets/fashion-mnist (`apt-get install
  dataset-fashion-mnist`);
- `fashion-mnist:/some/dir`, or a directory holding the four IDX files: the same from elsewhere;
- any other directory: an ImageFolder (one sub-folder per class; see tvc/data/folder.py).

Splits are `train`, `val` (a fixed hold-out of the training images) and `test`; they never depend
on `seed`. `limit` keeps a subset of that size drawn with `seed`, for calibration and quick runs.
numpy only (Pillow for image folders): no torch, so evaluation runs on a board.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tvc.data import fashion_mnist, folder
from tvc.data.base import ImageSet, Preprocess, chw_reader, gray_reader, seeded_subset
from tvc.errors import DataError

__all__ = ["SPLITS", "ImageSet", "load_images"]

log = logging.getLogger("tvc")
SPLITS = ("train", "val", "test")
FASHION_MNIST = "fashion-mnist"


def load_images(
    spec: str,
    split: str = "test",
    *,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    limit: int | None = None,
    seed: int = 0,
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    squash: bool = False,
) -> ImageSet:
    """Load split `split` of the dataset `spec`, prepared for a model taking `input_size`;
    image files are resized and cropped as `crop_pct`, `interpolation` and `squash` say (see
    Preprocess; IDX images are small and always resized whole)."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'", f"use one of: {', '.join(SPLITS)}")
    pre = Preprocess(tuple(int(d) for d in input_size), tuple(mean), tuple(std),
                     float(crop_pct), interpolation, bool(squash))  # fmt: skip
    kind, where = _parse(spec)
    if kind == "idx":
        images, labels = fashion_mnist.load_split(where, split)
        keep = seeded_subset(len(labels), limit, seed)
        images, labels = images[keep], labels[keep]
        reader = gray_reader(images, pre)
        names, skipped = fashion_mnist.CLASS_NAMES, 0
    else:
        images, labels, names, skipped = folder.load_folder(
            where, split, pre, lambda n: seeded_subset(n, limit, seed)
        )
        reader = chw_reader(images, pre)
    if len(labels) == 0:
        raise DataError(f"{spec} has no images in split '{split}'", "check the dataset")
    whole = Preprocess(pre.input_size, pre.mean, pre.std)  # keys written before crop_pct
    crop = "" if pre == whole else f"|{pre.crop_pct}|{pre.interpolation}|{pre.squash}"
    key = f"{kind}|{where.resolve()}|{split}|{limit}|{seed}|{len(labels)}|{whole}{crop}"
    fp = hashlib.sha256(key.encode() + labels.tobytes()).hexdigest()[:16]
    name = FASHION_MNIST if kind == "idx" else where.name
    data = ImageSet(reader, labels, name=name, split=split, class_names=names,
                    input_size=pre.input_size, skipped=skipped, fingerprint=fp)  # fmt: skip
    log.debug("loaded %s", data.summary())
    return data


def _parse(spec: str) -> tuple[str, Path]:
    """('idx', dir) for Fashion-MNIST IDX files, ('folder', dir) for an ImageFolder."""
    text = spec.strip()
    if not text:  # '' would otherwise read the current directory as an image folder
        raise DataError(
            "--data is empty", "pass 'fashion-mnist', 'fashion-mnist:/dir' or an image folder"
        )
    if text.lower() == FASHION_MNIST:
        return "idx", fashion_mnist.DEFAULT_DIR
    if text.lower().startswith(FASHION_MNIST + ":"):
        return "idx", Path(text.split(":", 1)[1]).expanduser()
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json":
        raise DataError(
            f"{spec} looks like COCO-format detection annotations; this command classifies images",
            "pass fashion-mnist or an image folder (DIR/<class>/<image>)",
        )
    if not path.exists():
        raise DataError(
            f"dataset '{spec}' not found (neither a known name nor an existing directory)",
            "pass 'fashion-mnist', 'fashion-mnist:/dir' or an image folder DIR/<class>/<image>",
        )
    if not path.is_dir():
        raise DataError(f"{spec} is a file, not a dataset directory", "pass the folder holding it")
    if fashion_mnist.has_idx_files(path):
        return "idx", path
    return "folder", path
