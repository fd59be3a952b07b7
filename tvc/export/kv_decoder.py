"""Image GPT to ONNX in two graphs, and generation with ONNX Runtime.

- `model.onnx`, the full-sequence graph: `tokens` (N, L) int64 -> `logits` (N, L, K),
  `features` (N, D), `class_logits` (N, C). It scores images (bits/dim), gives the probe's
  features and the fine-tuned classes.
- `decoder.onnx`, the single-step decoder: `tokens` (N, T) int64 (ids 0..K, K = start) and the
  cache of the P tokens before them, `past_key_i` / `past_value_i` (N, H_i, P, head_dim) per
  block, -> `logits` (N, T, K) and `present_key_i` / `present_value_i` (N, H_i, P + T,
  head_dim). T = 1 + prefix rows * W once to fill the cache from a prefix (P = 0), then T = 1
  per generated pixel. Heads may differ per block (a pruned model), so each block has its own
  cache tensors.

Both are proven against PyTorch: logits within tolerance, and tokens generated greedily from the
same prefixes must be identical (PyTorch with its cache, ONNX Runtime with the decoder, and ONNX
Runtime re-running the full-sequence graph without a cache). `generation_speed` measures tokens
per second with and without the cache. Export functions import torch; the generation and speed
functions need only numpy and onnxruntime, so they run on a board. `tvc export` writes both
graphs through the pixels task (`extra_graphs`); their FP16 and INT8 come from
tvc.export.token_variants, with `quantize_int8` and `convert_fp16_tokens` here.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tvc.errors import ExportError, ParityError, first_line

FULL_FILE = "model.onnx"
DECODER_FILE = "decoder.onnx"
FULL_INPUTS = ("tokens",)
FULL_OUTPUTS = ("logits", "features", "class_logits")
# the decoder graph that generates for each full-sequence graph `tvc export` writes
DECODER_OF = {
    FULL_FILE: DECODER_FILE,
    "model.int8.onnx": "decoder.int8.onnx",
    "model.int8dyn.onnx": "decoder.int8dyn.onnx",
}


def sequence_of(info: Any) -> tuple[int, int]:
    """(tokens per image, start token id) of an iGPT from its ModelInfo: height x width tokens;
    ids 0..K-1 are the palette's colours, so the start token's id is K (`levels`)."""
    return int(info.kwargs["height"]) * int(info.kwargs["width"]), int(info.kwargs["levels"])


def random_tokens(info: Any, n: int) -> np.ndarray:
    """`n` seeded sequences of random palette tokens, for checks without data."""
    length, levels = sequence_of(info)
    return np.random.default_rng(0).integers(0, levels, (n, length)).astype(np.int64)


def cache_names(depth: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kind}_{i}" for i in range(depth) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(depth) for kind in ("key", "value")]
    return past, present


def _export(module, args, path: Path, inputs, outputs, dynamic, opset: int) -> None:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                opset_version=opset,
                dynamic_axes=dynamic,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export of {path.name} failed: {first_line(exc)}",
            "try another --opset (>= 17)",
        ) from exc
    from tvc.export.onnx import check_onnx

    check_onnx(path)


def export_full(
    model, path: str | Path, *, opset: int = 17, batch: int = 1, dynamic_batch: bool = True
) -> Path:
    """The full-sequence graph (see the module docstring)."""
    import torch

    path = Path(path)
    model = model.eval()
    example = torch.zeros(batch, model.seq_len, dtype=torch.int64)
    dynamic = {n: {0: "batch"} for n in (*FULL_INPUTS, *FULL_OUTPUTS)} if dynamic_batch else None
    _export(model, (example,), path, FULL_INPUTS, FULL_OUTPUTS, dynamic, opset)
    return path


class _Step:
    """Wraps model.step so the traced graph has flat inputs and outputs."""

    def __new__(cls, model):
        import torch

        class Step(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, tokens, *past):
                return self.m.step(tokens, *past)

        return Step(model)


def export_decoder(model, path: str | Path, *, opset: int = 17) -> Path:
    """The single-step decoder with past/present key/value tensors."""
    import torch

    path = Path(path)
    model = model.eval()
    depth = len(model.blocks)
    past_names, present_names = cache_names(depth)
    # Trace with P = 3 cached and T = 2 new tokens so neither length is specialised.
    tokens = torch.zeros(1, 2, dtype=torch.int64)
    past = []
    for b in model.blocks:
        shape = (1, b.attn.num_heads, 3, b.attn.head_dim)
        past += [torch.zeros(shape), torch.zeros(shape)]
    dynamic: dict[str, dict[int, str]] = {
        "tokens": {0: "batch", 1: "new"},
        "logits": {0: "batch", 1: "new"},
    }
    for n in past_names:
        dynamic[n] = {0: "batch", 2: "past"}
    for n in present_names:
        dynamic[n] = {0: "batch", 2: "total"}
    _export(
        _Step(model),
        (tokens, *past),
        path,
        ("tokens", *past_names),
        ("logits", *present_names),
        dynamic,
        opset,
    )
    return path


# ------------------------------------------------------------------ generation with ORT


def _session(path, threads: int | None):
    from tvc.runtime.ort import session_from_onnx

    return session_from_onnx(path, threads=threads)


def _empty_cache(sess, n: int) -> dict[str, np.ndarray]:
    """Zero-length past tensors for each cache input of a decoder session."""
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name.startswith("past_"):
            heads, hd = inp.shape[1], inp.shape[3]
            feeds[inp.name] = np.zeros((n, int(heads), 0, int(hd)), dtype=np.float32)
    return feeds


def generate_with_cache(sess, prefix: np.ndarray, total: int, start: int) -> np.ndarray:
    """Greedy completion of `prefix` (N, P) to `total` tokens with the decoder session."""
    prefix = np.asarray(prefix, dtype=np.int64)
    n = prefix.shape[0]
    seq = [prefix]
    done = prefix.shape[1]
    feeds = {
        "tokens": np.concatenate([np.full((n, 1), start, np.int64), prefix], 1),
        **_empty_cache(sess, n),
    }
    out_names = [o.name for o in sess.get_outputs()]
    while done < total:
        outs = dict(zip(out_names, sess.run(None, feeds), strict=True))
        nxt = outs["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        seq.append(nxt)
        done += 1
        feeds = {"tokens": nxt}
        for name, value in outs.items():
            if name.startswith("present_"):
                feeds["past_" + name[len("present_") :]] = value
    return np.concatenate(seq, 1)[:, :total]


def generate_without_cache(sess, prefix: np.ndarray, total: int) -> np.ndarray:
    """Greedy completion re-running the full-sequence graph for every new token (zeros stand
    in for the pixels not yet generated; causality makes them irrelevant)."""
    prefix = np.asarray(prefix, dtype=np.int64)
    n, p = prefix.shape
    batch, length = sess.get_inputs()[0].shape[:2]  # the sequence length is fixed
    if isinstance(batch, int) and batch != n:  # a fixed-batch export: one image at a time
        return np.concatenate(
            [generate_without_cache(sess, prefix[i : i + 1], total) for i in range(n)]
        )
    seq = np.zeros((n, length), dtype=np.int64)
    seq[:, :p] = prefix
    for i in range(p, total):
        logits = sess.run(["logits"], {"tokens": seq})[0]
        seq[:, i] = logits[:, i].argmax(-1)
    return seq[:, :total]


def run_full(sess, tokens: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    """Run the full-sequence graph on `tokens`, one image at a time when its batch is fixed."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    batch = sess.get_inputs()[0].shape[0]
    if isinstance(batch, int) and batch != len(tokens):
        parts = [
            sess.run(names, {"tokens": tokens[i : i + batch]}) for i in range(0, len(tokens), batch)
        ]
        return [np.concatenate(col) for col in zip(*parts, strict=True)]
    return sess.run(names, {"tokens": tokens})


