"""Detection data: tvc's built-in Fashion-MNIST detection set and COCO-format datasets.

The built-in set (`fashion-mnist-det`) is made in code from real Fashion-MNIST objects: each
96x96 canvas holds 1-4 garments, each cropped to its pixels, scaled by 0.6-1.6 and pasted at a
random place (overlaps kept small). Boxes are exact: they are the bounds of the pasted pixels.
Scenes are deterministic in (seed, split, index), so `limit` simply takes the first scenes.
Train scenes use Fashion-MNIST's train objects, val its hold-out, test its test images.

DATA specs (the COCO layouts are described in tvc.data.detection_layout):
- `fashion-mnist-det` (alias `fmnist-det`), or `fashion-mnist-det:/dir/with/idx/files`;
- a COCO-format JSON file holding every split (divided seeded 80/10/10, or by the images'
  "split" field), images beside it or under `images/`;
- a directory in one of the COCO layouts: per-split JSON files (what `write_coco` writes),
  per-split folders, `annotations/instances_<split>.json` + `<split>2017/`, or one file.

Boxes are kept as COCO does, [x, y, w, h] in pixels; `batches` turns them into what DETR trains
on, normalised [cx, cy, w, h] in [0, 1]. numpy only (Pillow to read and write image files).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvc.data.letterbox import (  # noqa: F401 (re-exported: the preprocessing of scenes)
    RESIZE_MODES,
    canvas_extent,
    letterbox_size,
    preprocess,
    preprocess_letterbox,
    resize_bilinear,
)
from tvc.errors import DataError, MissingDependencyError, first_line
from tvc.safe_io import write_text_atomic

BUILTIN = "fashion-mnist-det"
ALIASES = (BUILTIN, "fmnist-det")
CANVAS = 96
SPLIT_SIZES = {"train": 4000, "val": 500, "test": 500}
MAX_OBJECTS = 4
SCALE_RANGE = (0.6, 1.6)
MAX_IOU = 0.15  # between pasted objects, so every garment stays visible
_OBJECT_THRESHOLD = 16  # grey level that counts as part of a garment (background is 0)
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass
class DetectionSet:
    """Images (H, W, 3) uint8 with COCO-style targets: boxes (n, 4) [x, y, w, h] px, labels (n,)."""

    name: str
    split: str
    class_names: list[str]
    images: list[np.ndarray]
    targets: list[dict[str, np.ndarray]]
    image_ids: list[int] = field(default_factory=list)
    # the COCO category id of each label (label i is category_ids[i]); default 1..K
    category_ids: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_ids:
            self.image_ids = list(range(1, len(self.images) + 1))
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.class_names) + 1))

    @property
    def max_objects(self) -> int:
        """The most objects any one image holds (0 for a set without any)."""
        return max((len(t["labels"]) for t in self.targets), default=0)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_objects(self) -> int:
        return int(sum(len(t["labels"]) for t in self.targets))

    def subset(self, n: int) -> DetectionSet:
        """The first `n` images."""
        return DetectionSet(
            self.name,
            self.split,
            self.class_names,
            self.images[:n],
            self.targets[:n],
            self.image_ids[:n],
            self.category_ids,
        )

    def batches(
        self,
        batch_size: int,
        *,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle_seed: int | None = None,
        resize: str = "letterbox",
        masks: bool = False,
    ) -> Iterator[tuple]:
        """(x float32 NCHW, targets with normalised cxcywh boxes, positions) per batch; with
        `masks`, (x, pixel_mask, targets, positions), pixel_mask (B, H, W) int64 with 1 on
        image pixels and 0 on letterbox padding, or None when no image of the batch is padded.

        `resize` "letterbox" keeps each image's aspect ratio (scaled to fit, padded at the
        bottom/right, as DETR pads); boxes are then normalised by the padded canvas, so they map
        back through `canvas_extent`. "stretch" (artifacts made before letterboxing) fills the
        input, deforming non-square images. Square images into a square input come out the same
        either way. With `shuffle_seed`, the order is a seeded permutation (for training).
        """
        order = np.arange(len(self))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self))
        for start in range(0, len(order), batch_size):
            pos = [int(i) for i in order[start : start + batch_size]]
            xs, ms, targets = [], [], []
            for i in pos:
                x, mask = preprocess_letterbox(self.images[i], input_size, mean, std, resize)
                xs.append(x)
                ms.append(mask)
                extent = canvas_extent(self.images[i].shape[:2], input_size[1:], resize)
                targets.append(normalised_target(self.images[i], self.targets[i], extent))
            x = np.stack(xs)
            if not masks:
                yield x, targets, pos
                continue
            mask = np.stack(ms)
            yield x, (None if mask.all() else mask), targets, pos

    def to_coco(self) -> dict[str, Any]:
        """The ground truth as a COCO dictionary (labels mapped to their category ids)."""
        images, anns = [], []
        for img_id, img, tgt in zip(self.image_ids, self.images, self.targets, strict=True):
            images.append(
                {
                    "id": img_id,
                    "file_name": f"{img_id:06d}.png",
                    "height": int(img.shape[0]),
                    "width": int(img.shape[1]),
                }
            )
            for box, label in zip(tgt["boxes"], tgt["labels"], strict=True):
                x, y, w, h = (float(v) for v in box)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": img_id,
                        "category_id": self.category_ids[int(label)],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
        cats = [
            {"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)
        ]
        return {"images": images, "annotations": anns, "categories": cats}


def normalised_target(
    image: np.ndarray,
    target: dict[str, np.ndarray],
    extent: tuple[float, float] = (1.0, 1.0),
) -> dict[str, np.ndarray]:
    """Boxes as [cx, cy, w, h] divided by the width and height of the model's canvas in image
    pixels (the image's own size times `extent`, see canvas_extent), as DETR predicts them."""
    h, w = image.shape[:2]
    w, h = w * extent[0], h * extent[1]
    b = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
    cxcywh = np.stack(
        [(b[:, 0] + b[:, 2] / 2) / w, (b[:, 1] + b[:, 3] / 2) / h, b[:, 2] / w, b[:, 3] / h], axis=1
    )
    return {"boxes": cxcywh.astype(np.float32), "labels": np.asarray(target["labels"], np.int64)}


# ---------------------------------------------------------------------------------- loading


def is_detection_spec(spec: str) -> bool:
    """True when `spec` names detection data (the built-in set or COCO-format annotations)."""
    from tvc.data.detection_layout import is_coco_directory

    text = spec.strip()
    if text.lower().split(":", 1)[0] in ALIASES:
        return True
    path = Path(text).expanduser()
    if path.suffix.lower() == ".json":
        return True
    return path.is_dir() and is_coco_directory(path)


def load_detection(
    spec: str, split: str = "test", *, limit: int | None = None, seed: int = 0
) -> DetectionSet:
    """Load split `split` of detection DATA `spec` (see the module docstring)."""
    from tvc.data.detection_layout import split_source

    if split not in _SPLIT_CODE:
        raise DataError(f"unknown split '{split}'", "use one of: train, val, test")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}", "e.g. --limit 200")
    text = spec.strip()
    if not text:
        raise DataError("--data is empty", f"pass '{BUILTIN}' or a COCO-format directory or file")
    head, _, rest = text.partition(":")
    if head.lower() in ALIASES:
        from tvc.data import fashion_mnist

        directory = Path(rest).expanduser() if rest else fashion_mnist.DEFAULT_DIR
        n = SPLIT_SIZES[split] if limit is None else limit
        return make_builtin(split, n, seed=seed, directory=directory)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(
            f"detection dataset '{spec}' not found",
            f"pass '{BUILTIN}', a COCO-format JSON file, or a directory holding one",
        )
    source = split_source(path, split)
    data = load_coco(
        source.json,
        split=split,
        roots=source.roots,
        base=source.base,
        part=source.part,
        name=path.name if path.is_dir() else None,
    )
    return data.subset(limit) if limit is not None else data


