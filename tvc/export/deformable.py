"""Deformable DETR's bilinear sampling, patched for export (a reversible context manager).

Deformable DETR's multi-scale deformable attention samples feature maps bilinearly at predicted
points. Transformers does that with `grid_sample` (ONNX GridSample), a form TensorRT has silently
miscompiled (10.14, 11.1), and its exported graph carries float64 tensors that ONNX Runtime's
GridSample rejects. During export tvc therefore swaps in one of two pure-PyTorch samplers of its
own (`deformable_sampling`, used by the detection task's `export_patches`):

- `grid`: the same GridSample, computed in the model's float type;
- `gather`: the bilinear interpolation written out as four plain Gathers with weights, no
  GridSample at all (the default: it is what a TensorRT engine should be built from).

Either way the export flow compares the graph with the unpatched PyTorch model, so the parity
check also proves the sampler reproduces transformers' own. On ONNX Runtime's CPU provider the
gather form costs about twice the GridSample form's time (tiny model,
benchmarks/bench_detection.py); choose `grid` for ORT-only deployments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tvc.errors import ConfigError

SAMPLING_MODES = ("gather", "grid")


def _deformable_classes():
    from transformers.models.deformable_detr import modeling_deformable_detr as mdd

    return mdd.MultiScaleDeformableAttention, mdd.DeformableDetrEncoder


def grid_sampling(
    self,
    value,
    value_spatial_shapes,
    value_spatial_shapes_list,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=None,
):
    """transformers' multi-scale deformable sampling, kept in the value's float type."""
    import torch
    from torch.nn import functional as F

    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in value_spatial_shapes_list], dim=1)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    sampled = []
    for lvl, (h, w) in enumerate(value_spatial_shapes_list):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.to(value.dtype).transpose(1, 2)
    weights = weights.reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


def gather_sampling(
    self,
    value,
    value_spatial_shapes,
    value_spatial_shapes_list,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=None,
):
    """The same bilinear sampling (align_corners=False, zero padding) with plain Gathers.

    All levels share one flat (pixels, dim) table, as `value` already holds them one after the
    other. Each sampling point reads its four neighbouring pixels (one Gather per neighbour);
    neighbours outside their map get weight 0, which is what GridSample's zero padding means.
    The largest intermediate, (B*heads, Q, levels*points, dim), is the size transformers' own
    implementation stacks too.
    """
    import torch

    batch, seq, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    bh = batch * heads
    dev, dt = value.device, value.dtype
    # Per-level sizes and offsets are constants of the fixed-size export: (1, 1, levels, 1).
    hw = torch.tensor(value_spatial_shapes_list, dtype=torch.int64, device=dev)
    h_int, w_int = hw[:, 0].view(1, 1, levels, 1), hw[:, 1].view(1, 1, levels, 1)
    sizes = [h * w for h, w in value_spatial_shapes_list]
    starts = torch.tensor([sum(sizes[:i]) for i in range(levels)], device=dev).view(1, 1, levels, 1)
    table = value.permute(0, 2, 1, 3).reshape(bh * seq, dim)  # row (b*heads + head)*seq + pixel
    row0 = (torch.arange(bh, device=dev) * seq).view(bh, 1, 1, 1)
    loc = (
        sampling_locations.to(dt).permute(0, 2, 1, 3, 4, 5).reshape(bh, queries, levels, points, 2)
    )
    attn = attention_weights.to(dt).permute(0, 2, 1, 3, 4).reshape(bh, queries, levels, points)
    x = loc[..., 0] * w_int.to(dt) - 0.5  # pixel coordinates, pixel centres at integers
    y = loc[..., 1] * h_int.to(dt) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    out = value.new_zeros(bh, queries, 1, dim)
    for dx, dy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w_int) & (yi >= 0) & (yi < h_int)
        xi = torch.minimum(xi.clamp(min=0), w_int - 1)
        yi = torch.minimum(yi.clamp(min=0), h_int - 1)
        index = (row0 + starts + yi * w_int + xi).reshape(-1)
        rows = table[index].reshape(bh, queries, levels * points, dim)
        coef = (wgt * attn * inside.to(dt)).reshape(bh, queries, 1, levels * points)
        out = out + torch.matmul(coef, rows)  # the weighted sum over levels and points
    return (
        out.reshape(batch, heads, queries, dim)
        .permute(0, 2, 1, 3)
        .reshape(batch, queries, heads * dim)
    )


def float_reference_points(spatial_shapes_list, valid_ratios, device):
    """Deformable DETR's encoder reference points without torch.linspace, whose ONNX form is
    float64 (which TensorRT does not support); arange(n) + 0.5 gives the same values."""
    import torch

    dtype = valid_ratios.dtype
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes_list):
        ys = torch.arange(h, dtype=dtype, device=device) + 0.5
        xs = torch.arange(w, dtype=dtype, device=device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    ref = torch.cat(refs, 1)
    return ref[:, :, None] * valid_ratios[:, None]


@contextlib.contextmanager
def deformable_sampling(model, mode: str = "gather") -> Iterator[int]:
    """Swap the bilinear sampler of every deformable attention in `model`; restore on exit.

    Yields how many attention modules were patched (0 for plain DETR, which has none).
    """
    if mode not in SAMPLING_MODES:
        raise ConfigError(
            f"sampling mode '{mode}' is unknown", f"use one of: {', '.join(SAMPLING_MODES)}"
        )
    import types

    msda_cls, encoder_cls = _deformable_classes()
    fn = gather_sampling if mode == "gather" else grid_sampling
    patched = []
    for m in model.modules():
        if isinstance(m, msda_cls):
            m.forward = types.MethodType(fn, m)  # an instance attribute shadows the class's
            patched.append(m)
        elif isinstance(m, encoder_cls):
            m.get_reference_points = float_reference_points
            patched.append(m)
    try:
        yield sum(isinstance(m, msda_cls) for m in patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("get_reference_points", None)