def generation_speed(
    full_path: str | Path,
    decoder_path: str | Path,
    prefix: np.ndarray,
    *,
    total: int,
    start: int,
    threads: int = 1,
    repeats: int = 1,
    cache_repeats: int = 3,
) -> dict[str, Any]:
    """Tokens per second and seconds per completed image, with and without the KV cache, on
    the same prefixes (N, P); also says whether both produced the same tokens."""
    full, dec = _session(full_path, threads), _session(decoder_path, threads)
    n, p = np.asarray(prefix).shape
    new_tokens = n * (total - p)
    generate_with_cache(dec, prefix[:1], min(total, p + 2), start)  # warm up
    generate_without_cache(full, prefix[:1], min(total, p + 2))

    def timed(fn, reps):
        best, out = float("inf"), None
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_cache, with_cache = timed(
        lambda: generate_with_cache(dec, prefix, total, start), cache_repeats
    )
    t_full, without = timed(lambda: generate_without_cache(full, prefix, total), repeats)
    return {
        "images": int(n),
        "prefix_tokens": int(p),
        "new_tokens_per_image": int(total - p),
        "threads": threads,
        "batch": int(n),
        "kv_cache": {
            "seconds": round(t_cache, 6),
            "tokens_per_s": round(new_tokens / t_cache, 1),
            "s_per_image": round(t_cache / n, 4),
        },
        "no_cache": {
            "seconds": round(t_full, 6),
            "tokens_per_s": round(new_tokens / t_full, 1),
            "s_per_image": round(t_full / n, 4),
        },
        "speedup": round(t_full / t_cache, 2),
        "same_tokens": bool(np.array_equal(with_cache, without)),
    }


