"""Lane data: the TuSimple label format, and tvc's built-in lane set rendered in code.

**TuSimple format** (JSON lines, one image per line):
`{"lanes": [[x, ...], ...], "h_samples": [y, ...], "raw_file": "clips/.../20.jpg"}`; each lane
lists one x per row of `h_samples` (pixels), -2 where the lane is absent. `raw_file` is relative
to the JSON file's directory. Users bring TuSimple itself or their own data labelled that way.

DATA specs:
- `lanes-synth`: the built-in set, rendered in memory (train 6000, val 500, test 500 images);
- `lanes-synth:/dir`: the same, written once to /dir in TuSimple format and read from there
  (only into a directory tvc wrote, marked by a `.tvc-lanes-synth` file, or into one without
  the split's files: a user's own labels there are never overwritten);
- a directory holding `<split>.json` (what `write_tusimple` writes), or TuSimple's own layout
  (`label_data_*.json` for train, `test_label.json` for test);
- a single `.json` JSON-lines file (used for whichever split is asked).

**The built-in set** (`lanes-synth`) is rendered by tvc/data/lanes_synth.py, which documents its
generator parameters.

numpy only (Pillow to read and write image files).
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

from tvc.errors import DataError, MissingDependencyError
from tvc.safe_io import storage_errors, write_text_atomic

BUILTIN = "lanes-synth"
ALIASES = (BUILTIN, "lane-synth", "lanes")
WIDTH, HEIGHT = 128, 72
H_SAMPLES = tuple(range(16, 72))
SPLIT_SIZES = {"train": 6000, "val": 500, "test": 500}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
SYNTH_MARK = ".tvc-lanes-synth"  # in a lanes-synth:DIR directory: tvc wrote it, may rewrite it
CURVE_PARAMS = ("lower", "upper", "k", "f", "m", "n", "b2", "b3")


@dataclass
class LaneSet:
    """Images (H, W, 3) uint8 with TuSimple labels: lanes[i] (L, S) pixel x or -2 at rows
    h_samples[i] (S,)."""

    name: str
    split: str
    images: list[np.ndarray]
    lanes: list[np.ndarray]
    h_samples: list[np.ndarray]
    raw_files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.raw_files:
            self.raw_files = [f"clips/{self.split}/{i:06d}.png" for i in range(len(self.images))]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_lanes(self) -> int:
        return int(sum(len(lanes) for lanes in self.lanes))

    def subset(self, n: int) -> LaneSet:
        return LaneSet(self.name, self.split, self.images[:n], self.lanes[:n],
                       self.h_samples[:n], self.raw_files[:n])  # fmt: skip

    def target(self, i: int) -> dict[str, np.ndarray]:
        """Image i's lanes normalised (x / W, y / H): "xs", "ys" (L, S), "valid" (L, S) bool,
        and per lane "lower" / "upper" (its first and last labelled row)."""
        h, w = self.images[i].shape[:2]
        lanes = np.asarray(self.lanes[i], np.float32).reshape(-1, len(self.h_samples[i]))
        ys = np.broadcast_to(np.asarray(self.h_samples[i], np.float32) / h, lanes.shape)
        valid = lanes >= 0
        keep = valid.sum(1) >= 2
        lanes, ys, valid = lanes[keep], ys[keep], valid[keep]
        big = np.where(valid, ys, np.inf).min(1) if len(lanes) else np.zeros(0)
        small = np.where(valid, ys, -np.inf).max(1) if len(lanes) else np.zeros(0)
        return {
            "xs": (lanes / w).astype(np.float32),
            "ys": np.ascontiguousarray(ys, np.float32),
            "valid": valid,
            "lower": big.astype(np.float32),
            "upper": small.astype(np.float32),
        }

    def batches(
        self,
        batch_size: int,
        *,
        input_size,
        mean,
        std,
        shuffle_seed: int | None = None,
        augment: bool = False,
    ) -> Iterator[tuple[np.ndarray, list[dict], list[int]]]:
        """(x float32 NCHW, normalised targets, positions) per batch; images are stretched to
        the model input (normalised labels do not change). `augment` flips half the images
        left-right (labels too)."""
        from tvc.data.detection import preprocess

        order = np.arange(len(self))
        rng = None
        if shuffle_seed is not None:
            rng = np.random.default_rng(shuffle_seed)
            order = rng.permutation(len(self))
        for start in range(0, len(order), batch_size):
            pos = [int(i) for i in order[start : start + batch_size]]
            xs, targets = [], []
            for i in pos:
                img, tgt = self.images[i], self.target(i)
                if augment and rng is not None and rng.random() < 0.5:
                    img = img[:, ::-1]
                    w = img.shape[1]
                    tgt = {**tgt, "xs": np.where(tgt["valid"], (w - 1) / w - tgt["xs"], tgt["xs"])}
                xs.append(preprocess(img, input_size, mean, std))
                targets.append(tgt)
            yield np.stack(xs), targets, pos


# ------------------------------------------------------------------------- the curve model


def curve_x(params, y):
    """x at normalised rows `y` of curves `params` (..., 8); works on numpy and torch.

    `params` (..., 8) broadcasts against `y` (..., S) via a trailing axis."""
    k, f, m, n, b2, b3 = (params[..., i : i + 1] for i in range(2, 8))
    d = y - f
    return k / (d * d) + m / d + n + b2 * y - b3


def curve_points(params: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel x (TuSimple style, -2 where the lane is absent) of curves `params` (L, 8) at
    pixel rows `ys` (S,) of a width x height image: (L, S)."""
    params = np.asarray(params, np.float64).reshape(-1, 8)
    yn = np.asarray(ys, np.float64)[None, :] / height
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = curve_x(params, yn) * width
    inside = (yn >= params[:, :1]) & (yn <= params[:, 1:2]) & np.isfinite(x)
    inside &= (x >= 0) & (x <= width - 1)
    return np.where(inside, x, -2.0)


