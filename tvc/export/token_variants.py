"""FP16 and INT8 variants of a token-input export (Image GPT), for `tvc export`.

iGPT's model.onnx takes int64 palette tokens (N, L), not images, so the image side of
tvc.export.flow (SmoothQuant on LayerNorm inputs, per-layer fallback ranked on images) does not
apply. Here:

    model.fp16.onnx     FP16 with norms, softmax and the token path kept FP32, checked on tokens
    model.int8.onnx     static Q/DQ on the Linears, calibrated on the training split's tokens,
    decoder.int8.onnx   the single-step decoder likewise (calibrated on the feeds it sees while
                        completing images), held to a bits/dim gate: INT8 may raise the held-out
                        bits/dim by at most --int8-budget (BPD_BUDGET unless given)
    model.int8dyn.onnx  dynamic INT8 on the Linears (and decoder.int8dyn.onnx), parity only
    model.ort.onnx      the shared path (Variants.ort_fused) on token inputs

Every variant's parity against FP32 is the shared `_parity` on token sequences.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tvc.errors import AccuracyBudgetError
from tvc.export.flow import (
    FP16_FILE,
    INT8_FILES,
    PARITY_IMAGES,
    Variants,
    indicative_latency,
    trt_readiness,
    warn_if_slower,
)
from tvc.export.kv_decoder import DECODER_FILE, DECODER_OF, random_tokens, sequence_of

log = logging.getLogger("tvc")

BPD_BUDGET = 0.05  # default gate: INT8 may raise held-out bits/dim by this much
_CALIB_BATCH = 16  # sequences per calibration feed of a dynamic-batch graph
_DECODER_STEPS = 24  # single-token steps the decoder's calibration follows


class TokenVariants(Variants):
    """Variants of an export whose model.onnx reads token sequences."""

    def _inputs(self, images) -> np.ndarray:
        if images is not None and len(images):
            from tvc.data.base import seeded_subset

            tokens = images.arrays()
            return tokens[seeded_subset(len(tokens), PARITY_IMAGES, 0)]
        return random_tokens(self.info, 8)

    def _batch(self) -> int | None:
        """The fixed batch model.onnx was exported with; None when dynamic."""
        batch = self.w.meta["io"]["inputs"][0]["shape"][0]
        return batch if isinstance(batch, int) else None

    def fp16(self) -> None:
        from tvc.export.kv_decoder import convert_fp16_tokens

        log.info("writing the FP16 variant (model.onnx; generation keeps decoder.onnx FP32)")
        images = self._parity_images()
        x = self._inputs(images)[: self._batch() or 8]
        path = self.w.path_for(FP16_FILE)
        report = convert_fp16_tokens(self.fp32, path, {self._input_name(): x})
        variant = {"precision": "fp16", **report}
        variant["parity_vs_fp32"] = self._parity(path, images, "fp16")
        self.variants[FP16_FILE] = variant

    def _input_name(self) -> str:
        return self.w.meta["io"]["inputs"][0]["name"]

    def int8(self) -> None:
        cfg, fname = self.cfg, INT8_FILES[self.cfg.int8]
        path = self.w.path_for(fname)
        calib = None
        if self.calib:
            calib = self.task.images(self.data(self.calib, "train", cfg.calib_size))
            log.info("calibration: %d token images of %s (train split)", len(calib), self.calib)
        if cfg.int8 == "dynamic":
            log.info("writing the dynamic INT8 variant")
            variant = {"precision": "int8-dynamic", **self._dynamic(self.fp32, path)}
        else:
            log.info("writing the static INT8 variant")
            feeds = self._feeds(calib.arrays())
            variant = {"precision": "int8-qdq", **_static(self.fp32, path, feeds)}
            variant["calibration"] = {
                "data": self.calib,
                "split": "train",
                "requested": cfg.calib_size,
                "sequences": int(sum(len(f[self._input_name()]) for f in feeds)),
            }
            variant["gate"] = self._gate(path)
        variant["parity_vs_fp32"] = self._parity(path, calib, "int8")
        variant["trt_readiness"] = trt_readiness(path, warn=cfg.int8 == "static")
        variant["latency_ms"] = indicative_latency(self.fp32, path)
        warn_if_slower(fname, variant)
        self.variants[fname] = variant
        self._decoder_int8(calib)

    def _feeds(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Calibration feeds at the graph's batch (a fixed-batch graph takes only its own)."""
        b = self._batch() or _CALIB_BATCH
        usable = len(tokens) - len(tokens) % b or len(tokens)
        name = self._input_name()
        return [{name: tokens[s : s + b]} for s in range(0, usable, b)]

    def _dynamic(self, src: Path, out: Path) -> dict[str, Any]:
        from tvc.export.kv_decoder import linear_nodes
        from tvc.export.onnx import check_onnx
        from tvc.export.quantize import QuantConfig
        from tvc.export.quantize.dynamic import run_dynamic

        nodes = linear_nodes(src)
        run_dynamic(src, out, nodes, QuantConfig(mode="dynamic"))
        check_onnx(out)
        return {
            "mode": "dynamic",
            "format": "ONNX Runtime integer ops (DynamicQuantizeLinear + MatMulInteger)",
            "quantized_nodes": len(nodes),
            "size_bytes": out.stat().st_size,
            "fp32_size_bytes": src.stat().st_size,
        }

    def _gate(self, path: Path) -> dict[str, Any]:
        """Held-out bits/dim of INT8 against FP32 (--eval-data's test split, else the
        calibration data's val split): the increase must stay within the budget."""
        from tvc.export.quantize.graph import load_onnx
        from tvc.export.quantize.scoring import predict_outputs

        cfg = self.cfg
        if cfg.eval_data:
            self.fp32_quality()  # measures FP32 on --eval-data's test split once, for both
            spec, split, data = cfg.eval_data, "test", self._test[0]
        else:
            spec, split = self.calib, "val"
            data = self.data(spec, split, self.gate_limit)
        data = dataclasses.replace(data, probe_train=None, finetuned=False)  # bits/dim only

        def bpd(graph: Path) -> float:
            return self.task.evaluate(predict_outputs(load_onnx(graph)), data)["bpd"]

        fp32 = self.fp32_quality()["bpd"] if cfg.eval_data else bpd(self.fp32)
        int8 = bpd(path)
        budget = cfg.int8_budget if "int8_budget" in cfg.model_fields_set else BPD_BUDGET
        increase = round(int8 - fp32, 4)
        gate = {"metric": "bpd", "fp32": fp32, "int8": int8, "increase": increase,
                "budget": budget, "data": spec, "split": split, "n": len(data),
                "budget_met": increase <= budget}  # fmt: skip
        log.info("INT8 gate: %.4f -> %.4f bits/dim on %d %s %s images (budget +%g)",
                 fp32, int8, len(data), spec, split, budget)  # fmt: skip
        if increase > budget:
            what = f"the INT8 model raises bits/dim by {increase:.4f} (budget {budget:g})"
            if not cfg.allow_accuracy_drop:
                raise AccuracyBudgetError(
                    f"{what} on {len(data)} {spec} {split} images",
                    "use --int8 dynamic, raise --int8-budget, or pass --allow-accuracy-drop "
                    "to keep it anyway",
                )
            gate["warning"] = what + " (kept because accuracy drop was allowed)"
            log.warning("INT8 OVER BUDGET: %s", gate["warning"])
        return gate

    def _decoder_int8(self, calib) -> None:
        """decoder.int8.onnx (or .int8dyn.onnx) beside the full graph's INT8, so generation can
        run quantized too; its greedy completions are compared with the FP32 decoder's."""
        from tvc.export.kv_decoder import decoder_feeds
        from tvc.runtime.ort import session_from_onnx

        dec = self.w.path_for(DECODER_FILE)
        if not dec.exists():
            log.warning("no %s in this export: only model.onnx is quantized", DECODER_FILE)
            return
        out = self.w.path_for(DECODER_OF[INT8_FILES[self.cfg.int8]])
        if self.cfg.int8 == "dynamic":
            record = self._dynamic(dec, out)
        else:
            length, start = sequence_of(self.info)
            prefixes = calib.arrays()[:_CALIB_BATCH, : length // 2]
            feeds = decoder_feeds(
                session_from_onnx(dec, threads=1), prefixes, start, _DECODER_STEPS
            )
            record = _static(dec, out, feeds)
            record["trt_readiness"] = trt_readiness(out, warn=True)
        record["completions_vs_fp32"] = _same_completions(dec, out, self._inputs(calib), self.info)
        precision = self.variants[INT8_FILES[self.cfg.int8]]["precision"]
        self.variants[out.name] = {"precision": precision, "graph": "decoder", **record}


def _static(src: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    from tvc.export.kv_decoder import quantize_int8

    return {"mode": "static", **quantize_int8(src, out, feeds)}


def _same_completions(fp32: Path, int8: Path, tokens: np.ndarray, info) -> dict[str, Any]:
    """Greedy completions of the bottom half of a few images by both decoders: the share of
    generated tokens that agree (INT8 may pick another token where two are near tied)."""
    from tvc.export.kv_decoder import generate_with_cache
    from tvc.runtime.ort import session_from_onnx

    length, start = sequence_of(info)
    prefix = tokens[:4, : length // 2]
    a = generate_with_cache(session_from_onnx(fp32, threads=1), prefix, length, start)
    b = generate_with_cache(session_from_onnx(int8, threads=1), prefix, length, start)
    new = slice(prefix.shape[1], length)
    agree = float((a[:, new] == b[:, new]).mean())
    return {"images": len(prefix), "token_agreement": round(agree, 4)}
