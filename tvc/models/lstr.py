"""LSTR: the lane-shape transformer (Liu et al., "End-to-end Lane Shape Prediction with
Transformers", WACV 2021), written in plain PyTorch.

A small ResNet turns the image into a feature map; a transformer encoder reads it (with fixed 2-D
sine position encodings), and a decoder turns `num_queries` learned lane queries into one lane
hypothesis each. Per query the heads predict

- `logits` (B, Q, 2): lane / no-lane scores (softmax; column 1 is "lane");
- `curves` (B, Q, 8): the lane's shape in normalised image coordinates (x = u / W, y = v / H,
  y down), ordered `[lower, upper, k, f, m, n, b2, b3]` (see CURVE_PARAMS).

The curve is the paper's: a cubic X = kZ^3 + mZ^2 + nZ + b in the ground plane, seen by a
camera at some height and pitch, becomes in the image

    x(y) = k / (y - f)^2 + m / (y - f) + n + b2 * y - b3,      lower <= y <= upper

where f is (about) the horizon row. Lanes of one road share the curvature, so k, f, m, n come from
a head whose outputs are averaged over the queries (the paper's shared parameters) and b2, b3,
lower, upper from a per-query head. `curve_points` evaluates the model, `fit_curves` (numpy)
fits it to labelled points: the round trip the tests check.

Configurations: `lstr_pico` (tests), `lstr_micro` (trains on 2 CPU cores at 128x72, tvc's
built-in lane set) and `lstr_paper` (the paper's TuSimple model: ResNet-18 at a quarter of its
channels, 360x640, width 32, 2 heads, 2+2 layers, 7 queries; ~0.77 M parameters). Artifacts
record the config dict (family "lstr") and rebuild with `lstr_build`; compressed shapes go
through tvc.models.structure like any other model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tvc.data.lanes import CURVE_PARAMS, curve_points, curve_x, fit_curves  # noqa: F401 (re-exported)
from tvc.errors import ConfigError

log = logging.getLogger("tvc")

FAMILY = "lstr"
OUTPUT_NAMES = ("logits", "curves")


# ---------------------------------------------------------------------------------- network


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """A ResNet of basic blocks: stem conv (stride 2, plus a max-pool when `pool`), then one
    stage per width; the first stage keeps the resolution, each later one halves it."""

    def __init__(self, widths: list[int], depths: list[int], stem: int, pool: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem, 7 if pool else 3, 2, 3 if pool else 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()
        stages, cin = [], stem
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            blocks += [BasicBlock(w, w, 1) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        return self.stages(self.pool(self.stem(x)))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o Linears; the head count follows the
    projections' width (`q_proj.out_features // head_dim`), so pruned heads need no flag."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not divisible by {heads} heads", "fix the config")
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, q, k, v):
        b, lq, _ = q.shape
        lk = k.shape[1]
        hd = self.head_dim
        qh = self.q_proj(q).reshape(b, lq, -1, hd).transpose(1, 2)
        kh = self.k_proj(k).reshape(b, lk, -1, hd).transpose(1, 2)
        vh = self.v_proj(v).reshape(b, lk, -1, hd).transpose(1, 2)
        att = (qh @ kh.transpose(-1, -2)) * (hd**-0.5)
        out = att.softmax(-1) @ vh
        return self.o_proj(out.transpose(1, 2).reshape(b, lq, -1))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Post-norm, as DETR and LSTR: x = norm(x + attn(x + pos)); x = norm(x + ffn(x))."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, pos):
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, x))
        return self.norm2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, t, query_pos, memory, pos):
        q = t + query_pos
        t = self.norm1(t + self.self_attn(q, q, t))
        t = self.norm2(t + self.cross_attn(t + query_pos, memory + pos, memory))
        return self.norm3(t + self.ffn(t))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int, layers: int) -> None:
        super().__init__()
        dims = [dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, [*dims[1:], out], strict=True)
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_position(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """DETR's 2-D sine position encoding of an h x w map, flattened: (h * w, dim)."""
    half = dim // 2
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 1) / h * 2 * math.pi
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 1) / w * 2 * math.pi
    t = 10000 ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)
    py, px = ys[:, None] / t, xs[:, None] / t  # (h, half), (w, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], -1).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], -1).flatten(1)
    pos = torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], -1)
    return pos.reshape(h * w, dim)


