"""The generative-pixels task: Image GPT on raster-ordered palette tokens.

Models are tvc's iGPT configs (`igpt_pico`, `igpt_micro`, `igpt_mini`) and artifacts of family
"igpt"; data is `fashion-mnist-pixels` or `pixels:fashion-mnist[:/dir]`, quantized with the
palette the model carries in its info (`extra["palette"]`), at the model's resolution. The
headline metric is bits per dimension (lower is better), with the linear-probe accuracy on the
features of the probe layer and, for fine-tuned models, the classification accuracy beside it.

Batches are int64 token ids (N, L). ONNX: `model.onnx` takes `tokens` and gives `logits`
(N, L, K), `features` (N, D) and `class_logits` (N, C); `extra_graphs` adds `decoder.onnx`, the
single-step decoder with past/present key/value tensors (tvc.export.kv_decoder), proven by
greedy generation. Pruning and low-rank are tvc.compress.igpt's; image completion
(`complete_images`, for `tvc generate`) is here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.errors import ConfigError, DataError
from tvc.tasks.base import Column, OnnxIO, Outputs, Predict, Task, artifact_family, first_set

if TYPE_CHECKING:
    from tvc.data.pixels import PixelSet
    from tvc.models.load import LoadedModel, ModelInfo

log = logging.getLogger("tvc")

INPUT_NAME = "tokens"
OUTPUT_NAMES = ("logits", "features", "class_logits")
PROBE_TRAIN = 10_000  # training images the linear probe is fitted on
_KL = "iGPT distils the teacher's next-token distributions (KL at --temperature, --alpha)"
_TOKEN_INT8 = "iGPT's INT8 calibrates min/max ranges of the Linears' inputs, held to bits/dim"
_MAGNITUDE = "iGPT prunes heads and MLP channels of every block by weight magnitude"


@dataclass
class PixelData:
    """A split of token images, the training images the probe is fitted on, and whether the
    model's classification head was fine-tuned (only then is its accuracy reported)."""

    pixels: PixelSet
    probe_train: PixelSet | None = None
    finetuned: bool = False

    def __len__(self) -> int:
        return len(self.pixels)

    def arrays(self) -> np.ndarray:
        return self.pixels.tokens

    @property
    def name(self) -> str:
        return self.pixels.name