# ------------------------------------------------------------------ parity


def decoder_parity(
    model,
    full_path: str | Path,
    decoder_path: str | Path,
    prefixes: np.ndarray,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    gen_tokens: int | None = None,
) -> dict[str, Any]:
    """Prove the decoder against PyTorch: logits of a cache fill and one step, and greedy
    tokens from `prefixes` (N, P) identical for PyTorch, ORT + cache and ORT without cache.
    Raises ParityError when any differs."""
    import torch

    from tvc.export.parity import compare
    from tvc.models.igpt import generate_greedy

    model = model.eval()
    prefixes = np.asarray(prefixes, dtype=np.int64)
    n, p = prefixes.shape
    total = min(model.seq_len, p + gen_tokens) if gen_tokens else model.seq_len
    dec = _session(decoder_path, 1)
    full = _session(full_path, 1)
    start = np.full((n, 1), model.sos, np.int64)
    inp = np.concatenate([start, prefixes], 1)
    with torch.no_grad():
        ref = model.step(torch.from_numpy(inp), *model.empty_cache(n))
        ref_step = model.step(torch.from_numpy(prefixes[:, -1:]), *ref[1:])
    names = [o.name for o in dec.get_outputs()]
    got = dict(zip(names, dec.run(None, {"tokens": inp, **_empty_cache(dec, n)}), strict=True))
    feeds = {"tokens": prefixes[:, -1:]}
    feeds.update({"past_" + k[8:]: v for k, v in got.items() if k.startswith("present_")})
    got_step = dec.run(["logits"], feeds)[0]
    fill = compare(ref[0].numpy(), got["logits"], atol=atol, rtol=rtol)
    step = compare(ref_step[0].numpy(), got_step, atol=atol, rtol=rtol)
    with torch.no_grad():
        torch_tokens = generate_greedy(model, torch.from_numpy(prefixes), total).numpy()
    ort_cache = generate_with_cache(dec, prefixes, total, model.sos)
    ort_full = generate_without_cache(full, prefixes, total)
    facts = {
        "prefill_logits": fill.as_dict(),
        "step_logits": step.as_dict(),
        "greedy_images": int(n),
        "prefix_tokens": int(p),
        "generated_tokens": int(total - p),
        "greedy_identical_torch_vs_ort_cache": bool(np.array_equal(torch_tokens, ort_cache)),
        "greedy_identical_ort_cache_vs_full": bool(np.array_equal(ort_cache, ort_full)),
        "greedy_token_agreement": float((torch_tokens == ort_cache)[:, p:].mean()),
    }
    if not (fill.ok and step.ok):
        raise ParityError(
            f"the KV-cache decoder does not match PyTorch: max abs diff "
            f"{max(fill.max_abs_diff, step.max_abs_diff):.3g}",
            "try another --opset; if it persists, report the model",
        )
    if not (
        facts["greedy_identical_torch_vs_ort_cache"] and facts["greedy_identical_ort_cache_vs_full"]
    ):
        raise ParityError(
            "greedy generation differs between PyTorch and the exported decoder "
            f"({facts['greedy_token_agreement']:.1%} of tokens agree)",
            "try another --opset; if it persists, report the model",
        )
    return facts


def full_parity(
    model, path: str | Path, tokens: np.ndarray, *, atol: float = 1e-4, rtol: float = 1e-3
) -> dict[str, Any]:
    """Every output of the full-sequence graph against PyTorch on `tokens`; raises on failure."""
    import torch

    from tvc.export.parity import compare

    sess = _session(path, 1)
    x = np.asarray(tokens, dtype=np.int64)
    with torch.no_grad():
        ref = [t.numpy() for t in model.eval()(torch.from_numpy(x))]
    got = run_full(sess, x, list(FULL_OUTPUTS))
    facts = {}
    for name, r, g in zip(FULL_OUTPUTS, ref, got, strict=True):
        p = compare(r, g, atol=atol, rtol=rtol)
        facts[name] = p.as_dict()
        if not p.ok:
            raise ParityError(
                f"the exported '{name}' output does not match PyTorch (max abs diff "
                f"{p.max_abs_diff:.3g} > {p.tolerance:.3g})",
                "try another --opset; if it persists, report the model",
            )
    return facts


