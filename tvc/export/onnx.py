"""PyTorch -> ONNX for every task: export, check, simplify, and prove parity with ONNX Runtime.

The task adapter names the graph's inputs and outputs (`onnx_io`, `export_feeds`), gives the
sample inputs (`sample_inputs`) and the outputs to compare (`outputs`, `agreement`), and patches
the model reversibly around the export (`export_patches`: Deformable DETR's sampler). The
reference outputs come from the unpatched model, so parity also proves the patches.
LayerNormalization stays one fused op (opset >= 17), which keeps FP16 builds from overflowing in a
decomposed Pow/ReduceMean. The simplified graph is kept only if it still matches PyTorch.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.artifact import Artifact, write_artifact
from tvc.errors import ConfigError, ExportError, first_line
from tvc.export.parity import outputs_parity, require_outputs_parity
from tvc.finite import check_finite_model

if TYPE_CHECKING:
    from tvc.tasks import Task

log = logging.getLogger("tvc")
MERGE_POOL = 4  # token-merging models: parity images are the clearest quarter of this many

MODEL_FILE = "model.onnx"
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
    input_size: int | None = None  # a square side, for tasks whose models take any size
    pixel_mask: bool = False  # detectors: a pixel_mask input for padded images
    sampling: str = "gather"  # Deformable DETR's bilinear sampler: gather | grid

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


def export_onnx(task: Task, loaded, out: str | Path, config: OnnxExportConfig) -> Artifact:
    """Export `loaded` (a LoadedModel of `task`) to an ONNX artifact at `out`."""
    from tvc.artifact import load_artifact

    config.validate()
    spec = {"stage": "export-onnx", "task": task.name, "source": loaded.info.name,
            **asdict(config)}  # fmt: skip
    with write_artifact(out, "onnx", parent=loaded.artifact, spec=spec) as w:
        export_into(w, task, loaded, config)
    return load_artifact(out)


def export_into(w, task: Task, loaded, config: OnnxExportConfig) -> None:
    """Export, check, simplify and prove `loaded` into the artifact being staged by `w`."""
    config.validate()
    model = loaded.model.eval()
    check_finite_model(model, "export", "the model's weights are corrupt: export a finite model")
    info = task.export_info(loaded.info, config.input_size)
    feeds = task.export_feeds(info, _sample_batches(task, info, config, model), config)
    names = list(feeds[0])
    outputs = task.onnx_io(info).outputs
    ref = [_torch_outputs(task, model, f) for f in feeds]  # the unpatched model
    task.check_finite(ref[0], f"the model {info.name}")
    path = w.path_for(MODEL_FILE)
    t0 = time.perf_counter()
    with task.export_patches(model, config) as facts:
        _torch_export(model, feeds[0], names, task, info, path, config)
    export_s = time.perf_counter() - t0
    check_onnx(path)
    parity = onnx_parity(task, path, feeds, ref, config)
    require_outputs_parity(parity, f"the exported {task.noun}", task.parity_hint)
    simplified = _simplify(task, path, feeds, ref, config) if config.simplify else None

    w.meta["model"] = info.to_json()
    w.meta["task"] = task.name
    w.meta["precision"] = "fp32"
    dynamic = task.onnx_io(info).dynamic if config.dynamic_batch else {}
    w.meta["io"] = task.export_io(
        info,
        {
            "inputs": [_tensor(n, feeds[0][n], config) for n in names],
            "outputs": [_tensor(n, ref[0][n], config) for n in outputs],
            "dynamic_axes": {
                n: {str(a): d for a, d in axes.items()} for n, axes in dynamic.items() if n in names
            },
            "mean": list(info.mean),
            "std": list(info.std),
        },
    )
    w.meta.setdefault("variants", {})[MODEL_FILE] = {"precision": "fp32"}
    w.meta["metrics"].update(
        {
            "parity": simplified or parity,
            "parity_before_simplify": parity,
            "simplified": simplified is not None,
            **facts,
            "export_seconds": round(export_s, 3),
            "params": int(sum(p.numel() for p in model.parameters())),
        }
    )
    w.meta["metrics"].update(loaded_metrics(task, loaded))
    extra = task.extra_graphs(loaded, w.staging, config.opset)
    if extra:
        w.meta["metrics"]["extra_graphs"] = extra


def loaded_metrics(task: Task, loaded) -> dict[str, Any]:
    """Quality and MACs carried forward from the source artifact when it has them."""
    if loaded.artifact is None:
        return {}
    keep = {"macs", task.metric, task.quality_key, *(c.key for c in task.columns)}
    return {k: v for k, v in loaded.artifact.meta.get("metrics", {}).items() if k in keep}


def _sample_batches(task: Task, info, config: OnnxExportConfig, model) -> list[np.ndarray]:
    """Seeded batches at the exported batch size (several when it is 1, so agreement covers
    more than one sample), plus one of another size for a dynamic-batch export.

    A token-merging model draws MERGE_POOL times as many and keeps the images whose merge
    choices are clearest (tvc.models.merge.decision_margins): on a near tie ONNX Runtime may
    merge another, equally valid pair, which is not an export error but would fail parity."""
    import torch

    from tvc.models.merge import decision_margins, merging_spec

    n = max(1, config.parity_samples // config.batch)
    sizes = [config.batch] * n + ([config.batch + 1] if config.dynamic_batch else [])
    merging = merging_spec(model) is not None
    x, _ = task.sample_inputs(info, None, sum(sizes) * (MERGE_POOL if merging else 1))
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x)
    if merging:
        margins = decision_margins(model, torch.from_numpy(x)).numpy()
        clearest = np.sort(np.argsort(-margins, kind="stable")[: sum(sizes)])
        log.info(
            "token merging: parity on the %d of %d images with the clearest merge choices "
            "(smallest similarity gap %.2g)", len(clearest), len(x), margins[clearest].min(),
        )  # fmt: skip
        x = x[clearest]
    return np.split(x, np.cumsum(sizes)[:-1])


def _torch_outputs(task: Task, model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    args = tuple(torch.from_numpy(a) for a in feeds.values())
    return task.outputs(model, args[0] if len(args) == 1 else args)


def _tensor(name: str, array: np.ndarray, config: OnnxExportConfig) -> dict[str, Any]:
    shape = list(array.shape)
    if config.dynamic_batch:
        shape[0] = "batch"
    return {"name": name, "shape": shape, "dtype": str(array.dtype)}


def _torch_export(model, feeds, names, task: Task, info, path: Path, config) -> None:
    import torch

    from tvc.models.hf import static_position_embeddings

    io = task.onnx_io(info)
    dynamic_axes = (
        {n: axes for n, axes in io.dynamic.items() if n in names or n in io.outputs}
        if config.dynamic_batch
        else None
    )
    try:
        with warnings.catch_warnings(), torch.no_grad(), static_position_embeddings(model):
            warnings.simplefilter("ignore")
            # The TorchScript exporter keeps LayerNormalization fused at opset >= 17 and needs
            # no onnxscript; it is the path TensorRT's own samples use.
            torch.onnx.export(
                model,
                tuple(torch.from_numpy(feeds[n]) for n in names),
                str(path),
                input_names=names,
                output_names=list(io.outputs),
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
    task: Task, path: Path, feeds: list[dict], ref: list[dict], config: OnnxExportConfig
) -> dict[str, Any]:
    """ONNX Runtime's outputs on `feeds` against the reference outputs (outputs_parity)."""
    from tvc.runtime.ort import OrtRunner

    with OrtRunner(path, threads=1) as runner:
        got = [runner.infer(f) for f in feeds]
    return outputs_parity(task, ref, got, atol=config.atol, rtol=config.rtol)


def _simplify(task: Task, path: Path, feeds, ref, config: OnnxExportConfig) -> dict | None:
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
        parity = onnx_parity(task, path, feeds, ref, config)
    except Exception as exc:  # onnxslim raises many types; any failure means "keep original"
        log.warning("simplification failed (%s); keeping the unsimplified graph", exc)
        path.write_bytes(original)
        return None
    if not parity["ok"]:
        log.warning(
            "the simplified graph differs from PyTorch (max abs diff %.3g); keeping the original",
            parity["max_abs_diff"],
        )
        path.write_bytes(original)
        return None
    return parity