# ------------------------------------------------------------------------------- built-in set


def make_builtin(
    split: str, n: int, *, seed: int = 0, directory: Path | None = None
) -> DetectionSet:
    """`n` canvases of pasted Fashion-MNIST objects; deterministic in (seed, split, index)."""
    from tvc.data import fashion_mnist

    objects, labels = fashion_mnist.load_split(directory or fashion_mnist.DEFAULT_DIR, split)
    images, targets = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        canvas, boxes, classes = _scene(rng, objects, labels)
        images.append(np.repeat(canvas[:, :, None], 3, axis=2))
        targets.append(
            {
                "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray(classes, np.int64),
            }
        )
    return DetectionSet(BUILTIN, split, list(fashion_mnist.CLASS_NAMES), images, targets)


def _scene(rng: np.random.Generator, objects: np.ndarray, labels: np.ndarray):
    """One canvas with 1..MAX_OBJECTS garments; returns (canvas, xywh boxes, labels)."""
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    boxes: list[list[float]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        k = int(rng.integers(len(labels)))
        obj = _tight_crop(objects[k])
        scale = rng.uniform(*SCALE_RANGE)
        h = max(4, round(obj.shape[0] * scale))
        w = max(4, round(obj.shape[1] * scale))
        obj = _tight_crop(resize_bilinear(obj, h, w))
        h, w = obj.shape
        if h > CANVAS or w > CANVAS:
            continue
        for _attempt in range(20):
            y, x = int(rng.integers(0, CANVAS - h + 1)), int(rng.integers(0, CANVAS - w + 1))
            box = [float(x), float(y), float(w), float(h)]
            if all(_iou_xywh(box, b) <= MAX_IOU for b in boxes):
                region = canvas[y : y + h, x : x + w]
                np.maximum(region, obj, out=region)
                boxes.append(box)
                classes.append(int(labels[k]))
                break
    return canvas, boxes, classes


def _tight_crop(img: np.ndarray) -> np.ndarray:
    """`img` cut to the rows and columns that hold object pixels (an exact box)."""
    mask = img >= _OBJECT_THRESHOLD
    if not mask.any():
        return img
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    out = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
    out[out < _OBJECT_THRESHOLD] = 0  # faint fringe would sit outside the box
    return out


def _iou_xywh(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# ------------------------------------------------------------------------------ COCO format


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading and writing COCO images needs Pillow, which is not installed",
            "install it with: pip install pillow",
        ) from exc
    return Image


def write_images(
    data: DetectionSet, folder: Path, *, relative_to: Path, prefix: str = ""
) -> dict[str, Any]:
    """Save `data`'s images as PNGs in `folder`; its COCO dictionary with file names relative
    to `relative_to` (where its JSON file goes)."""
    image_mod = _pil()
    folder.mkdir(parents=True, exist_ok=True)
    coco = data.to_coco()
    for entry, img in zip(coco["images"], data.images, strict=True):
        file = folder / f"{prefix}{entry['file_name']}"
        image_mod.fromarray(img).save(file)
        entry["file_name"] = os.path.relpath(file, relative_to)
    return coco


def write_coco(data: DetectionSet, out: str | os.PathLike) -> Path:
    """Write `data` as COCO: OUT/images/<split>-<id>.png and OUT/<split>.json (the split in the
    image names, so that every split can be written into the same OUT). Returns the JSON path."""
    out = Path(out)
    coco = write_images(data, out / "images", relative_to=out, prefix=f"{data.split}-")
    return write_text_atomic(out / f"{data.split}.json", json.dumps(coco) + "\n")


def load_coco(
    path: str | os.PathLike,
    *,
    split: str = "test",
    roots: tuple[Path, ...] | None = None,
    base: Path | None = None,
    part: str | None = None,
    name: str | None = None,
) -> DetectionSet:
    """Read a COCO-format detection JSON and its images, looked up under `roots` (default: the
    JSON's directory and its images/) and never outside `base` (default: the JSON's directory).

    With `part`, the file holds every split and only the images of split `part` are read
    (tvc.data.detection_layout.select_images). Category ids map to labels 0..K-1 in id order;
    crowd annotations are left out.
    """
    from tvc.data.detection_layout import read_json, select_images, split_source

    image_mod = _pil()
    path = Path(path)
    if roots is None:
        source = split_source(path, split)
        roots, base = source.roots, source.base
    base = base or path.parent
    coco = read_json(path)
    if not isinstance(coco, dict):
        raise DataError(
            f"{path} is not a COCO JSON object", "pass COCO-format detection annotations"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path} has no '{key}' list", "pass COCO-format detection annotations")
    _require_fields(path, "categories", coco["categories"], ("id", "name"))
    _require_fields(path, "images", coco["images"], ("id", "file_name"))
    _require_fields(path, "annotations", coco["annotations"], ("image_id", "category_id", "bbox"))
    cats = sorted(coco["categories"], key=lambda c: (isinstance(c["id"], str), c["id"]))
    label_of = {c["id"]: i for i, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann["category_id"] not in label_of:
            raise DataError(
                f"{path}: annotation {ann.get('id')} has an unknown category_id "
                f"{ann['category_id']}",
                "list every category in 'categories'",
            )
        by_image.setdefault(ann["image_id"], []).append(ann)
    entries = coco["images"]
    images, targets, ids = [], [], []
    for entry in entries:
        file = _find_image(roots, base, entry["file_name"])
        try:
            with image_mod.open(file) as im:
                images.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
            raise DataError(
                f"image {file} listed in {path.name} is not a readable image ({first_line(exc)})",
                "replace the file or remove its entry from the annotations",
            ) from exc
        anns = by_image.get(entry["id"], [])
        height, width = images[-1].shape[:2]
        for a in anns:
            _check_box(path, a, width, height)
        targets.append(
            {
                "boxes": np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4),
                "labels": np.asarray([label_of[a["category_id"]] for a in anns], np.int64),
            }
        )
        ids.append(int(entry["id"]))
    if not images:
        raise DataError(f"{path} lists no images", "pass annotations with an 'images' list")
    if part is not None:  # after reading all: every image and box of the file is checked
        keep = select_images(path, part, entries)
        images, targets, ids = ([v[i] for i in keep] for v in (images, targets, ids))
    if name is None:
        name = path.stem if path.stem != "annotations" else path.parent.name
    return DetectionSet(
        name, split, [c["name"] for c in cats], images, targets, ids, [c["id"] for c in cats]
    )


def _require_fields(path: Path, key: str, entries: list, fields: tuple[str, ...]) -> None:
    for i, e in enumerate(entries):
        missing = [f for f in fields if not isinstance(e, dict) or f not in e]
        if missing:
            raise DataError(
                f"{path}: entry {i} of '{key}' lacks '{missing[0]}'",
                f"give every entry of '{key}' the fields {', '.join(fields)}",
            )


def _check_box(path: Path, ann: dict, width: int, height: int) -> None:
    """A COCO box [x, y, w, h] is four finite numbers, has a positive size and lies inside its
    image (half a pixel of rounding allowed): anything else would train on garbage."""
    box = ann["bbox"]
    ok = (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        and all(math.isfinite(v) for v in box)
    )
    where = f"{path}: annotation {ann.get('id')} of image {ann['image_id']}"
    if not ok:
        raise DataError(
            f"{where} has the bbox {box!r}, not four finite numbers [x, y, w, h]",
            "fix or remove that annotation",
        )
    x, y, w, h = box
    tol = 0.5
    if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise DataError(
            f"{where} has the bbox {box} outside its {width}x{height} image or of no size",
            "boxes are [x, y, width, height] in pixels inside the image: fix that annotation",
        )


def _find_image(roots: tuple[Path, ...], base: Path, name: str) -> Path:
    """The file an image entry's file_name names: tried under each root as given, then by its
    base name; it must lie inside `base` (no absolute paths, no '..', no links out)."""
    if (
        not isinstance(name, str)
        or not name
        or Path(name).is_absolute()
        or ".." in Path(name).parts
    ):
        raise DataError(
            f"image file_name {name!r} in the annotations points outside {base}",
            "file_name must be a path relative to the dataset's directory",
        )
    inside = base.resolve()
    for root in roots:
        for candidate in (root / name, root / Path(name).name):
            if candidate.is_file():
                if inside not in candidate.resolve().parents:
                    raise DataError(
                        f"image {name} in the annotations links outside {base}",
                        "keep the images themselves inside the dataset's directory",
                    )
                return candidate
    where = ", ".join(str(r) for r in dict.fromkeys(roots) if r.is_dir()) or str(base)
    raise DataError(
        f"image {name} listed in the annotations is in none of: {where}",
        "put the images beside their JSON file, in images/, or in the split's folder "
        "(README: COCO layouts)",
    )