def _fit_given_f(ys: list[np.ndarray], xs: list[np.ndarray], f: float):
    """Least squares of the model with the horizon fixed: shared k, m; per lane c = n - b3, b2."""
    n_lanes = len(ys)
    rows, rhs = [], []
    for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
        d = y - f
        a = np.zeros((len(y), 2 + 2 * n_lanes))
        a[:, 0], a[:, 1] = 1 / (d * d), 1 / d
        a[:, 2 + 2 * i], a[:, 3 + 2 * i] = 1.0, y
        rows.append(a)
        rhs.append(x)
    a, b = np.concatenate(rows), np.concatenate(rhs)
    scale = np.abs(a).max(0)
    scale[scale == 0] = 1
    sol, *_ = np.linalg.lstsq(a / scale, b, rcond=None)
    sol = sol / scale
    err = float(np.mean((a @ sol - b) ** 2))
    return sol, err


def fit_curves(ys: list[np.ndarray], xs: list[np.ndarray], *, f_range=(-1.0, 0.0),
               steps: int = 60) -> tuple[np.ndarray, float]:  # fmt: skip
    """Fit the shared curve model to lanes given as normalised points (ys[i], xs[i]).

    Returns (params (L, 8), RMS error in normalised x). With f fixed the model is linear in
    (k, m) and per lane (n - b3, b2), so f is found by a grid search refined by golden section
    and the rest by linear least squares. n and b3 enter only as n - b3: the fit sets n = 0.
    lower / upper are the lanes' first and last rows.
    """
    ys = [np.asarray(y, np.float64) for y in ys]
    xs = [np.asarray(x, np.float64) for x in xs]
    if not ys or any(len(y) < 3 for y in ys):
        raise ValueError("every lane needs at least 3 points to fit")
    top = min(float(y.min()) for y in ys)
    hi = min(f_range[1], top - 1e-3)
    grid = np.linspace(f_range[0], hi, steps)
    errs = [_fit_given_f(ys, xs, f)[1] for f in grid]
    i = int(np.argmin(errs))
    lo_f, hi_f = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi_f - g * (hi_f - lo_f), lo_f + g * (hi_f - lo_f)
        if _fit_given_f(ys, xs, a)[1] < _fit_given_f(ys, xs, b)[1]:
            hi_f = b
        else:
            lo_f = a
    f = (lo_f + hi_f) / 2
    sol, err = _fit_given_f(ys, xs, f)
    params = np.zeros((len(ys), 8))
    for i, y in enumerate(ys):
        params[i] = [y.min(), y.max(), sol[0], f, sol[1], 0.0, sol[3 + 2 * i], -sol[2 + 2 * i]]
    return params, math.sqrt(err)