# ------------------------------------------------------------------ INT8, FP16, the artifact


def linear_nodes(model: Any) -> list[str]:
    """MatMul/Gemm nodes of `model` (a ModelProto or a path) whose second input is a weight
    (an initializer): the Linears. The attention's activation x activation MatMuls, norms,
    softmax and residual adds stay float (the transformer-safe placement)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    consts = {t.name for t in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts
    ]


def decoder_feeds(sess, prefixes: np.ndarray, start: int, steps: int) -> list[dict]:
    """Feeds a decoder sees while completing `prefixes`: one cache fill and `steps` single-token
    steps (for calibration)."""
    prefixes = np.asarray(prefixes, dtype=np.int64)
    n = prefixes.shape[0]
    feeds = {
        "tokens": np.concatenate([np.full((n, 1), start, np.int64), prefixes], 1),
        **_empty_cache(sess, n),
    }
    out_names = [o.name for o in sess.get_outputs()]
    seen = []
    for _ in range(steps + 1):
        seen.append(feeds)
        outs = dict(zip(out_names, sess.run(None, feeds), strict=True))
        nxt = outs["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        feeds = {"tokens": nxt}
        feeds.update({"past_" + k[8:]: v for k, v in outs.items() if k.startswith("present_")})
    return seen


def quantize_int8(fp32: str | Path, out: str | Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Static INT8 with explicit Q/DQ on the Linears only, calibrated on `feeds`, with the
    image models' settings (tvc.export.quantize): symmetric int8 weights per channel and
    activations per tensor, float biases, Q/DQ read by the Linears alone. That is the
    placement TensorRT builds strongly typed; norms, softmax and the attention's
    activation x activation MatMuls stay float."""
    import tempfile

    from tvc.export.quantize import QuantConfig
    from tvc.export.quantize.calibration import CalibrationReader, run_static_reader
    from tvc.export.quantize.graph import float_for_bystanders, load_onnx, prepare, save_onnx

    fp32, out = Path(fp32), Path(out)
    prepared = prepare(load_onnx(fp32), gemm="split_bias")
    nodes = linear_nodes(prepared)
    if not nodes:
        raise ExportError(f"{fp32.name} has no Linear layers to quantize", "export it again")
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        path = save_onnx(prepared, Path(tmp) / "prepared.onnx")
        reader = CalibrationReader.of_feeds(feeds)
        run_static_reader(path, out, reader, QuantConfig(mode="static"), nodes, [])
    float_for_bystanders(load_onnx(out), prepared, set(nodes), out)
    from tvc.export.onnx import check_onnx

    check_onnx(out)
    return {
        "quantized_nodes": len(nodes),
        "calibration_feeds": len(feeds),
        "size_bytes": out.stat().st_size,
        "fp32_size_bytes": fp32.stat().st_size,
    }


def convert_fp16_tokens(
    fp32: str | Path,
    out: str | Path,
    feeds: dict[str, np.ndarray],
    *,
    atol: float = 5e-2,
    rtol: float = 2e-2,
) -> dict:
    """FP16 weights and activations (norms, softmax and the integer token path kept in FP32 by
    tvc's converter rules), checked on token `feeds`. tvc.export.fp16.convert_fp16 drives its
    checks with float image inputs, so its graph rewrite is reused here with int64 tokens."""
    import onnx

    from tvc.export.fp16 import DEFAULT_KEEP_FP32, _to_fp16
    from tvc.export.onnx import check_onnx
    from tvc.export.parity import compare

    fp32, out = Path(fp32), Path(out)
    model = onnx.load(str(fp32))
    converted, stats = _to_fp16(model, set(DEFAULT_KEEP_FP32), set())
    onnx.save(converted, str(out))
    check_onnx(out)
    ref = _session(fp32, 1).run(None, feeds)
    got = _session(out, 1).run(None, feeds)
    parity = compare(ref[0], np.asarray(got[0], np.float32), atol=atol, rtol=rtol)
    if not parity.ok:
        raise ParityError(
            f"the FP16 graph {out.name} does not match FP32 (max abs diff "
            f"{parity.max_abs_diff:.3g} > {parity.tolerance:.3g})",
            "keep the model in FP32 or INT8",
        )
    return {
        "parity": parity.as_dict(),
        "fp16_nodes": stats["fp16_nodes"],
        "size_bytes": out.stat().st_size,
    }
