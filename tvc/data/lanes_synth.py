"""tvc's built-in lane set (`lanes-synth`): road scenes rendered in perspective from a camera model.

Scenes are 128x72 (TuSimple's 1280x720 at a tenth: rows `h_samples` 16..71 are TuSimple's
160..710), deterministic in (seed, split, index). Generator parameters (SYNTH; every draw
uniform unless said):

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

numpy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tvc.data.lanes import _SPLIT_CODE, BUILTIN, H_SAMPLES, HEIGHT, WIDTH, LaneSet
from tvc.errors import DataError

MIN_POINTS = 6  # a line with fewer labelled rows is neither drawn nor labelled
SUPERSAMPLE = 2

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
