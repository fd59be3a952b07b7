"""`tvc eval` and bench accuracy: run real data through the thing that ships.

A target is a PyTorch model (name, HF directory, model artifact) run by TorchRunner, or an export
artifact / ONNX file whose every variant (FP32, FP16, INT8) runs on ONNX Runtime (or TensorRT).
Each variant gets the images prepared for its input: size, mean and std from the artifact's
model section. No torch import here: ONNX evaluation runs on a board.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tvc.artifact import is_artifact, load_artifact
from tvc.data import load_images
from tvc.data.base import ImageSet
from tvc.errors import ConfigError
from tvc.eval.classification import evaluate, runner_predict

log = logging.getLogger("tvc")
DEFAULT_MEAN_STD = (0.5, 0.5, 0.5)


def default_backend(target: str) -> str:
    """ort for ONNX files and export artifacts, torch for everything else."""
    p = Path(target)
    if p.suffix == ".onnx":
        return "ort"
    if is_artifact(p) and load_artifact(p, verify=False).kind != "model":
        return "ort"
    return "torch"


def data_view(runner, variant=None, loaded=None) -> dict[str, Any]:
    """input_size / mean / std for a runner: from the model, its artifact, or its input shape."""
    if loaded is not None:
        info = loaded.info
        return {"input_size": tuple(info.input_size), "mean": info.mean, "std": info.std}
    model = (variant.artifact.meta.get("model") or {}) if variant and variant.artifact else {}
    shape = runner.inputs[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(
            f"the model's input {runner.inputs[0].describe()} has dynamic image dimensions",
            "export the model with a fixed input size",
        )
    if "mean" not in model:
        log.warning(
            "%s carries no mean/std (not a tvc artifact); normalising with mean=std=0.5",
            variant.path if variant else "the model",
        )
    return {
        "input_size": tuple(int(d) for d in shape),
        "mean": tuple(model.get("mean", DEFAULT_MEAN_STD)),
        "std": tuple(model.get("std", DEFAULT_MEAN_STD)),
    }


class DataCache:
    """Load each (split, view) of one dataset once, however many variants need it."""

    def __init__(self, spec: str, *, split: str = "test", limit: int | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        self.spec, self.split, self.limit, self.seed = spec, split, limit, seed
        self._sets: dict[tuple, ImageSet] = {}

    def get(self, view: dict[str, Any]) -> ImageSet:
        key = (view["input_size"], tuple(view["mean"]), tuple(view["std"]))
        if key not in self._sets:
            self._sets[key] = load_images(self.spec, self.split, limit=self.limit,
                                          seed=self.seed, **view)  # fmt: skip
            if self._sets[key].skipped:
                log.warning("%s", self._sets[key].summary())
        return self._sets[key]


def accuracy_of(runner, data: DataCache, *, variant=None, loaded=None, reference=None,
                batch_size: int = 64) -> dict[str, Any]:  # fmt: skip
    """evaluate() for one open runner; `reference` is (runner, view) or None."""
    if runner.is_detector:
        label = variant.label if variant is not None else "the model"
        raise ConfigError(
            f"{label} is a detector but --data {data.spec} is classification data",
            "pass detection data, e.g. --data fashion-mnist-det or a COCO-format directory",
        )
    view = data_view(runner, variant, loaded)
    ref_predict = None
    if reference is not None:
        ref_runner, ref_view = reference
        if ref_view != view:
            raise ConfigError(
                f"the reference model takes other inputs ({ref_view['input_size']}, mean "
                f"{ref_view['mean']}) than the model ({view['input_size']}, mean {view['mean']})",
                "compare against a reference with the same input size and normalisation",
            )
        ref_predict = runner_predict(ref_runner)
    return evaluate(runner_predict(runner), data.get(view), batch_size=batch_size,
                    reference=ref_predict)  # fmt: skip


def eval_target(
    target: str,
    data_spec: str,
    *,
    backend: str | None = None,
    limit: int | None = None,
    split: str = "test",
    reference: str | None = None,
    variant_file: str | None = None,
    threads: int | None = None,
    provider: str = "cpu",
    batch_size: int = 64,
    model_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Accuracy of every variant of `target` (or the one named `variant_file`)."""
    from tvc.runtime.bench import BenchConfig
    from tvc.runtime.run import open_runner, variants_for

    backend = backend or default_backend(target)
    cfg = BenchConfig(backends=(backend,), threads=threads, provider=provider)
    found = variants_for(target, backend, model_kwargs or {})
    if variant_file:
        found = [(v, m) for v, m in found if v.path is not None and v.path.name == variant_file]
        if not found:
            raise ConfigError(f"{target} has no variant '{variant_file}'",
                              "list its files in artifact.json, e.g. model.int8.onnx")  # fmt: skip
    data = DataCache(data_spec, split=split, limit=limit)
    ref = _open_reference(reference, cfg, model_kwargs) if reference else None
    results = []
    try:
        for variant, loaded in found:
            with open_runner(backend, variant, cfg, loaded) as runner:
                res = accuracy_of(runner, data, variant=variant, loaded=loaded, reference=ref,
                                  batch_size=batch_size)  # fmt: skip
            results.append({"variant": variant.label, "precision": variant.precision,
                            "backend": backend, "path": str(variant.path or target),
                            **res})  # fmt: skip
    finally:
        if ref is not None:
            ref[0].close()
    return results


def _open_reference(reference: str, cfg, model_kwargs):
    """The reference's runner (its FP32 variant) and input view."""
    from tvc.runtime.bench import BenchConfig
    from tvc.runtime.run import open_runner, variants_for

    backend = default_backend(reference)
    ref_cfg = BenchConfig(backends=(backend,), threads=cfg.threads, provider=cfg.provider)
    kwargs = {} if Path(reference).exists() else {k: v for k, v in (model_kwargs or {}).items()
                                                  if k == "num_classes"}  # fmt: skip
    variant, loaded = variants_for(reference, backend, kwargs)[0]
    runner = open_runner(backend, variant, ref_cfg, loaded)
    return runner, data_view(runner, variant, loaded)
