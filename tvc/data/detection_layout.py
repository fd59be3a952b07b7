"""Where a COCO-format detection dataset keeps each split: the directory layouts tvc reads.

    per-split files    DIR/train.json, DIR/val.json, DIR/test.json; images beside them, in
                       DIR/images/ or in a folder named after the split (what `write_coco` writes)
    per-split folders  DIR/train/, DIR/valid/ (or val/), DIR/test/, each holding one JSON file and
                       its images (Roboflow's COCO export: train/_annotations.coco.json)
    COCO's own         DIR/annotations/instances_train2017.json + DIR/train2017/ (any year, or none:
                       instances_train.json + train/)
    one file           DIR/annotations.json, DIR's only JSON file, DIR/annotations/'s only JSON file
                       (CVAT's instances_default.json), or a JSON file given as DATA: the images
                       are divided among the splits, by the images' own "split" field when every
                       image has one, else by a seeded 80/10/10 split; either way it is announced.

A split that is missing from a per-split layout is never invented: a missing test split is
stood in for by val (and val by test), announced; a missing train split is an error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvc.errors import DataError

log = logging.getLogger("tvc")

SPLITS = ("train", "val", "test")
_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
_SPLIT_OF = {alias: split for split, names in _ALIASES.items() for alias in names}
# train.json, instances_val2017.json, val2017, annotations_test.json, valid
_SPLIT_NAME = re.compile(r"^(?:instances_|annotations_)?([a-z]+?)(?:[_-]?\d{4})?$")
STAND_IN = {"test": "val", "val": "test"}
SEEDED_SHARES = (0.8, 0.1, 0.1)  # train, val, test of one annotations file
SPLIT_SEED = 0
_announced: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class SplitSource:
    """One split: the JSON to read, where its images are looked for, and which of its images
    belong to the split (`part` None: all of them; else the split named in `part` of a file
    that holds every split)."""

    json: Path
    roots: tuple[Path, ...]
    base: Path  # images must resolve inside it
    layout: str
    part: str | None = None


def split_of(name: str) -> str | None:
    """'train', 'val' or 'test' for a file or folder name that names a split, else None."""
    stem = name.lower()
    for suffix in (".json", ".coco"):
        stem = stem.removesuffix(suffix)
    m = _SPLIT_NAME.match(stem)
    return _SPLIT_OF.get(m.group(1)) if m else None


def _jsons(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.json") if p.is_file())


def _split_dirs(directory: Path, split: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and split_of(p.name) == split)


def per_split_sources(directory: Path) -> dict[str, SplitSource]:
    """The splits a per-split layout of `directory` holds (empty: not such a layout)."""
    found: dict[str, SplitSource] = {}
    images = directory / "images"
    # per-split files at the top (tvc's own write_coco)
    for path in _jsons(directory):
        split = split_of(path.name)
        if split and split not in found:
            roots = (directory, images, *_split_dirs(directory, split))
            found[split] = SplitSource(path, roots, directory, "per-split JSON files")
    # COCO's own: annotations/instances_<split><year>.json + <split><year>/
    ann = directory / "annotations"
    if ann.is_dir():
        for path in _jsons(ann):
            split = split_of(path.name)
            if split and split not in found:
                folders = _split_dirs(directory, split) + (
                    _split_dirs(images, split) if images.is_dir() else []
                )
                roots = (*folders, images, directory)
                found[split] = SplitSource(path, roots, directory, "annotations/instances_*.json")
    # per-split folders, each with its own JSON file (Roboflow)
    for split in SPLITS:
        if split in found:
            continue
        for folder in _split_dirs(directory, split):
            files = _jsons(folder)
            if len(files) > 1:
                raise DataError(
                    f"{folder} holds {len(files)} JSON files ({', '.join(f.name for f in files)})",
                    "keep one COCO annotations file per split folder",
                )
            if files:
                found[split] = SplitSource(
                    files[0], (folder, folder / "images"), directory, "per-split folders"
                )
                break
    return found


def single_file(directory: Path) -> Path | None:
    """The one annotations file of a directory that holds no per-split layout."""
    if (directory / "annotations.json").is_file():
        return directory / "annotations.json"
    for where in (directory, directory / "annotations"):
        files = _jsons(where) if where.is_dir() else []
        if len(files) == 1:
            return files[0]
    return None


def is_coco_directory(directory: Path) -> bool:
    """True when `directory` holds detection annotations in one of the layouts above."""
    try:
        return bool(per_split_sources(directory)) or single_file(directory) is not None
    except (OSError, DataError):
        return True  # it is meant as one; loading explains what is wrong


def split_source(path: Path, split: str) -> SplitSource:
    """Where split `split` of DATA `path` (a directory or a JSON file) comes from."""
    if path.is_file():
        return SplitSource(path, (path.parent, path.parent / "images"), path.parent,
                           "one annotations file", part=split)  # fmt: skip
    found = per_split_sources(path)
    if found:
        if split in found:
            return found[split]
        other = STAND_IN.get(split)
        if other in found:
            _announce(path, split, f"{path} has no {split} split; its {other} split stands in")
            return found[other]
        raise DataError(
            f"{path} has no {split} split (found {', '.join(sorted(found))})",
            f"add {split} annotations in the same layout (see 'COCO layouts' in the README)",
        )
    one = single_file(path)
    if one is None:
        raise DataError(
            f"{path} holds no COCO annotations in a layout tvc reads",
            "use train.json/val.json/test.json, train/ val/ test/ folders with one JSON each, "
            "annotations/instances_<split>.json, or one annotations.json (README: COCO layouts)",
        )
    base = path
    return SplitSource(one, (one.parent, one.parent / "images", path, path / "images"), base,
                       "one annotations file", part=split)  # fmt: skip


def select_images(path: Path, split: str, images: list[dict]) -> list[int]:
    """Positions of the images of split `split` in `path`, a file holding every split: by the
    images' "split" field when all carry one, else a seeded 80/10/10 split. Announced."""
    marked = [e.get("split") for e in images if isinstance(e, dict)]
    if any(m is not None for m in marked):
        named = [_SPLIT_OF.get(str(m).lower()) if m is not None else None for m in marked]
        if None in named:
            bad = next(m for m, n in zip(marked, named, strict=True) if n is None)
            raise DataError(
                f"{path}: an image has the split {bad!r}; every image needs one of "
                "train, val, test",
                "give every image a 'split' field, or none (then tvc splits 80/10/10, seeded)",
            )
        picked = [i for i, n in enumerate(named) if n == split]
        counts = {s: named.count(s) for s in SPLITS}
        how = "by the images' 'split' field"
    else:
        n = len(images)
        if n < 3:
            raise DataError(
                f"{path} holds {n} image(s), too few to split into train, val and test",
                "add images, or pass separate train/val/test annotation files",
            )
        n_val = max(1, round(SEEDED_SHARES[1] * n))
        n_test = max(1, round(SEEDED_SHARES[2] * n))
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        parts = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        picked = sorted(int(i) for i in parts[split])
        counts = {s: len(parts[s]) for s in SPLITS}
        shares = "/".join(str(round(100 * s)) for s in SEEDED_SHARES)
        how = f"seeded {shares} split (seed {SPLIT_SEED})"
    sizes = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
    _announce(path, "split", f"{path} holds every split: {how}: {sizes} images")
    if not picked:
        raise DataError(
            f"{path} has no {split} images ({sizes})",
            f'mark some images with "split": "{split}"',
        )
    return picked


