"""ImageFolder: one sub-directory per class, images inside (any format Pillow reads).

Two layouts:
- `ROOT/train/<class>/...`, `ROOT/test/<class>/...` (and optionally `ROOT/val/<class>/...`): each
  split is its own folder; without `val/`, val is a fixed 10% hold-out of train, and without
  `test/` (ImageNet's own train/ + val/ layout) test is `val/`. The classes are train/'s: a label
  means the same class in every split, whichever classes a val/ or test/ folder happens to hold.
- `ROOT/<class>/...`: one pool; `test` is every image, `val` a fixed 10% hold-out and `train` the
  rest. Such a folder has no held-out test images: evaluate on a separate folder when it matters.

Files Pillow cannot read are skipped and counted; no usable image at all is an error. Images are
decoded once when loaded (after --limit picks the subset) and kept as uint8 at the model's input
size: 150 KB per 224 px RGB image, so use --limit for very large folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tvc.data.base import Preprocess
from tvc.errors import DataError, MissingDependencyError

log = logging.getLogger("tvc")
SPLIT_DIRS = ("train", "val", "test")
VAL_FRACTION = 0.1
_SPLIT_SEED = 20240601


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading an image folder needs the Python package 'Pillow', which is not installed",
            "install it with: pip install pillow",
        ) from exc
    return Image


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))


def _walk(d: Path):
    return (f for f in d.rglob("*") if f.is_file() and _visible(f))


def _files(d: Path) -> list[Path]:
    return sorted(_walk(d))


def class_names(root: Path) -> list[str]:
    """The classes a folder defines: its visible sub-folders, sorted, each holding files."""
    classes = class_dirs(root)
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders",
            "arrange images as DIR/<class name>/<image>, one sub-folder per class",
        )
    if len(classes) < 2:
        # one class: every prediction is "right", so any accuracy would be meaningless
        raise DataError(
            f"{root} has only one class sub-folder ({classes[0].name})",
            "a classifier needs at least two classes: add a sub-folder per class",
        )
    empty = [d.name for d in classes if next(_walk(d), None) is None]  # stops at a first file
    if empty:  # it would become a class the model is asked to predict but never sees
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {root} hold no files",
            "add images to them or remove them",
        )
    return [d.name for d in classes]


def list_files(
    root: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, files and labels under `root/<class>/` (files sorted, hidden ones skipped);
    `classes` (another split's class names) fixes what each label means."""
    if classes is None:
        classes = class_names(root)
    else:
        unknown = sorted({d.name for d in class_dirs(root)} - set(classes))
        if unknown:
            raise DataError(
                f"{root} has class folder(s) {', '.join(unknown)} that the training split lacks",
                f"use the same class folder names in every split ({', '.join(classes[:5])}"
                f"{', ...' if len(classes) > 5 else ''})",
            )
    files, labels = [], []
    for k, name in enumerate(classes):
        d = root / name
        found = _files(d) if d.is_dir() else []
        files += found
        labels += [k] * len(found)
    return list(classes), files, np.asarray(labels, dtype=np.int64)


def split_root(root: Path, split: str) -> tuple[Path, np.ndarray | None]:
    """The folder holding `split`, and positions inside it (None: all of them)."""
    has_split_dirs = (root / "train").is_dir() or (root / "test").is_dir()
    if has_split_dirs:
        has_val = (root / "val").is_dir()
        if split in ("train", "val") and not has_val and (root / "train").is_dir():
            return root / "train", _holdout(root / "train", split)  # val held out of train/
        if (root / split).is_dir():
            return root / split, None
        if split == "test" and has_val:
            log.info("%s has no test/ folder: scoring on val/", root)
            return root / "val", None
        raise DataError(
            f"{root} has split folders but no '{split}/'", f"add {root / split}/<class>/<images>"
        )
    if split == "test":
        return root, None
    return root, _holdout(root, split)


def _holdout(root: Path, split: str) -> np.ndarray:
    _, files, _ = list_files(root)
    n = len(files)
    n_val = max(1, round(n * VAL_FRACTION)) if n > 1 else 0
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    return np.sort(perm[:n_val] if split == "val" else perm[n_val:])


def decode(path: Path, pre: Preprocess) -> np.ndarray:
    """One image as uint8 (C, H, W) at the model's size: resized (by the shorter side, or
    squashed to the square) to the size whose centre crop of `pre.crop_pct` is the model's
    input, as timm and Hugging Face processors evaluate their checkpoints; then that crop."""
    image_mod = _pil()
    c, h, w = pre.input_size
    # timm: scale_size = floor(img_size / crop_pct)
    th, tw = (h, w) if pre.crop_pct == 1 else (int(h / pre.crop_pct), int(w / pre.crop_pct))
    with image_mod.open(path) as im:
        im = im.convert("RGB" if c == 3 else "L")  # grayscale becomes 3 equal channels
        if pre.squash:
            size = (tw, th)
        else:
            scale = max(th / im.height, tw / im.width)
            size = (max(tw, round(im.width * scale)), max(th, round(im.height * scale)))
        im = im.resize(size, getattr(image_mod.Resampling, pre.interpolation.upper()))
        left, top = (size[0] - w) // 2, (size[1] - h) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_folder(
    root: Path, split: str, pre: Preprocess, select
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Decode one split: (uint8 N,C,H,W, labels, class names, skipped count).

    `select(n)` returns the positions to keep (the seeded --limit subset).
    """
    folder, positions = split_root(root, split)
    train = root / "train"
    # labels count train/'s classes in every split, so that val/ or test/ missing a class
    # cannot shift what the others' labels mean
    classes = class_names(train) if folder != train and train.is_dir() else None
    names, files, labels = list_files(folder, classes)
    if positions is not None:
        files = [files[i] for i in positions]
        labels = labels[positions]
    if not files:
        raise DataError(f"{folder} holds no files for split '{split}'", "add images to it")
    keep = select(len(files))
    image_mod = _pil()
    arrays, kept_labels, bad = [], [], []
    for i in keep:
        try:
            arrays.append(decode(files[i], pre))
            kept_labels.append(labels[i])
        except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
            bad.append((files[i], exc))  # UnidentifiedImageError is an OSError
    if bad:
        shown = ", ".join(str(p.relative_to(folder)) for p, _ in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        log.warning("skipped %d unreadable file(s) in %s: %s%s", len(bad), folder, shown, more)
    if not arrays:
        raise DataError(
            f"none of the {len(keep)} file(s) in {folder} is a readable image",
            "put image files (PNG, JPEG, ...) in DIR/<class name>/",
        )
    return np.stack(arrays), np.asarray(kept_labels, np.int64), names, len(bad)