# ------------------------------------------------------------------------------ TuSimple I/O


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError(
            "reading and writing lane images needs Pillow, which is not installed",
            "install it with: pip install pillow",
        ) from exc
    return Image


def tusimple_lines(data: LaneSet) -> list[dict[str, Any]]:
    """The labels as TuSimple JSON records (integer pixels, -2 for absent)."""
    out = []
    for lanes, hs, raw in zip(data.lanes, data.h_samples, data.raw_files, strict=True):
        lanes = np.asarray(lanes, np.float64).reshape(-1, len(hs))
        out.append({
            "lanes": [[round(x) if x >= 0 else -2 for x in lane] for lane in lanes],
            "h_samples": [int(y) for y in hs],
            "raw_file": raw,
        })  # fmt: skip
    return out


def write_tusimple(data: LaneSet, out: str | os.PathLike) -> Path:
    """Write `data` as OUT/<split>.json (JSON lines) and its images under OUT/clips/. Returns
    the JSON path. x are rounded to whole pixels, as TuSimple's labels are."""
    image_mod = _pil()
    out = Path(out)
    for img, raw in zip(data.images, data.raw_files, strict=True):
        file = out / raw
        file.parent.mkdir(parents=True, exist_ok=True)
        image_mod.fromarray(img).save(file)
    return write_text_atomic(
        out / f"{data.split}.json", "".join(json.dumps(r) + "\n" for r in tusimple_lines(data))
    )


def read_tusimple(paths: list[Path] | Path, *, split: str = "test", name: str | None = None,
                  limit: int | None = None) -> LaneSet:  # fmt: skip
    """Read TuSimple JSON-lines label files and their images (raw_file relative to each file)."""
    image_mod = _pil()
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    images, lanes, hs, raws = [], [], [], []
    for path in paths:
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc})", "check the file") from exc
        for no, line in enumerate(lines, 1):
            if limit is not None and len(images) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                h = np.asarray(rec["h_samples"], np.float64)
                lane = np.asarray(rec["lanes"], np.float64).reshape(-1, len(h))
                raw = str(rec["raw_file"])
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise DataError(
                    f"{path}:{no} is not a TuSimple label line ({type(exc).__name__}: {exc})",
                    'each line needs "lanes", "h_samples" and "raw_file"',
                ) from exc
            if not (np.isfinite(h).all() and np.isfinite(lane).all()):
                raise DataError(
                    f"{path}:{no}: its lanes or h_samples hold NaN or Infinity",
                    "label every point with a pixel coordinate, or -2 where the lane is absent",
                )
            file = path.parent / raw
            if not file.is_file():
                raise DataError(
                    f"{path}:{no}: image {raw} not found under {path.parent}",
                    "raw_file is read relative to the label file's directory",
                )
            try:
                with image_mod.open(file) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except OSError as exc:  # PIL's UnidentifiedImageError is one
                raise DataError(
                    f"{path}:{no}: cannot read image {raw} ({exc})",
                    "the file is damaged or not an image; replace it or drop its label line",
                ) from exc
            lanes.append(np.where(lane >= 0, lane, -2.0))
            hs.append(h)
            raws.append(raw)
    if not images:
        raise DataError(f"{', '.join(map(str, paths))} hold no labelled images",
                        "pass TuSimple JSON-lines label files")  # fmt: skip
    return LaneSet(name or paths[0].stem, split, images, lanes, hs, raws)


# ---------------------------------------------------------------------------------- specs


def is_lanes_spec(spec: str) -> bool:
    """True when `spec` names lane data: the built-in set, a TuSimple directory or JSON-lines
    file (a .json whose first line has "lanes" and "h_samples")."""
    text = spec.strip()
    if text.lower().split(":", 1)[0] in ALIASES:
        return True
    path = Path(text).expanduser()
    if path.is_dir():
        return any(_is_tusimple_file(p) for p in _label_files(path, None))
    return path.suffix.lower() in (".json", ".jsonl") and _is_tusimple_file(path)


