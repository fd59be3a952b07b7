"""Lane data: the TuSimple label format, and tvc's built-in lane set rendered in code.

**TuSimple format** (JSON lines, one image per line):
`{"lanes": [[x, ...], ...], "h_samples": [y, ...], "raw_file": "clips/.../20.jpg"}`; each lane
lists one x per row of `h_samples` (pixels), -2 where the lane is absent. `raw_file` is relative
to the JSON file's directory. Users bring TuSimple itself or their own data labelled that way.

DATA specs:
- `lanes-synth`: the built-in set, rendered in memory (train 6000, val 500, test 500 images);
- `lanes-synth:/dir`: the same, written once to /dir in TuSimple format and read from there;
- a directory holding `<split>.json` (what `write_tusimple` writes), or TuSimple's own layout
  (`label_data_*.json` for train, `test_label.json` for test);
- a single `.json` JSON-lines file (used for whichever split is asked).

**The built-in set** (`lanes-synth`) is road scenes rendered in perspective, 128x72 (TuSimple's
1280x720 at a tenth: rows `h_samples` 16..71 are TuSimple's 160..710), deterministic in
(seed, split, index). Generator parameters (SYNTH; every draw uniform unless said):

- camera: height 1.2-1.8 m, pitch 1-4 deg down, focal 100-125 px (about 55-65 deg across),
  principal point at the image centre;
- road: lanes 3.0-4.0 m wide; 2-4 markings (lane lines), the ego lane's two always among them;
  each lane line X(Z) = k Z^3 + m Z^2 + n Z + b on the ground (Z forward, m), sharing k, m, n.
  Scene kinds: straight (45%: |m| < 2e-4, no cubic), curve (35%: |m| up to 2.5e-3,
  |k| up to 2e-5) and lane change (20%: heading |n| 0.03-0.08 and the ego off-centre, so a line
  runs under the camera); lines visible to 35-90 m;
- markings: solid or dashed (3 m dash in a 9-12 m period, random phase), 0.10-0.20 m wide,
  white or (left line, 30%) yellow, 75-100% bright;
- lighting: global gain 0.55-1.3, road grey 70-130, sky gradient; 0-2 shadows (dark
  ground-plane rectangles, 35-70% light), 0-3 occluding vehicles (boxes 1.7-2.0 m wide, 1.3-1.9 m
  tall, in the lanes, 8-60 m ahead, drawn far to near);
- texture: road noise at two scales, per-pixel noise (sigma 2-8 grey levels) and a Gaussian blur
  (sigma 0-0.9 px).

Labels follow the rendering exactly: x of each line's centre at every h_sample row, -2 above the
visible end, beyond the image side, or above the horizon; a line with fewer than 6 labelled rows
is neither drawn nor labelled. Occluded markings stay labelled (as TuSimple's annotators do).
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

BUILTIN = "lanes-synth"
ALIASES = (BUILTIN, "lane-synth", "lanes")
WIDTH, HEIGHT = 128, 72
H_SAMPLES = tuple(range(16, 72))
SPLIT_SIZES = {"train": 6000, "val": 500, "test": 500}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
MIN_POINTS = 6
SUPERSAMPLE = 2
CURVE_PARAMS = ("lower", "upper", "k", "f", "m", "n", "b2", "b3")

SYNTH: dict[str, Any] = {
    "camera_height": (1.2, 1.8),
    "pitch_deg": (1.0, 4.0),
    "focal_px": (100.0, 125.0),
    "lane_width": (3.0, 4.0),
    "lines": (2, 4),
    "kinds": {"straight": 0.45, "curve": 0.35, "lane_change": 0.20},
    "visible_to": (35.0, 90.0),
    "dash": 3.0,
    "dash_period": (9.0, 12.0),
    "marking_width": (0.10, 0.20),
    "gain": (0.55, 1.3),
    "road_grey": (70, 130),
    "shadows": (0, 2),
    "vehicles": (0, 3),
    "noise_sigma": (2.0, 8.0),
    "blur_sigma": (0.0, 0.9),
}


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
    path = out / f"{data.split}.json"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in tusimple_lines(data)))
    os.replace(tmp, path)
    return path


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
            file = path.parent / raw
            if not file.is_file():
                raise DataError(
                    f"{path}:{no}: image {raw} not found under {path.parent}",
                    "raw_file is read relative to the label file's directory",
                )
            with image_mod.open(file) as im:
                images.append(np.asarray(im.convert("RGB")))
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
            return make_synthetic(split, n, seed=seed)
        directory = Path(rest).expanduser()
        path = directory / f"{split}.json"
        if path.is_file():
            have = sum(1 for line in path.read_text().splitlines() if line.strip())
            if have >= n:
                return read_tusimple(path, split=split, name=BUILTIN, limit=n)
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


# ---------------------------------------------------------------------------- the renderer


def make_synthetic(split: str, n: int, *, seed: int = 0, width: int = WIDTH,
                   height: int = HEIGHT) -> LaneSet:  # fmt: skip
    """`n` rendered road scenes; deterministic in (seed, split, index)."""
    if split not in _SPLIT_CODE:
        raise DataError(f"unknown split '{split}'", "use one of: train, val, test")
    images, lanes, hs = [], [], []
    rows = np.asarray([round(y * height / HEIGHT) for y in H_SAMPLES], np.float64)
    rows = np.unique(np.clip(rows, 0, height - 1))
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        img, lab = render_scene(rng, width, height, rows)
        images.append(img)
        lanes.append(lab)
        hs.append(rows.copy())
    return LaneSet(BUILTIN, split, images, lanes, hs)


def _u(rng, lo_hi):
    return float(rng.uniform(*lo_hi))


def _scene_params(rng: np.random.Generator) -> dict[str, Any]:
    s = SYNTH
    kinds = list(s["kinds"])
    kind = kinds[int(rng.choice(len(kinds), p=list(s["kinds"].values())))]
    lane_w = _u(rng, s["lane_width"])
    if kind == "straight":
        k, m, n = 0.0, rng.uniform(-2e-4, 2e-4), rng.uniform(-0.02, 0.02)
        off = rng.uniform(-0.25, 0.25) * lane_w
    elif kind == "curve":
        k, m = rng.uniform(-2e-5, 2e-5), rng.uniform(-2.5e-3, 2.5e-3)
        n, off = rng.uniform(-0.03, 0.03), rng.uniform(-0.25, 0.25) * lane_w
    else:
        k, m = rng.uniform(-5e-6, 5e-6), rng.uniform(-5e-4, 5e-4)
        n = rng.choice([-1, 1]) * rng.uniform(0.03, 0.08)
        off = -np.sign(n) * rng.uniform(0.2, 0.5) * lane_w
    n_lines = int(rng.integers(s["lines"][0], s["lines"][1] + 1))
    first = -int(rng.integers(0, n_lines - 1)) if n_lines > 2 else 0  # ego lane = lines 0 and 1
    lines = []
    for j in range(first, first + n_lines):
        dashed = bool(rng.random() < (0.3 if j in (0, 1) else 0.6))
        lines.append({
            "b": (j - 0.5) * lane_w + off,
            "dashed": dashed,
            "period": _u(rng, s["dash_period"]),
            "phase": float(rng.uniform(0, 12)),
            "width": _u(rng, s["marking_width"]),
            "yellow": bool(j == first and rng.random() < 0.3),
            "bright": float(rng.uniform(0.75, 1.0)),
        })  # fmt: skip
    return {"kind": kind, "k": k, "m": m, "n": n, "lane_w": lane_w, "lines": lines,
            "z_max": _u(rng, s["visible_to"])}  # fmt: skip


class _Camera:
    def __init__(self, rng, width: int, height: int) -> None:
        self.h = _u(rng, SYNTH["camera_height"])
        self.pitch = math.radians(_u(rng, SYNTH["pitch_deg"]))
        self.f = _u(rng, SYNTH["focal_px"])
        self.cx, self.cy = (width - 1) / 2, (height - 1) / 2

    def ground_z(self, v):
        """Forward distance Z of the ground seen at (pixel-index) row v; NaN above the horizon."""
        t = (np.asarray(v, np.float64) - self.cy) / self.f
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        den = t * c + s
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.h * (c - t * s) / den
        return np.where(den > 1e-6, z, np.nan)

    def depth(self, z):
        return self.h * math.sin(self.pitch) + z * math.cos(self.pitch)

    def row(self, z):
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        return self.cy + self.f * (self.h * c - z * s) / self.depth(z)

    def row_of_height(self, z, y_up):
        """Row of a point y_up metres above the ground at distance z."""
        c, s = math.cos(self.pitch), math.sin(self.pitch)
        yc = (self.h - y_up) * c - z * s
        zc = (self.h - y_up) * s + z * c
        return self.cy + self.f * yc / zc

    def col(self, x, z):
        return self.cx + self.f * x / self.depth(z)


def render_scene(rng: np.random.Generator, width: int, height: int,
                 rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One scene: (image (H, W, 3) uint8, lanes (L, len(rows)) pixel x or -2)."""
    cam = _Camera(rng, width, height)
    sp = _scene_params(rng)

    def line_x(line, z):
        return sp["k"] * z**3 + sp["m"] * z**2 + sp["n"] * z + line["b"]

    # labels first: they decide which lines are drawn
    z_rows = cam.ground_z(rows)
    labels, drawn = [], []
    for line in sp["lines"]:
        with np.errstate(invalid="ignore"):
            u = cam.col(line_x(line, z_rows), z_rows)
            ok = np.isfinite(u) & (z_rows <= sp["z_max"]) & (u >= 0) & (u <= width - 1)
        ok = _longest_run(ok)
        if ok.sum() >= MIN_POINTS:
            labels.append(np.where(ok, u, -2.0))
            drawn.append(line)
    # supersampled pixel centres (pixel-index coordinates)
    ss = SUPERSAMPLE
    offs = (np.arange(ss) + 0.5) / ss - 0.5
    vv = (np.arange(height)[:, None] + offs[None, :]).reshape(-1)
    uu = (np.arange(width)[:, None] + offs[None, :]).reshape(-1)
    z = cam.ground_z(vv)[:, None]  # (H*ss, 1)
    ground = np.isfinite(z) & (z > 0)
    zf = np.where(ground, z, 1.0)
    gx = (uu[None, :] - cam.cx) * cam.depth(zf) / cam.f  # lateral metres, (H*ss, W*ss)
    gain = _u(rng, SYNTH["gain"])
    grey = _u(rng, SYNTH["road_grey"])
    # road texture: coarse blotches in the ground plane + fine noise
    tex = _ground_noise(rng, gx, zf) * rng.uniform(4, 14)
    road = np.full(gx.shape, grey) + tex
    shoulder = np.abs(gx - (sp["m"] * zf**2 + sp["n"] * zf)) > (
        max(abs(ln["b"]) for ln in sp["lines"]) + rng.uniform(1.0, 3.0)
    )
    road_rgb = np.repeat(road[..., None], 3, -1)
    grass = np.stack([road * 0.55, road * 0.75, road * 0.45], -1)
    img = np.where(shoulder[..., None], grass, road_rgb)
    for line in drawn:
        lx = sp["k"] * zf**3 + sp["m"] * zf**2 + sp["n"] * zf + line["b"]
        mark = np.abs(gx - lx) < line["width"] / 2
        mark &= zf <= sp["z_max"]
        if line["dashed"]:
            mark &= ((zf + line["phase"]) % line["period"]) < SYNTH["dash"]
        colour = np.array([235, 200, 60] if line["yellow"] else [240, 240, 240]) * line["bright"]
        img = np.where(mark[..., None], colour, img)
    # fade far markings and road into haze near the horizon
    haze = np.clip((zf - 40) / 120, 0, 0.7)[..., None]
    img = img * (1 - haze) + 150 * haze
    # shadows: dark rectangles on the ground
    for _ in range(int(rng.integers(SYNTH["shadows"][0], SYNTH["shadows"][1] + 1))):
        z0 = rng.uniform(4, 40)
        z1 = z0 + rng.uniform(2, 15)
        x0 = rng.uniform(-12, 8)
        x1 = x0 + rng.uniform(2, 12)
        sh = (zf >= z0) & (zf <= z1) & (gx >= x0) & (gx <= x1)
        img = np.where(sh[..., None], img * rng.uniform(0.35, 0.7), img)
    sky_top = rng.uniform(120, 230)
    sky = np.linspace(sky_top, sky_top * 0.8 + 40, len(vv))[:, None, None]
    sky = np.broadcast_to(sky * np.array([0.8, 0.9, 1.0]), img.shape)
    img = np.where(ground[..., None], img, sky)
    # vehicles: boxes standing in the lanes, far to near
    n_veh = int(rng.integers(SYNTH["vehicles"][0], SYNTH["vehicles"][1] + 1))
    cars = sorted(((rng.uniform(8, 60), int(rng.integers(-1, 2))) for _ in range(n_veh)),
                  reverse=True)  # fmt: skip
    for zc, lane in cars:
        centre = sp["k"] * zc**3 + sp["m"] * zc**2 + sp["n"] * zc + lane * sp["lane_w"]
        half = rng.uniform(1.7, 2.0) / 2
        top = cam.row_of_height(zc, rng.uniform(1.3, 1.9))
        bottom = cam.row(zc)
        left, right = cam.col(centre - half, zc), cam.col(centre + half, zc)
        box = (vv[:, None] >= top) & (vv[:, None] <= bottom) & (uu[None, :] >= left)
        box &= uu[None, :] <= right
        body = np.array(rng.uniform(20, 200, 3))
        img = np.where(box[..., None], body, img)
    img = img * gain
    # down-sample (anti-aliasing), noise, blur
    img = img.reshape(height, ss, width, ss, 3).mean((1, 3))
    img = img + rng.normal(0, _u(rng, SYNTH["noise_sigma"]), img.shape)
    img = _blur(img, _u(rng, SYNTH["blur_sigma"]))
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    lanes = np.asarray(labels, np.float64).reshape(-1, len(rows))
    order = np.argsort([_bottom_x(lane) for lane in lanes]) if len(lanes) else []
    return image, lanes[order]


def _bottom_x(lane: np.ndarray) -> float:
    valid = np.flatnonzero(lane >= 0)
    return float(lane[valid[-1]]) if len(valid) else 0.0


def _longest_run(ok: np.ndarray) -> np.ndarray:
    """`ok` with only its longest run of True kept (a lane is one contiguous stretch)."""
    best, start, out = (0, 0), None, np.zeros_like(ok)
    for i, v in enumerate([*list(ok), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    out[best[0] : best[1]] = True
    return out


def _ground_noise(rng, gx: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth random texture fixed to the ground: a few random sinusoids in (X, Z)."""
    out = np.zeros_like(gx)
    for _ in range(4):
        fx, fz, ph = rng.uniform(0.2, 2.0), rng.uniform(0.05, 0.8), rng.uniform(0, 2 * np.pi)
        out += np.sin(fx * gx + fz * z + ph)
    return out / 2


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.2:
        return img
    r = max(1, math.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    tmp = sum(w * pad[i : i + img.shape[0], :, :] for i, w in enumerate(k))
    return sum(w * tmp[:, i : i + img.shape[1], :] for i, w in enumerate(k))
