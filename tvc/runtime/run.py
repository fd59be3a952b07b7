"""`tvc bench`: open each variant of a target on each backend, time it, make records."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.artifact import is_artifact, load_artifact
from tvc.deps import available
from tvc.errors import ConfigError, MissingDependencyError
from tvc.runtime.bench import BenchConfig, make_record, time_runner
from tvc.runtime.targets import Variant, onnx_variants

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet

log = logging.getLogger("tvc")
BACKENDS = ("ort", "torch", "trt")


def open_runner(backend: str, variant: Variant, cfg: BenchConfig, loaded=None):
    """A Runner for `variant` on `backend`."""
    if backend == "ort":
        from tvc.runtime.ort import OrtRunner

        return OrtRunner(variant.path, threads=cfg.threads, provider=cfg.provider)
    if backend == "torch":
        from tvc.runtime.torch_runner import TorchRunner

        return TorchRunner(loaded, threads=cfg.threads)
    if backend == "trt":
        from tvc.runtime.trt import TrtRunner

        return TrtRunner(variant.path)
    raise ConfigError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")


def variants_for(target: str, backend: str, model_kwargs: dict[str, Any]):
    """(variant, loaded torch model or None) pairs that `backend` can run for `target`."""
    path = Path(target)
    if path.is_file() and path.suffix == ".engine":
        raise ConfigError(
            f"{target} is a bare TensorRT engine file; tvc benchmarks engines inside the export "
            "artifact they were built into (its artifact.json says how to feed and check them)",
            "tvc export ART --trt -o OUT builds one there; then run: tvc bench OUT --backend trt",
        )
    if backend == "trt" and not available("tensorrt"):
        raise MissingDependencyError(
            "--backend trt needs TensorRT, which is not installed here",
            "install it with: pip install 'tvc[trt]' (on a Jetson, JetPack's TensorRT), "
            "or use --backend ort",
        )
    if backend == "ort":
        found = onnx_variants(target)
        if not found:
            raise ConfigError(
                f"{target} has no ONNX model to run on ONNX Runtime",
                f"export it first: tvc export {target} -o OUT, then tvc bench OUT",
            )
        return [(v, None) for v in found]
    if backend == "torch":
        from tvc.models import load_model

        if path.suffix == ".onnx":
            raise ConfigError(
                f"{target} is an ONNX file; the torch backend needs the PyTorch model",
                "pass the model name or its model artifact, or use --backend ort",
            )
        loaded = load_model(target, **model_kwargs)
        art = loaded.artifact
        v = Variant(
            f"{loaded.info.name} fp32",
            "fp32",
            None,
            art,
            loaded.info.name,
            art.size_bytes if art else None,
        )
        if art is None:
            v.extra["params"] = int(sum(p.numel() for p in loaded.model.parameters()))
        return [(v, loaded)]
    if backend == "trt":
        if not is_artifact(path) or not load_artifact(path).has("model.engine"):
            raise ConfigError(
                f"{target} has no TensorRT engine",
                f"build one on this machine: tvc export {target} --trt -o OUT",
            )
        art = load_artifact(path)
        name = art.meta.get("model", {}).get("name", path.name)
        prec = art.meta.get("engine", {}).get("precision", "fp32")
        return [
            (
                Variant(
                    f"{name} trt-{prec}",
                    prec,
                    art.path / "model.engine",
                    art,
                    name,
                    art.meta["files"]["model.engine"]["bytes"],
                ),
                None,
            )
        ]
    raise ConfigError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")


def bench_target(
    target: str,
    cfg: BenchConfig,
    *,
    command: str,
    model_kwargs: dict[str, Any],
    data: str | None = None,
    limit: int | None = None,
):
    """Benchmark every variant of `target` on every backend and batch; return bench records.

    With `data`, each variant's top-1/top-5 on that dataset's test split goes into its records;
    for a detector (DETR-style outputs `logits` + `boxes`) and detection data, its COCO mAP.
    """
    if not Path(target).exists() and "ort" in cfg.backends and len(cfg.backends) == 1:
        # a model name with the default backend: say what to do rather than guess
        from tvc.models.registry import resolve

        resolve(target)  # raises a helpful error for unknown names
        raise ConfigError(
            f"{target} is a model name; ONNX Runtime needs an exported model",
            f"run 'tvc export {target} -o OUT' then 'tvc bench OUT', or use --backend torch",
        )
    records = []
    images = None
    if data is not None:
        from tvc.data.detection import is_detection_spec
        from tvc.eval.run import DataCache

        images = (
            DetectionCache(data, limit) if is_detection_spec(data) else DataCache(data, limit=limit)
        )
    from tvc.runtime.power import find_power_source

    power = find_power_source()  # Jetson rails, NVML; None on a plain CPU host
    try:
        for backend in cfg.backends:
            for variant, loaded in variants_for(target, backend, model_kwargs):
                with open_runner(backend, variant, cfg, loaded) as runner:
                    quality = _quality(runner, images, variant, loaded) if images else {}
                    for batch in cfg.batches:
                        log.info("timing %s on %s, batch %d", variant.label, backend, batch)
                        stats = time_runner(
                            runner,
                            batch,
                            warmup_s=cfg.warmup_s,
                            min_runs=cfg.min_runs,
                            min_time_s=cfg.min_time_s,
                        )
                        records.append(
                            make_record(
                                variant,
                                runner,
                                batch,
                                stats,
                                command,
                                **quality,
                                **_device_measurements(runner, batch, stats.n, power),
                            )
                        )
    finally:
        if power is not None:
            power.close()
    return records


class DetectionCache:
    """The test split of detection DATA, loaded once however many variants are measured."""

    def __init__(self, spec: str, limit: int | None = None) -> None:
        self.spec, self.limit = spec, limit
        self._data = None

    def get(self) -> DetectionSet:
        if self._data is None:
            from tvc.data.detection import load_detection

            self._data = load_detection(self.spec, "test", limit=self.limit)
        return self._data


def _quality(runner, images, variant, loaded) -> dict[str, Any]:
    """The record's accuracy (classifier) or detection mAP (detector) on the bench data."""
    detector = runner.is_detector
    if isinstance(images, DetectionCache) != detector:
        if detector:
            raise ConfigError(
                f"{variant.label} is a detector but --data {images.spec} is not detection data",
                "pass detection data, e.g. --data fashion-mnist-det or a COCO-format directory",
            )
        raise ConfigError(
            f"{variant.label} is a classifier but --data {images.spec} is detection data",
            "pass classification data (e.g. --data fashion-mnist), or bench a detector",
        )
    log.info("evaluating %s on %s", variant.label, images.spec)
    if detector:
        return {"detection": _detection(runner, images, variant, loaded)}
    from tvc.eval.run import accuracy_of
    from tvc.report.schema import Accuracy

    return {"accuracy": Accuracy(**accuracy_of(runner, images, variant=variant, loaded=loaded))}