class LSTR(nn.Module):
    """forward(images) -> (logits (B, Q, 2), curves (B, Q, 8)). See the module docstring."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = dict(cfg)
        d, heads, ffn = cfg["hidden"], cfg["heads"], cfg["ffn"]
        self.num_queries = int(cfg["queries"])
        self.backbone = ResNet(cfg["widths"], cfg["depths"], cfg["stem"], cfg["pool"])
        self.input_proj = nn.Conv2d(cfg["widths"][-1], d, 1)
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, ffn) for _ in range(cfg["enc"]))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, ffn) for _ in range(cfg["dec"]))
        self.query_embed = nn.Embedding(self.num_queries, d)
        self.class_embed = nn.Linear(d, 2)
        self.specific_embed = MLP(d, d, 4, 3)  # lower, upper, b2, b3
        self.shared_embed = MLP(d, d, 4, 2)  # k, f, m, n
        _c, h, w = cfg["input_size"]
        self.register_buffer("pos", self._pos(h, w), persistent=False)
        self._init_heads()

    def _pos(self, h: int, w: int) -> torch.Tensor:
        with torch.no_grad():
            fh, fw = self.backbone(torch.zeros(1, 3, h, w)).shape[-2:]
        return sine_position(int(fh), int(fw), self.cfg["hidden"])

    def _init_heads(self) -> None:
        """Start from a plausible road: horizon f at -0.2 (above the image), no curvature, lanes
        from y 0.4 to 1 at x 0.5. Random starts put f inside the image, where x(y) explodes."""
        for part in (self.encoder, self.decoder, self.query_embed):
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        with torch.no_grad():
            for head, bias in (
                (self.specific_embed, [0.4, 1.0, 0.0, 0.0]),
                (self.shared_embed, [0.0, -0.2, 0.0, 0.5]),
            ):
                last = head.layers[-1]
                last.weight.mul_(0.1)
                last.bias.copy_(torch.tensor(bias))

    def heads(self, hs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, curves) from decoder states hs (B, Q, d)."""
        logits = self.class_embed(hs)
        specific = self.specific_embed(hs)
        shared = self.shared_embed(hs).mean(1, keepdim=True).expand(-1, hs.shape[1], -1)
        curves = torch.cat([specific[..., :2], shared, specific[..., 2:]], -1)
        return logits, curves

    def decode_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder states after every layer (the last one feeds forward())."""
        feat = self.input_proj(self.backbone(x))
        b = feat.shape[0]
        memory = feat.flatten(2).transpose(1, 2)  # (B, HW, d)
        pos = self.pos.unsqueeze(0)
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        t = torch.zeros_like(query_pos)
        states = []
        for layer in self.decoder:
            t = layer(t, query_pos, memory, pos)
            states.append(t)
        return states

    def forward_all_layers(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, curves) after every decoder layer: the paper's auxiliary losses."""
        return [self.heads(s) for s in self.decode_all(x)]

    def forward(self, x: torch.Tensor):
        return self.heads(self.decode_all(x)[-1])


# ------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LstrConfig:
    config: dict[str, Any]
    description: str
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    extra: dict[str, Any] = field(default_factory=dict)