def misnamed_label_files(spec: str) -> list[str]:
    """JSON-lines TuSimple label files in directory `spec` under names no split is read from
    (tvc reads <split>.json, label_data_*.json and test_label.json); [] otherwise."""
    path = Path(spec.strip()).expanduser()
    if not path.is_dir() or _label_files(path, None):
        return []
    return sorted(p.name for p in path.glob("*.json*")
                  if p.suffix in (".json", ".jsonl") and _is_tusimple_file(p))  # fmt: skip


def _is_tusimple_file(path: Path) -> bool:
    try:
        with path.open() as fh:
            first = fh.readline()
        rec = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and "lanes" in rec and "h_samples" in rec


def _label_files(directory: Path, split: str | None) -> list[Path]:
    """The label files of `split` (all candidates when None) in a TuSimple directory."""
    splits = [split] if split else list(_SPLIT_CODE)
    found: list[Path] = []
    for s in splits:
        for name in (f"{s}.json", f"{s}.jsonl"):
            if (directory / name).is_file():
                found.append(directory / name)
        if not found and s == "train":
            found += sorted(directory.glob("label_data_*.json"))
        if not found and s == "test" and (directory / "test_label.json").is_file():
            found.append(directory / "test_label.json")
    return found


def _check_synth_directory(directory: Path, split: str) -> None:
    """Refuse to render the built-in set into `directory` where that would overwrite files tvc
    did not write there (a user's own TuSimple labels or images under the same names)."""
    if directory.exists() and not directory.is_dir():
        raise DataError(
            f"{BUILTIN}:{directory} is not a directory",
            f"name a directory for {BUILTIN}:DIR to write the built-in set to",
        )
    if (directory / SYNTH_MARK).is_file():
        return
    clashes = [p for p in (directory / f"{split}.json", directory / "clips" / split) if p.exists()]
    if clashes:
        raise DataError(
            f"{directory} already holds {clashes[0].relative_to(directory)}, which tvc did not "
            f"write; {BUILTIN}:DIR would overwrite it with the built-in set",
            f"pass --data {directory} to read it as your own lane data, or name an empty "
            f"directory for {BUILTIN}:DIR",
        )


def load_lanes(spec: str, split: str = "test", *, limit: int | None = None,
               seed: int = 0) -> LaneSet:  # fmt: skip
    """Split `split` of lane DATA `spec` (see the module docstring)."""
    if split not in _SPLIT_CODE:
        raise DataError(f"unknown split '{split}'", "use one of: train, val, test")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}", "e.g. --limit 200")
    text = spec.strip()
    head, _, rest = text.partition(":")
    if head.lower() in ALIASES:
        n = SPLIT_SIZES[split] if limit is None else limit
        if not rest:
            from tvc.data.lanes_synth import make_synthetic

            return make_synthetic(split, n, seed=seed)
        directory = Path(rest).expanduser()
        path = directory / f"{split}.json"
        _check_synth_directory(directory, split)
        if path.is_file():
            have = sum(1 for line in path.read_text().splitlines() if line.strip())
            if have >= n:
                return read_tusimple(path, split=split, name=BUILTIN, limit=n)
        from tvc.data.lanes_synth import make_synthetic

        with storage_errors(directory):
            directory.mkdir(parents=True, exist_ok=True)
            # the mark goes first: a run cut off while writing leaves a directory tvc may rewrite
            mark = json.dumps({"written_by": "tvc", "data": BUILTIN}) + "\n"
            write_text_atomic(directory / SYNTH_MARK, mark)
            write_tusimple(make_synthetic(split, n, seed=seed), directory)
        return read_tusimple(path, split=split, name=BUILTIN, limit=n)
    path = Path(text).expanduser()
    if path.is_dir():
        files = _label_files(path, split)
        if not files:
            raise DataError(
                f"{path} holds no {split}.json (nor TuSimple's label_data_*.json / "
                "test_label.json)",
                f"pass '{BUILTIN}', a TuSimple JSON-lines file, or a directory holding one",
            )
        return read_tusimple(files, split=split, name=path.name, limit=limit)
    if not path.is_file():
        raise DataError(f"lane dataset '{spec}' not found",
                        f"pass '{BUILTIN}', a TuSimple JSON-lines file or a directory")  # fmt: skip
    return read_tusimple(path, split=split, limit=limit)