class PixelsTask(Task):
    name = "pixels"
    metric = "bpd"
    input_kind = "tokens"
    metric_label = "bits/dim"
    noun = "generative pixel model"
    quality_key = "pixels"
    data_example = "fashion-mnist-pixels"
    columns = (
        Column("bpd", "bits/dim", "{:.3f}", higher_is_better=False),
        Column("probe_accuracy", "probe %"),
        Column("class_top1", "fine-tuned %"),
    )
    refuses: ClassVar[dict[str, dict[str, str]]] = {
        "compress": {
            "importance": _MAGNITUDE,
            "global_": _MAGNITUDE,
            "keep": _MAGNITUDE,
            "steps": _MAGNITUDE,
            "kd": _KL,
        },
        "export": {
            "calib_method": _TOKEN_INT8,
            "smooth_alpha": _TOKEN_INT8,
            "int8_ops": _TOKEN_INT8,
            "pixel_mask": "pixel masks are for detectors (DETR)",
        },
        "train": {
            "resume": "iGPT training keeps no checkpoint",
            "num_queries": "object queries are for detectors (DETR, Deformable DETR)",
        },
    }

    # ------------------------------------------------------------------ what belongs to the task
    def owns_model(self, spec: str) -> bool:
        from tvc.models.igpt import CONFIGS

        if spec in CONFIGS:
            return True
        return artifact_family(Path(spec)) == "igpt"

    def owns_info(self, info: ModelInfo) -> bool:
        return info.family == "igpt" or info.extra.get("task") == "pixels"

    def owns_data(self, spec: str) -> bool:
        from tvc.data.pixels import is_pixel_spec

        return is_pixel_spec(spec)

    # --------------------------------------------------------------------------------- data
    def load_data(
        self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None, seed: int = 0
    ) -> PixelData:
        from tvc.data.pixels import load_pixels
        from tvc.models.igpt import palette_of

        palette, size = palette_of(info), (info.input_size[1], info.input_size[2])
        pixels = load_pixels(spec, split, palette, size, limit=limit, seed=seed)
        probe = None
        if split != "train":
            n = PROBE_TRAIN if limit is None else min(PROBE_TRAIN, max(200, 2 * limit))
            probe = load_pixels(spec, "train", palette, size, limit=n, seed=seed + 1)
        return PixelData(pixels, probe, bool(info.extra.get("finetuned", False)))

    def sample_inputs(self, info: ModelInfo, data_spec: str | None, n: int) -> tuple[Any, str]:
        import torch

        if data_spec is None:
            from tvc.export.kv_decoder import random_tokens

            return torch.from_numpy(random_tokens(info, n)), "random tokens"
        data = self.load_data(data_spec, "test", info, limit=n)
        return torch.from_numpy(data.pixels.tokens[:n]), f"{data.pixels.name} test images"

    # ----------------------------------------------------------------------------- running
    def outputs(self, model: Any, x: Any) -> Outputs:
        import torch

        model.eval()
        t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x, dtype=np.int64))
        device = next(model.parameters()).device
        with torch.inference_mode():
            out = model(t.to(device=device, dtype=torch.int64))
        return {k: v.float().cpu().numpy() for k, v in zip(OUTPUT_NAMES, out, strict=True)}

    def agreement(
        self, reference: Outputs, candidate: Outputs, *, info: ModelInfo | None = None
    ) -> dict[str, Any]:
        return token_agreement(reference, candidate)

    def evaluate(
        self,
        predict: Predict,
        data: PixelData,
        *,
        batch_size: int = 64,
        reference: Predict | None = None,
    ) -> dict[str, Any]:
        return evaluate_pixels(predict, data, batch_size=batch_size, reference=reference)

    def headline(self, quality: dict[str, Any]) -> dict[str, Any]:
        out = {self.metric: quality[self.metric], self.quality_key: quality}
        for k in ("probe_accuracy", "class_top1"):
            if quality.get(k) is not None:
                out[k] = quality[k]
        return out

    def describe(self, quality: dict[str, Any]) -> str:
        q = quality
        parts = [f"{q['bpd']:.3f} bits/dim"]
        if q.get("probe_accuracy") is not None:
            parts.append(f"linear probe {q['probe_accuracy']:.2f}%")
        if q.get("class_top1") is not None:
            parts.append(f"fine-tuned top-1 {q['class_top1']:.2f}%")
        return ", ".join(parts) + f" on {q['n']} images"

    def eval_line(self, result: dict[str, Any]) -> str:
        r = result
        agree = (
            f", next-token agreement {r['agreement']:.3f}" if r.get("agreement") is not None else ""
        )
        return (
            f"{r['variant']} [{r['backend']}]: {self.describe(r)[: -len(' images')]} "
            f"{r['dataset']} {r['split']} images{agree}"
        )

    # --------------------------------------------------------------------- train, compress
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict:
        """Pretraining by next-pixel NLL; fine-tuning for classification when settings say
        `finetune: true` (or `objective: finetune`)."""
        from tvc.data.pixels import load_pixels
        from tvc.models.igpt import palette_of
        from tvc.train.pixels import PixelTrainConfig, finetune, pretrain

        info = loaded.info
        cfg = PixelTrainConfig.from_settings(settings)
        pal, size = palette_of(info), (info.input_size[1], info.input_size[2])
        train = load_pixels(
            data_spec, "train", pal, size, limit=first_set(settings, "limit"), seed=cfg.seed
        )
        # read before training: a missing test split must not cost a finished run
        test = self.load_data(data_spec, "test", info, limit=first_set(settings, "eval_limit"))
        tuning = bool(settings.get("finetune")) or settings.get("objective") == "finetune"
        test.finetuned = test.finetuned or tuning  # what the trained model will be
        if tuning:
            if train.labels is None:
                raise DataError(
                    f"{data_spec} has no labels to fine-tune on",
                    "fine-tune on labelled data, or pretrain",
                )
            report = finetune(loaded.model, train.tokens, train.labels, cfg)
            info.extra["finetuned"] = True
        else:
            report = pretrain(loaded.model, train.tokens, cfg)
        quality = self.quality(loaded, test)
        return {
            **self.headline(quality),
            "training": {
                **report,
                "objective": "finetune" if tuning else "pretrain",
                "data": data_spec,
                "limit": settings.get("limit"),
            },
        }

    def prune(
        self, model: Any, settings: dict[str, Any], *, example: Any, batches: list | None = None
    ) -> dict[str, Any]:
        ratio = first_set(settings, "prune", "ratio", default=0.3)
        from tvc.compress.igpt import prune_igpt

        return prune_igpt(
            model,
            float(ratio),
            heads=settings.get("heads", True),
            mlp=settings.get("mlp", True),
            round_to=int(first_set(settings, "round_to", default=8)),
        )

    def factorize(self, model: Any, lowrank: Any, *, samples: Any) -> dict[str, Any]:
        from tvc.compress.igpt import factorize_igpt

        return factorize_igpt(model, lowrank)

    def distill(
        self, student: LoadedModel, teacher: LoadedModel, data_spec: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        from tvc.data.pixels import load_pixels
        from tvc.models.igpt import palette_of
        from tvc.train.pixels import PixelTrainConfig, distill_pixels

        if student.info.extra.get("palette") != teacher.info.extra.get("palette"):
            raise ConfigError(
                "the student and the teacher use different palettes",
                "distil from a teacher with the student's palette",
            )
        cfg = PixelTrainConfig.from_settings({"lr": 5e-4, **settings})
        info = student.info
        pal, size = palette_of(info), (info.input_size[1], info.input_size[2])
        train = load_pixels(
            data_spec, "train", pal, size, limit=first_set(settings, "limit"), seed=cfg.seed
        )
        return distill_pixels(student.model, teacher.model, train.tokens, cfg)

    # ------------------------------------------------------------------------------ export
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        return OnnxIO(
            inputs=(INPUT_NAME,),
            outputs=OUTPUT_NAMES,
            dynamic={n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)},
        )

    def eval_size(self, data: PixelData) -> int:
        """The test images and the images the linear probe is fitted on: both go through the
        model."""
        probe = data.probe_train is not None and data.pixels.labels is not None
        return len(data.pixels) + (len(data.probe_train) if probe else 0)

    def bench_extras(self, variant: Any, threads: int | None) -> dict[str, Any]:
        """Generation speed (tokens/s and ms per image, with and without the KV cache) of an
        exported variant that has its decoder graph beside it."""
        path = Path(variant.path) if variant.path else None
        art = variant.artifact
        if path is None or art is None or "model" not in art.meta:
            return {}
        from tvc.models.info import ModelInfo

        log.info("timing generation of %s with its decoder", variant.label)
        found = generation_record(path, ModelInfo.from_json(art.meta["model"]), threads)
        return {"generation": found} if found else {}

    def extra_graphs(self, loaded: LoadedModel, out_dir: Any, opset: int) -> dict[str, Any]:
        """decoder.onnx beside model.onnx, proven: cache-fill and step logits against PyTorch,
        and greedy completions identical (PyTorch, ORT with the cache, ORT without)."""
        import tempfile

        from tvc.export.kv_decoder import (
            DECODER_FILE,
            FULL_FILE,
            decoder_parity,
            export_decoder,
            export_full,
        )

        out_dir = Path(out_dir)
        model = loaded.model.eval().cpu()
        export_decoder(model, out_dir / DECODER_FILE, opset=opset)
        x, _ = self.sample_inputs(loaded.info, None, 2)
        width = int(loaded.info.kwargs["width"])
        prefix = x.numpy()[:, : max(1, model.seq_len // 2 // width) * width]
        gen = min(model.seq_len - prefix.shape[1], 2 * width)
        full = out_dir / FULL_FILE
        if full.is_file():
            facts = decoder_parity(model, full, out_dir / DECODER_FILE, prefix, gen_tokens=gen)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                export_full(model, Path(tmp) / FULL_FILE, opset=opset)
                facts = decoder_parity(
                    model, Path(tmp) / FULL_FILE, out_dir / DECODER_FILE, prefix, gen_tokens=gen
                )
        return {DECODER_FILE: facts}


def generation_record(full: Path, info: ModelInfo, threads: int | None) -> dict[str, Any] | None:
    """Generation speed of the full-sequence graph `full` with its decoder beside it (DECODER_OF):
    one whole image from the start token, greedy, with and without the key/value cache, as a
    records.Generation dict; None when there is no such decoder."""
    from tvc.export.kv_decoder import DECODER_OF, generation_speed, sequence_of

    dec = full.parent / DECODER_OF.get(full.name, "-")
    if not dec.is_file():
        return None
    length, start = sequence_of(info)
    g = generation_speed(full, dec, np.zeros((1, 0), np.int64), total=length, start=start,
                         threads=threads)  # fmt: skip
    return {
        "decoder": dec.name,
        "tokens": length,
        "tokens_per_s": g["kv_cache"]["tokens_per_s"],
        "ms_per_image": round(g["kv_cache"]["s_per_image"] * 1e3, 2),
        "no_cache_tokens_per_s": g["no_cache"]["tokens_per_s"],
        "speedup": g["speedup"],
        "same_tokens": g["same_tokens"],
    }


def onnx_predictor(path: str | Path, threads: int | None = None) -> Predict:
    """predict(tokens) -> {"logits", "features", "class_logits"} under ONNX Runtime."""
    from tvc.export.kv_decoder import run_full
    from tvc.runtime.ort import session_from_onnx

    sess = session_from_onnx(path, threads=threads)
    names = [o.name for o in sess.get_outputs()]

    def predict(x: np.ndarray) -> Outputs:
        return dict(zip(names, run_full(sess, x, names), strict=True))

    return predict


# ----------------------------------------------------------------------- quality, agreement


def token_agreement(reference: Outputs, candidate: Outputs) -> dict[str, Any]:
    """Largest |difference| of the logits, and the share of positions whose most likely next
    token agrees (`agreement`); class agreement when both have class logits."""
    r = np.asarray(reference["logits"], np.float64)
    c = np.asarray(candidate["logits"], np.float64)
    out = {
        "max_abs_diff": float(np.abs(r - c).max()) if r.size else 0.0,
        "agreement": float((r.argmax(-1) == c.argmax(-1)).mean()) if r.size else 1.0,
        "n": int(r.shape[0]),
    }
    if "class_logits" in reference and "class_logits" in candidate:
        out["class_agreement"] = float(
            (reference["class_logits"].argmax(-1) == candidate["class_logits"].argmax(-1)).mean()
        )
    return out


def evaluate_pixels(
    predict: Predict, data: PixelData, *, batch_size: int = 64, reference: Predict | None = None
) -> dict[str, Any]:
    """bits/dim on data's split; the linear probe (fitted on data.probe_train's features) and
    the fine-tuned accuracy where labels exist; next-token agreement with `reference`."""
    from tvc.eval.pixels import classification_accuracy, collect, fit_probe

    px = data.pixels
    got = collect(predict, px.tokens, batch_size)
    result: dict[str, Any] = {
        "bpd": float(got["bpd"]),
        "n": len(px),
        "dataset": px.name,
        "split": px.split,
    }
    if px.labels is not None and data.probe_train is not None and "features" in got:
        train = collect(predict, data.probe_train.tokens, batch_size, keys=("features",))
        probe = fit_probe(
            train["features"],
            data.probe_train.labels,
            num_classes=int(max(px.labels.max(), data.probe_train.labels.max()) + 1),
        )
        result["probe_accuracy"] = 100.0 * probe.accuracy(got["features"], px.labels)
        result["probe_train_images"] = len(data.probe_train)
    if px.labels is not None and data.finetuned and "class_logits" in got:
        result["class_top1"] = 100.0 * classification_accuracy(got["class_logits"], px.labels)
    if reference is not None:
        same, total, worst = 0, 0, 0.0
        for s in range(0, len(px), batch_size):
            x = px.tokens[s : s + batch_size]
            a = token_agreement(reference(x), predict(x))
            same += a["agreement"] * x.size
            total += x.size
            worst = max(worst, a["max_abs_diff"])
        result["agreement"] = same / max(1, total)
        result["max_abs_diff"] = worst
    return result


def pixel_baseline(data: PixelData) -> float:
    """Linear-probe accuracy (%) on the model's input pixels themselves (the decoded palette
    values at the model's resolution): what features must beat."""
    from tvc.eval.pixels import fit_probe

    if data.probe_train is None or data.pixels.labels is None:
        raise DataError(
            "the raw-pixel baseline needs labels and probe training images",
            "evaluate on a labelled test or val split",
        )
    tr = data.probe_train.images().reshape(len(data.probe_train), -1).astype(np.float64)
    te = data.pixels.images().reshape(len(data.pixels), -1).astype(np.float64)
    probe = fit_probe(tr, data.probe_train.labels)
    return 100.0 * probe.accuracy(te, data.pixels.labels)


# ------------------------------------------------------------------------------- pruning


def complete_images(
    target: str | Path,
    out: str | Path,
    *,
    prefix_rows: int,
    n: int = 8,
    data: str = "fashion-mnist-pixels",
    threads: int | None = None,
    seed: int = 0,
    decoder: str = "decoder.onnx",
    force: bool = False,
) -> dict[str, Any]:
    """Complete `n` test images from their top `prefix_rows` rows with the model at `target`
    (an ONNX artifact holding the `decoder` graph, or a PyTorch model artifact / name) by
    greedy decoding, and save a picture grid (rows: prefix | completion | original) at
    `out` (a .png file; an existing one is replaced only with `force`)."""
    from tvc.artifact import is_artifact, load_artifact
    from tvc.data.pixels import Palette, load_pixels, unraster
    from tvc.eval.pixels import save_grid
    from tvc.export.kv_decoder import DECODER_FILE, DECODER_OF, generate_with_cache, sequence_of
    from tvc.models.info import ModelInfo
    from tvc.safe_io import check_output_file

    # before any work: a bad -o must not cost a generation
    check_output_file(out, "-o", force=force, suffixes=(".png",))
    meta = load_artifact(target).meta if is_artifact(target) else None
    info = ModelInfo.from_json(meta["model"]) if meta and "model" in meta else None
    if meta is not None and meta.get("kind") == "onnx":
        decoders = sorted(set(DECODER_OF.values()) & set(meta.get("files", {})))
        if decoder not in decoders:
            fix = (
                f"pass --decoder with one of {', '.join(decoders)}"
                if decoders
                else "export the iGPT model again with this tvc"
            )
            raise DataError(f"{target} has no {decoder}", fix)
        dec = Path(target) / decoder
        backend = "ort" if decoder == DECODER_FILE else f"ort {decoder}"
    else:
        from tvc.models.load import load_model

        if decoder != DECODER_FILE:
            raise ConfigError(
                f"--decoder {decoder} names a graph of an exported artifact; {target} is not one",
                f"export it first (tvc export {target} --int8) and pass that artifact",
            )
        loaded = load_model(str(target))
        info, backend = loaded.info, "torch"
    if info is None or info.family != "igpt":
        raise ConfigError(f"{target} is not an Image GPT model", "pass an igpt artifact")
    palette = Palette.from_json(info.extra["palette"])
    h, w = info.input_size[1], info.input_size[2]
    if not 0 <= prefix_rows < h:
        raise ConfigError(
            f"--prefix-rows must be in 0..{h - 1}, got {prefix_rows}",
            f"e.g. --prefix-rows {h // 2}",
        )
    test = load_pixels(data, "test", palette, (h, w), limit=n, seed=seed)
    prefix = test.tokens[:, : prefix_rows * w]
    if backend.startswith("ort"):
        from tvc.runtime.ort import session_from_onnx

        sess = session_from_onnx(dec, threads=threads)
        done = generate_with_cache(sess, prefix, h * w, sequence_of(info)[1])
    else:
        import torch

        from tvc.models.igpt import generate_greedy

        done = generate_greedy(loaded.model, torch.from_numpy(prefix)).numpy()
    given = test.tokens.copy()
    given[:, prefix_rows * w :] = -1
    grid = save_grid(
        out,
        [unraster(given, (h, w)), unraster(done, (h, w)), unraster(test.tokens, (h, w))],
        palette,
    )
    exact = float((done[:, prefix_rows * w :] == test.tokens[:, prefix_rows * w :]).mean())
    return {
        "out": str(grid),
        "images": len(test),
        "prefix_rows": prefix_rows,
        "backend": backend,
        "pixel_match": exact,
    }
