"""PyTorch -> ONNX: export, check, simplify, and prove parity with ONNX Runtime.

LayerNormalization stays one fused op (opset >= 17), which keeps FP16 builds from overflowing in a
decomposed Pow/ReduceMean. The simplified graph is kept only if it still matches PyTorch.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvc.artifact import Artifact, write_artifact
from tvc.errors import ConfigError, ExportError, first_line
from tvc.export.parity import Parity, compare, require_parity
from tvc.finite import check_finite_model

log = logging.getLogger("tvc")

MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


@dataclass
class OnnxExportConfig:
    opset: int = 17
    batch: int = 1
    dynamic_batch: bool = False
    simplify: bool = True
    parity_samples: int = 4
    atol: float = 1e-4
    rtol: float = 1e-3

    def validate(self) -> None:
        check_opset_and_batch(self.opset, self.batch)


def check_opset_and_batch(opset: int, batch: int) -> None:
    """The export settings every model shares: an opset with LayerNormalization, batch >= 1."""
    if opset < MIN_OPSET:
        raise ConfigError(
            f"--opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}",
            f"use --opset {MIN_OPSET} or newer",
        )
    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}", "use --batch 1")


def export_onnx(loaded, out: str | Path, config: OnnxExportConfig) -> Artifact:
    """Export `loaded` (a LoadedModel) to an ONNX artifact at `out`."""
    config.validate()
    spec = {
        "stage": "export-onnx",
        "opset": config.opset,
        "batch": config.batch,
        "dynamic_batch": config.dynamic_batch,
        "simplify": config.simplify,
        "source": loaded.info.name,
    }
    with write_artifact(out, "onnx", parent=loaded.artifact, spec=spec) as w:
        export_into(w, loaded, config)
    from tvc.artifact import load_artifact

    return load_artifact(out)


def export_into(w, loaded, config: OnnxExportConfig) -> None:
    """Export, check, simplify and prove `loaded` into the artifact being staged by `w`."""
    import torch

    config.validate()
    model, info = loaded.model.eval(), loaded.info
    check_finite_model(model, "export", "the model's weights are corrupt: export a finite model")
    chans, height, width = info.input_size
    shape = (config.batch, chans, height, width)
    path = w.path_for(MODEL_FILE)
    t0 = time.perf_counter()
    _torch_export(model, torch.zeros(shape), path, config)
    export_s = time.perf_counter() - t0
    check_onnx(path)

    # Inputs for parity: a fixed-seed batch at the exported batch size (several batches
    # of it when the batch is 1, so agreement is measured on more than one sample).
    rng = np.random.default_rng(0)
    n_batches = max(1, config.parity_samples // config.batch)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(n_batches)]
    if config.dynamic_batch:
        xs.append(rng.standard_normal((config.batch + 1, chans, height, width)).astype(np.float32))
    with torch.no_grad():
        ref = [model(torch.from_numpy(x)).numpy() for x in xs]
    parity = onnx_parity(path, xs, ref, config)
    require_parity(parity, "the exported ONNX model")

    simplified = _simplify(path, xs, ref, config) if config.simplify else None
    w.meta["model"] = info.to_json()
    w.meta["precision"] = "fp32"
    w.meta["io"] = {
        "inputs": [{"name": INPUT_NAME, "shape": _dims(shape, config), "dtype": "float32"}],
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "shape": _dims((config.batch, info.num_classes), config),
                "dtype": "float32",
            }
        ],
        "dynamic_axes": {INPUT_NAME: {"0": "batch"}} if config.dynamic_batch else {},
        "mean": list(info.mean),
        "std": list(info.std),
    }
    w.meta.setdefault("variants", {})[MODEL_FILE] = {"precision": "fp32"}
    w.meta["metrics"].update(
        {
            "parity": (simplified or parity).as_dict(),
            "parity_before_simplify": parity.as_dict(),
            "simplified": simplified is not None,
            "export_seconds": round(export_s, 3),
            "params": int(sum(p.numel() for p in model.parameters())),
        }
    )
    w.meta["metrics"].update(loaded_metrics(loaded))


def loaded_metrics(loaded) -> dict[str, Any]:
    """Metrics carried forward from the source artifact (accuracy, MACs) when it has them."""
    if loaded.artifact is None:
        return {}
    keep = ("macs", "accuracy", "top1", "top5")
    return {k: v for k, v in loaded.artifact.meta.get("metrics", {}).items() if k in keep}


def _dims(shape: tuple[int, ...], config: OnnxExportConfig) -> list[int | str]:
    return ["batch" if (i == 0 and config.dynamic_batch) else d for i, d in enumerate(shape)]


def _torch_export(model, example, path: Path, config: OnnxExportConfig) -> None:
    import torch

    dynamic_axes = (
        {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if config.dynamic_batch else None
    )
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter keeps LayerNormalization fused at opset >= 17 and needs
            # no onnxscript; it is the path TensorRT's own samples use.
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=config.opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"torch.onnx.export failed: {first}",
            "try another --opset; if the model has custom ops, they need an ONNX symbolic",
        ) from exc


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"{path.name} fails onnx.checker: {first}", "the model cannot be used as exported"
        ) from exc


def onnx_parity(
    path: Path, xs: list[np.ndarray], ref: list[np.ndarray], config: OnnxExportConfig
) -> Parity:
    from tvc.runtime.ort import OrtRunner

    with OrtRunner(path, threads=1) as runner:
        got = [runner.infer(x)[OUTPUT_NAME] for x in xs]
    # Compare per batch: a dynamic-batch export adds a batch of another size.
    parities = [
        compare(r, g, atol=config.atol, rtol=config.rtol) for r, g in zip(ref, got, strict=True)
    ]
    worst = max(parities, key=lambda p: p.max_abs_diff - p.tolerance)
    n = sum(p.n for p in parities)
    agree = sum(p.top1_agreement * p.n for p in parities) / n
    return Parity(
        worst.max_abs_diff,
        float(np.mean([p.mean_abs_diff for p in parities])),
        agree,
        n,
        worst.tolerance,
    )


def _simplify(path: Path, xs, ref, config: OnnxExportConfig) -> Parity | None:
    """Simplify with onnxslim in place; keep the result only if it still matches."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        log.warning("onnxslim is not installed; keeping the unsimplified graph")
        return None
    original = path.read_bytes()
    try:
        slim = onnxslim.slim(onnx.load(str(path)))
        onnx.save(slim, str(path))
        check_onnx(path)
        parity = onnx_parity(path, xs, ref, config)
    except Exception as exc:  # onnxslim raises many types; any failure means "keep original"
        log.warning("simplification failed (%s); keeping the unsimplified graph", exc)
        path.write_bytes(original)
        return None
    if not parity.ok:
        log.warning(
            "the simplified graph differs from PyTorch (max abs diff %.3g); keeping the original",
            parity.max_abs_diff,
        )
        path.write_bytes(original)
        return None
    return parity