LSTR_CONFIGS: dict[str, LstrConfig] = {
    "lstr_pico": LstrConfig(
        {
            "input_size": [3, 36, 64],
            "stem": 8,
            "pool": False,
            "widths": [8, 16, 32],
            "depths": [1, 1, 1],
            "hidden": 32,
            "heads": 2,
            "ffn": 64,
            "enc": 1,
            "dec": 2,
            "queries": 6,
        },
        "LSTR for tests: 64x36, ResNet(8,16,32) stride 8, width 32, 1+2 layers: ~50 k params",
    ),
    "lstr_micro": LstrConfig(
        {
            "input_size": [3, 72, 128],
            "stem": 16,
            "pool": False,
            "widths": [16, 32, 64],
            "depths": [1, 1, 1],
            "hidden": 64,
            "heads": 4,
            "ffn": 128,
            "enc": 2,
            "dec": 2,
            "queries": 7,
        },
        "LSTR on 2 CPU cores: 128x72, ResNet(16,32,64) stride 8, width 64, 4 heads, 2+2 layers: "
        "~0.26 M params",
    ),
    "lstr_paper": LstrConfig(
        {
            "input_size": [3, 360, 640],
            "stem": 16,
            "pool": True,
            "widths": [16, 32, 64, 128],
            "depths": [2, 2, 2, 2],
            "hidden": 32,
            "heads": 2,
            "ffn": 128,
            "enc": 2,
            "dec": 2,
            "queries": 7,
        },
        "the paper's TuSimple LSTR: 640x360, ResNet-18 at 1/4 width (stride 32), width 32, "
        "2 heads, 2+2 layers, 7 queries",
    ),
}


def lstr_build(config: dict[str, Any]) -> LSTR:
    """A freshly initialised LSTR of `config` (a LSTR_CONFIGS entry's dict, as artifacts keep)."""
    missing = {"input_size", "widths", "depths", "hidden", "heads", "ffn", "enc", "dec",
               "queries", "stem", "pool"} - set(config)  # fmt: skip
    if missing:
        raise ConfigError(
            f"LSTR config lacks {', '.join(sorted(missing))}", "rebuild it from a named config"
        )
    return LSTR(config)


def lstr_info(name: str, model: LSTR, *, mean, std, weights: str):
    from tvc.models.info import ModelInfo

    cfg = model.cfg
    return ModelInfo(
        name=name,
        family=FAMILY,
        arch="lstr",
        kwargs=dict(cfg),
        num_classes=1,
        input_size=tuple(int(v) for v in cfg["input_size"]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        weights=weights,
        extra={"task": "lanes", "num_queries": model.num_queries, "outputs": list(OUTPUT_NAMES)},
    )


def lstr_from_name(name: str, *, weights: str | Path | None = None, input_size: int | None = None,
                   warn_random: bool = True):  # fmt: skip
    """One of LSTR_CONFIGS, randomly initialised or with a weights file for it."""
    from tvc.models.info import LoadedModel
    from tvc.models.weights import load_into, read_state_dict

    small = LSTR_CONFIGS[name]
    cfg = dict(small.config)
    if input_size is not None:  # --input-size keeps the aspect ratio: it sets the height
        c, h, w = cfg["input_size"]
        cfg["input_size"] = [c, int(input_size), round(w * input_size / h)]
    model = lstr_build(cfg)
    if weights is not None:
        load_into(model, read_state_dict(weights), str(weights))
    elif warn_random:
        log.warning(
            "%s is randomly initialised (no --weights given); accuracy numbers will be "
            "meaningless, latency and size are still valid",
            name,
        )
    model.eval()
    info = lstr_info(name, model, mean=small.mean, std=small.std,
                     weights=str(weights) if weights else "random")  # fmt: skip
    return LoadedModel(model, info)


def is_lstr_spec(spec: str) -> bool:
    """True when MODEL names an LSTR (a config name, or an artifact of family lstr) without
    building it."""
    import json

    from tvc.artifact import parent_path

    if spec in LSTR_CONFIGS:
        return True
    path = Path(spec) / "artifact.json"
    try:
        if path.is_file():
            meta = json.loads(path.read_text())
            model = meta.get("model") or {}
            if not model:  # an export artifact: its parent model decides
                parent = parent_path(spec, meta)
                same = parent is not None and parent.resolve() == Path(spec).resolve()
                return parent is not None and not same and is_lstr_spec(str(parent))
            return model.get("family") == FAMILY
    except (OSError, ValueError):
        return False
    return False