def _announce(path: Path, key: str, text: str) -> None:
    """Say once per process how a dataset's splits were found (train, eval and export each
    load several splits)."""
    token = (str(path), key)
    if token not in _announced:
        _announced.add(token)
        log.info("%s", text)


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read COCO annotations {path} ({exc})", "check the file") from exc


LAYOUTS = ("files", "folders", "coco", "single")


def write_layout(splits: dict, out: Path, layout: str) -> Path:
    """Write DetectionSets (split -> set) as a COCO dataset in `layout`: "files" (train.json +
    images/), "folders" (train/_annotations.coco.json + its images, val as valid/), "coco"
    (annotations/instances_train2017.json + train2017/) or "single" (one annotations.json,
    each image marked with its "split"). For tests, benchmarks and converting the built-in set."""
    from tvc.data.detection import write_images

    out = Path(out)
    single: dict = {"images": [], "annotations": [], "categories": []}
    for split, data in splits.items():
        if layout == "files":
            folder, ann = out / "images", out / f"{split}.json"
        elif layout == "folders":
            folder = out / ("valid" if split == "val" else split)
            ann = folder / "_annotations.coco.json"
        elif layout == "coco":
            folder, ann = out / f"{split}2017", out / "annotations" / f"instances_{split}2017.json"
        elif layout == "single":
            folder, ann = out / "images", out / "annotations.json"
        else:
            raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
        prefix = f"{split}-" if layout in ("files", "single") else ""
        # COCO's own file names are bare (000001.jpg), found in the split's image folder
        rel = folder if layout == "coco" else ann.parent
        coco = write_images(data, folder, relative_to=rel, prefix=prefix)
        if layout != "single":
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(json.dumps(coco) + "\n")
            continue
        offset = len(single["images"])
        for entry in coco["images"]:
            entry.update(id=entry["id"] + offset, split=split)
        for a in coco["annotations"]:
            a.update(id=len(single["annotations"]) + 1, image_id=a["image_id"] + offset)
            single["annotations"].append(a)
        single["images"] += coco["images"]
        single["categories"] = coco["categories"]
    if layout == "single":
        (out / "annotations.json").write_text(json.dumps(single) + "\n")
    return out
