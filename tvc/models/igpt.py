"""Image GPT: a GPT-2-style causal decoder over raster-ordered palette tokens.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual),
learned token and position embeddings, a start-of-image token (id = vocab size) so the first
pixel is predicted too, a final LayerNorm and a next-token head. Position i reads the tokens
before pixel i and predicts pixel i, so one forward pass scores a whole image.

`forward(tokens)` returns three outputs, the full-sequence graph's ONNX outputs:
  logits        (N, L, K)  next-token logits for each pixel
  features      (N, D)     the residual stream after block `probe_layer`, averaged over the
                           sequence: what the linear probe reads (iGPT probes a middle layer)
  class_logits  (N, C)     a classification head on the average of the final normalized
                           states, for fine-tuning

`step(tokens, past)` runs T new tokens given the cached keys/values of the P tokens before them
and returns their logits and the grown cache: the single-step decoder used for generation.

Attention Linears are called qkv/proj and the MLP's fc1/fc2, with `num_heads` and `head_dim`
attributes, so pruned widths are recorded and replayed by `tvc.models.structure`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tvc.errors import ConfigError

log = logging.getLogger("tvc")

FAMILY = "igpt"


@dataclass(frozen=True)
class IGPTConfig:
    levels: int = 16  # palette size K (vocabulary; the start token is id K)
    height: int = 14
    width: int = 14
    channels: int = 1
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp: int = 512
    num_classes: int = 10
    probe_layer: int = 2  # features read after this many blocks (iGPT: a middle layer)

    @property
    def seq_len(self) -> int:
        return self.height * self.width

    def validate(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(
                f"iGPT width {self.dim} is not divisible by {self.heads} heads",
                "choose dim a multiple of heads",
            )
        if not 1 <= self.probe_layer <= self.depth:
            raise ConfigError(
                f"probe layer {self.probe_layer} is outside 1..{self.depth}",
                "probe a layer of the model, e.g. depth // 2",
            )


CONFIGS: dict[str, IGPTConfig] = {
    # tests: 8x8 images, 8 levels, ~20k parameters
    "igpt_pico": IGPTConfig(
        levels=8, height=8, width=8, dim=32, depth=2, heads=2, mlp=64, probe_layer=1
    ),
    # trains on 2 CPU cores: Fashion-MNIST at 14x14, 16 levels, ~0.21 M parameters
    "igpt_micro": IGPTConfig(dim=64, mlp=256),
    # a little wider for a GPU
    "igpt_mini": IGPTConfig(
        height=16, width=16, dim=256, depth=8, heads=8, mlp=1024, probe_layer=4
    ),
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * heads * self.head_dim)
        self.proj = nn.Linear(heads * self.head_dim, dim)

    def _split(self, x: torch.Tensor):
        n, t, _ = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (N, H, T, hd)

    def _attend(self, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
        if self.training:
            # PyTorch's fused kernel: the same attention, about 1.7x faster training steps on
            # the CPU. Inference and export keep the explicit form below, which the exported
            # full-sequence and KV-cache graphs share op for op.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale)
        else:
            att = (q @ k.transpose(-2, -1)) * self.scale
            att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
            y = att @ v  # (N, H, T, hd)
        n, _, t, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(x)
        return self._attend(q, k, v, allowed)

    def step(self, x, past_k, past_v, allowed):
        q, k, v = self._split(x)
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        return self._attend(q, k, v, allowed), k, v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x, allowed):
        x = x + self.attn(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))

    def step(self, x, past_k, past_v, allowed):
        a, k, v = self.attn.step(self.norm1(x), past_k, past_v, allowed)
        x = x + a
        return x + self.mlp(self.norm2(x)), k, v


class ImageGPT(nn.Module):
    """See the module docstring. Input: int64 tokens (N, L) in 0..K-1."""

    def __init__(self, cfg: IGPTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.sos = cfg.levels  # the start token's id
        self.tok_emb = nn.Embedding(cfg.levels + 1, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.levels, bias=False)
        self.cls_head = nn.Linear(cfg.dim, cfg.num_classes)
        self.probe_layer = cfg.probe_layer
        mask = torch.tril(torch.ones(cfg.seq_len, cfg.seq_len, dtype=torch.bool))
        self.register_buffer("causal", mask, persistent=False)
        self.apply(_init)
        nn.init.normal_(self.pos_emb, std=0.02)
        for b in self.blocks:  # GPT-2: residual projections scaled by depth
            nn.init.normal_(b.attn.proj.weight, std=0.02 / (2 * cfg.depth) ** 0.5)
            nn.init.normal_(b.mlp.fc2.weight, std=0.02 / (2 * cfg.depth) ** 0.5)

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    def shifted(self, tokens: torch.Tensor) -> torch.Tensor:
        """[start, t_0 .. t_{L-2}]: the inputs that predict t_0 .. t_{L-1}."""
        start = torch.full_like(tokens[:, :1], self.sos)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def hidden(self, tokens: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The residual stream after `upto` blocks (all when None), before the final norm."""
        inp = self.shifted(tokens)
        t = inp.shape[1]
        x = self.tok_emb(inp) + self.pos_emb[:, :t]
        allowed = self.causal[:t, :t]
        for i, b in enumerate(self.blocks):
            if upto is not None and i >= upto:
                break
            x = b(x, allowed)
        return x

    def forward(self, tokens: torch.Tensor):
        if tokens.dim() > 2 or tokens.is_floating_point():
            # token ids given image-shaped (N, 1, H, W) or as floats: generic tools (the MAC
            # counter) build their inputs from input_size; the exported graph takes int64 (N, L)
            tokens = tokens.flatten(1).round().long()
        inp = self.shifted(tokens)
        t = inp.shape[1]
        x = self.tok_emb(inp) + self.pos_emb[:, :t]
        allowed = self.causal[:t, :t]
        features = None
        for i, b in enumerate(self.blocks):
            x = b(x, allowed)
            if i + 1 == self.probe_layer:
                features = x.mean(1)
        h = self.norm(x)
        return self.head(h), features, self.cls_head(h.mean(1))

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.hidden(tokens)))

    def features(self, tokens: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.hidden(tokens, layer or self.probe_layer).mean(1)

    def layer_features(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The sequence-averaged residual stream after every block (for a probe-layer sweep)."""
        inp = self.shifted(tokens)
        t = inp.shape[1]
        x = self.tok_emb(inp) + self.pos_emb[:, :t]
        allowed = self.causal[:t, :t]
        out = []
        for b in self.blocks:
            x = b(x, allowed)
            out.append(x.mean(1))
        return out

    def empty_cache(self, n: int, device=None) -> list[torch.Tensor]:
        """Keys and values of zero cached tokens: [k_0, v_0, k_1, v_1, ...], each (N, H, 0, hd)."""
        out = []
        for b in self.blocks:
            shape = (n, b.attn.num_heads, 0, b.attn.head_dim)
            out += [torch.zeros(shape, device=device), torch.zeros(shape, device=device)]
        return out

    def step(self, tokens: torch.Tensor, *past: torch.Tensor):
        """Logits of T new input tokens (ids in 0..K, K = start) after P cached ones.

        `past` is [k_0, v_0, k_1, v_1, ...] (N, H_i, P, hd); returns (logits (N, T, K),
        k_0', v_0', ...) with P + T cached positions."""
        p = past[0].shape[2]
        t = tokens.shape[1]
        pos = self.pos_emb[:, p : p + t]
        x = self.tok_emb(tokens) + pos
        rows = torch.arange(t, device=tokens.device) + p
        cols = torch.arange(p + t, device=tokens.device)
        allowed = cols[None, :] <= rows[:, None]
        present = []
        for i, b in enumerate(self.blocks):
            x, k, v = b.step(x, past[2 * i], past[2 * i + 1], allowed)
            present += [k, v]
        return (self.head(self.norm(x)), *present)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


@torch.no_grad()
def generate_greedy(
    model: ImageGPT, prefix: torch.Tensor, total: int | None = None, *, use_cache: bool = True
) -> torch.Tensor:
    """Complete `prefix` (N, P) greedily to `total` tokens (the full image by default)."""
    total = total or model.seq_len
    n, p = prefix.shape
    seq = prefix.clone()
    if p >= total:
        return seq[:, :total]
    if not use_cache:
        for _ in range(p, total):
            pad = torch.zeros(n, total - seq.shape[1], dtype=seq.dtype)
            logits = model.logits(torch.cat([seq, pad], 1))
            seq = torch.cat([seq, logits[:, seq.shape[1]].argmax(-1, keepdim=True)], 1)
        return seq
    start = torch.full((n, 1), model.sos, dtype=seq.dtype)
    out = model.step(torch.cat([start, seq], 1), *model.empty_cache(n))
    while True:
        nxt = out[0][:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        if seq.shape[1] >= total:
            return seq
        out = model.step(nxt, *out[1:])


# ------------------------------------------------------------------ building and ModelInfo


def config_from_info(info) -> IGPTConfig:
    return IGPTConfig(**info.kwargs)


def igpt_build(kwargs: dict[str, Any]) -> ImageGPT:
    return ImageGPT(IGPTConfig(**kwargs))


def igpt_info(name: str, cfg: IGPTConfig, palette=None, weights: str = "random"):
    from tvc.data.pixels import levels_palette
    from tvc.models.info import ModelInfo

    pal = palette or levels_palette(cfg.levels)
    if pal.size != cfg.levels:
        raise ConfigError(
            f"the palette has {pal.size} colours but the model predicts {cfg.levels}",
            "fit the palette with the model's number of levels",
        )
    c = cfg.channels
    return ModelInfo(
        name=name,
        family=FAMILY,
        arch="igpt",
        kwargs=asdict(cfg),
        num_classes=cfg.num_classes,
        input_size=(c, cfg.height, cfg.width),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        weights=weights,
        extra={"task": "pixels", "palette": pal.to_json(), "seq_len": cfg.seq_len},
    )


def igpt_from_name(
    name: str, *, weights: str | Path | None = None, warn_random: bool = True, **overrides: Any
):
    """A LoadedModel of one of tvc's iGPT configs (random, or `weights` from a safetensors)."""
    from tvc.models.info import LoadedModel

    cfg = CONFIGS[name]
    over = {k: v for k, v in overrides.items() if v is not None}
    if over:
        cfg = IGPTConfig(**{**asdict(cfg), **over})
    model = ImageGPT(cfg)
    if weights is not None:
        from tvc.models.weights import load_into, read_state_dict

        load_into(model, read_state_dict(weights), str(weights))
    elif warn_random:
        log.warning("%s is randomly initialised (no --weights given)", name)
    model.eval()
    return LoadedModel(model, igpt_info(name, cfg, weights=str(weights) if weights else "random"))


def palette_of(info):
    from tvc.data.pixels import Palette

    return Palette.from_json(info.extra["palette"])


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def nll_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood in nats per pixel."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