def _detection(runner, images: DetectionCache, variant, loaded):
    """COCO mAP of a detector runner; its preprocessing comes from the model or its artifact."""
    from tvc.eval.detection import evaluate_detector, runner_predictor
    from tvc.report.schema import Detection

    if loaded is not None:
        facts = loaded.info.to_json()
    else:
        facts = (variant.artifact.meta.get("model") or {}) if variant.artifact else {}
    if "no_object_class" not in (facts.get("extra") or {}):
        raise ConfigError(
            f"{variant.path} is a bare ONNX file; a detector's preprocessing is not in it",
            "bench the export artifact directory that holds it",
        )
    res = evaluate_detector(
        runner_predictor(runner),
        images.get(),
        input_size=tuple(facts["input_size"]),
        mean=tuple(facts["mean"]),
        std=tuple(facts["std"]),
        no_object_class=bool(facts["extra"]["no_object_class"]),
    )
    return Detection(**{k: res[k] for k in ("dataset", "split", "n", "map", "ap50", "ap75")})


def _device_measurements(runner, batch: int, n: int, power) -> dict[str, Any]:
    """GPU compute time (TensorRT, from CUDA events) and energy per image where measurable."""
    from tvc.report.schema import Energy, Latency
    from tvc.runtime.power import PowerSampler

    fields: dict[str, Any] = {}
    if hasattr(runner, "gpu_time_ms"):
        fields["gpu_compute_ms"] = Latency(**runner.gpu_time_ms(batch)["gpu_compute_ms"])
    if power is not None:
        feeds = runner.sample_feeds(batch)
        with PowerSampler(power) as sampler:
            for _ in range(n):
                runner.infer(feeds)
        energy = sampler.energy(n * batch)
        if energy:
            fields["energy"] = Energy(**energy)
    return fields
