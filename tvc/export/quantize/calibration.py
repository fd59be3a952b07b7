"""Calibration data for static INT8: images checked against the model input, fed to ONNX
Runtime's calibrator in chunks, and the ONNX Runtime static quantization call itself."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import ConfigError, DataError, UnsupportedModelError, first_line
from tvc.export.quantize.config import CALIB_CHUNK_IMAGES, CALIB_METHODS, LINEAR_OPS, QuantConfig
from tvc.export.quantize.graph import InputSpec

if TYPE_CHECKING:
    from tvc.data.base import ImageSet


def check_image_size(data: ImageSet, inputs: InputSpec, what: str) -> None:
    size = tuple(getattr(data, "input_size", ()) or ())
    if not size:
        return
    if any(want is not None and got != want for got, want in zip(size, inputs.chw, strict=False)):
        fmt = "x".join(str(d) if d else "?" for d in inputs.chw)
        raise DataError(
            f"the {what} images are {'x'.join(map(str, size))} but the model expects {fmt}",
            "load the data at the model's input size (tvc does this for DATA specs it loads)",
        )


def calibration_images(calib: ImageSet, cfg: QuantConfig, inputs: InputSpec) -> np.ndarray:
    from tvc.data.base import seeded_subset

    if calib is None or len(calib) == 0:
        name = getattr(calib, "name", "the calibration set")
        raise DataError(
            f"{name} has no images to calibrate on", "pass --calib with at least one image"
        )
    check_image_size(calib, inputs, "calibration")
    x, _ = calib.take(seeded_subset(len(calib), cfg.calib_size, cfg.seed))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if any(
        want is not None and got != want for got, want in zip(x.shape[1:], inputs.chw, strict=False)
    ):
        raise DataError(
            f"calibration images have shape {x.shape[1:]}, the model expects {inputs.chw}",
            "load the data at the model's input size",
        )
    return x


def check_inputs(data: ImageSet | None, inputs: InputSpec, n: int, seed: int) -> np.ndarray:
    if data is not None and len(data):
        from tvc.data.base import seeded_subset

        check_image_size(data, inputs, "check")
        return data.take(seeded_subset(len(data), n, seed))[0]
    if any(d is None for d in inputs.chw):
        raise DataError(
            "the model input has dynamic image dimensions",
            "pass check_data to compare the INT8 model",
        )
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, *inputs.chw)).astype(np.float32)


class CalibrationReader:
    """Feeds calibration batches to ORT; supports ORT's strided (chunked) calibration.

    Duck-typed like onnxruntime.quantization.CalibrationDataReader (ORT only calls get_next,
    and len/set_range for strided calibration).
    """

    def __init__(self, items: list[dict[str, np.ndarray]], batch: int, on_item=None) -> None:
        self.items, self.batch = items, batch  # feed dicts, each of `batch` samples
        self.on_item = on_item  # called with the batch size of every item handed out
        self.start, self.end = 0, len(items)
        self._pos = 0

    @classmethod
    def of_images(cls, x: np.ndarray, inputs: InputSpec, on_item=None) -> CalibrationReader:
        """Batches of images `x` for the model's one input."""
        b = inputs.fixed_batch or min(8, len(x))
        pad = (-len(x)) % b
        if pad:  # a fixed-batch model needs full batches: repeat the last images
            x = np.concatenate([x, x[-1:].repeat(pad, axis=0)])
        return cls([{inputs.name: x[i : i + b]} for i in range(0, len(x), b)], b, on_item)

    @classmethod
    def of_feeds(cls, feeds: list[dict[str, np.ndarray]]) -> CalibrationReader:
        """A reader over ready feed dicts (a model with several inputs: iGPT's decoder with its
        key/value cache), every feed one item."""
        return cls(list(feeds), len(next(iter(feeds[0].values()))) if feeds else 1)

    def __len__(self) -> int:
        return len(self.items)

    def stride(self, images: int) -> int:
        """The largest number of items <= `images` worth that divides the item count."""
        want = max(1, images // self.batch)
        return max(d for d in range(1, min(want, len(self.items)) + 1) if len(self.items) % d == 0)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._pos = start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= min(self.end, len(self.items)):
            return None
        item = self.items[self._pos]
        self._pos += 1
        if self.on_item is not None:
            self.on_item(self.batch)
        return item


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's quantizer warns on the root logger and prints progress; keep the CLI readable."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def run_static(
    prepared: Path,
    out: Path,
    x: np.ndarray,
    inputs: InputSpec,
    cfg: QuantConfig,
    nodes: list[str],
    exclude: list[str],
) -> None:
    from tvc.export.quantize.progress import step

    reader = CalibrationReader.of_images(x, inputs)
    with step(f"calibrating static INT8 on {len(x)} images", len(reader) * reader.batch) as bar:
        reader.on_item = bar.advance
        run_static_reader(prepared, out, reader, cfg, nodes, exclude)


def run_static_reader(
    prepared: Path,
    out: Path,
    reader: CalibrationReader,
    cfg: QuantConfig,
    nodes: list[str],
    exclude: list[str],
) -> None:
    """ORT's static Q/DQ quantizer with the settings TensorRT builds (symmetric int8, float
    biases), calibrated on what `reader` hands out."""
    from onnxruntime import quantization as oq

    extra: dict[str, Any] = {
        "ActivationSymmetric": True,  # zero point 0: what TensorRT requires
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        "QuantizeBias": False,  # TensorRT cannot parse int32 bias DQ; biases stay float
    }
    if cfg.calib_method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    stride = reader.stride(CALIB_CHUNK_IMAGES)
    if stride < len(reader):  # calibrate in chunks so activations of all images never pile up
        extra["CalibStridedMinMax"] = stride
    kwargs: dict[str, Any] = {}
    if cfg.ops == "safe":
        # Only the Linear layers' inputs; their outputs (feeding residual Adds, GELU, attention)
        # stay float.
        kwargs.update(op_types_to_quantize=list(LINEAR_OPS), nodes_to_quantize=nodes)
        extra["OpTypesToExcludeOutputQuantization"] = list(LINEAR_OPS)
    else:
        kwargs.update(nodes_to_exclude=exclude)
    try:
        with quiet_ort():
            oq.quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=oq.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=cfg.reduce_range(),
                activation_type=oq.QuantType.QInt8,
                weight_type=oq.QuantType.QInt8,
                calibrate_method=getattr(oq.CalibrationMethod, CALIB_METHODS[cfg.calib_method]),
                extra_options=extra,
                **kwargs,
            )
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # ORT raises plain Exceptions/ValueErrors of many kinds
        first = first_line(exc)
        raise UnsupportedModelError(
            f"ONNX Runtime could not quantize {prepared.name}: {first}",
            "try --calib-method minmax, --int8-ops safe, or --int8 dynamic",
        ) from exc
