"""INT8 settings: one validated QuantConfig, and the names of what can be quantized."""

from __future__ import annotations

from dataclasses import dataclass

from tvc.errors import ConfigError

MODES = ("static", "dynamic")


OPS = ("safe", "all")


# How much of int8 the weights use. ONNX Runtime's x86 integer kernels without VNNI (AVX2, and
# AVX-512 before VNNI) multiply with VPMADDUBSW, whose int16 sum of two uint8 x int8 products
# saturates when weights are large; 7-bit weights (reduced) cannot overflow it. On an AVX2 EPYC
# the static INT8 tests' worst logit error went from 0.039 to 0.018 with them (0.016 with no
# integer kernels at all). auto: reduced where this machine's kernels saturate, unless the
# model is for TensorRT (whose GPU kernels do not). unsigned (dynamic INT8 only): uint8 weights
# with a zero point per channel, which ORT multiplies in 16-bit lanes (no saturation, all 8
# bits): on a Zen 1 EPYC, whose integer multiplies run on one pipe either way, as fast as int8
# weights and the closest to FP32 (benchmarks/results/int8_weights_epyc_avx2.md); on CPUs that
# issue VPMADDUBSW twice per cycle it can be slower.
WEIGHT_RANGES = ("auto", "full", "reduced", "unsigned")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


CALIB_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


LINEAR_OPS = ("MatMul", "Gemm", "Conv")  # ops with weights: the Linear layers and patch embed


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


CALIB_CHUNK_IMAGES = 16  # images whose activations are held in memory at once while calibrating


PARITY_IMAGES = 64


SMOOTH_IMAGES = 128  # calibration images whose activation ranges set the SmoothQuant scales


@dataclass
class QuantConfig:
    mode: str = "static"  # static | dynamic
    calib_size: int = 512
    calib_method: str = "minmax"  # minmax | percentile | entropy
    budget: float = 0.5  # max top-1 points lost
    ops: str = "safe"  # safe: Linear-layer inputs only; all: every op ORT can quantize
    allow_accuracy_drop: bool = False
    seed: int = 0
    percentile: float = 99.999  # for calib_method="percentile"
    sensitivity_samples: int = 128  # images used to rank layers in the accuracy gate
    max_float_layers: int | None = None  # stop falling back after this many layers (None: all)
    smooth_alpha: float = 0.5  # static: SmoothQuant migration strength (0: off); see smooth.py
    weight_range: str = "auto"  # auto | full | reduced (7-bit weights); see WEIGHT_RANGES

    def reduce_range(self) -> bool:
        """Whether the weights are quantized to 7 bits (see WEIGHT_RANGES)."""
        if self.weight_range == "auto":
            return int8_saturates_here()
        return self.weight_range == "reduced"

    def unsigned_weights(self) -> bool:
        """Whether the weights are uint8 with zero points (dynamic INT8 only)."""
        return self.weight_range == "unsigned"

    def validate(self) -> None:
        def bad(what: str, fix: str) -> ConfigError:
            return ConfigError(what, fix)

        if self.mode not in MODES:
            raise bad(f"unknown INT8 mode '{self.mode}'", "use static or dynamic")
        if self.ops not in OPS:
            raise bad(f"unknown --int8-ops '{self.ops}'", "use safe (default) or all")
        if self.weight_range not in WEIGHT_RANGES:
            raise bad(
                f"unknown --int8-weight-range '{self.weight_range}'",
                f"use one of: {', '.join(WEIGHT_RANGES)}",
            )
        if self.weight_range == "unsigned" and self.mode != "dynamic":
            raise bad(
                "--int8-weight-range unsigned is for --int8 dynamic (static Q/DQ weights stay "
                "signed, as TensorRT needs them)",
                "use --int8 dynamic, or full / reduced with --int8 static",
            )
        if self.calib_method not in CALIB_METHODS:
            raise bad(
                f"unknown --calib-method '{self.calib_method}'",
                f"use one of: {', '.join(CALIB_METHODS)}",
            )
        if self.calib_size < 1:
            raise bad(f"--calib-size must be >= 1, got {self.calib_size}", "e.g. --calib-size 512")
        if not self.budget >= 0:  # also catches NaN
            raise bad(
                f"--int8-budget must be >= 0 points, got {self.budget}", "e.g. --int8-budget 0.5"
            )
        if not 0 < self.percentile <= 100:
            raise bad(f"percentile must be in (0, 100], got {self.percentile}", "e.g. 99.999")
        if self.sensitivity_samples < 1:
            raise bad(
                f"sensitivity_samples must be >= 1, got {self.sensitivity_samples}", "e.g. 128"
            )
        if not 0 <= self.smooth_alpha <= 1:  # also catches NaN
            raise bad(
                f"--smooth-alpha must be in [0, 1], got {self.smooth_alpha}",
                "e.g. --smooth-alpha 0.5, or 0 to turn smoothing off",
            )
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise bad(
                f"max_float_layers must be >= 0, got {self.max_float_layers}",
                "leave it unset to allow every layer",
            )


def int8_saturates_here(machine: str | None = None, simd: list[str] | None = None) -> bool:
    """True on an x86 CPU whose ONNX Runtime integer kernels can saturate (no VNNI)."""
    import platform

    from tvc.environment import cpu_simd

    machine = platform.machine() if machine is None else machine
    simd = cpu_simd() if simd is None else simd
    return machine.lower() in ("x86_64", "amd64", "i686") and not VNNI_FLAGS & set(simd)


def weight_bits(cfg: QuantConfig) -> str:
    """How a report names the weights' range."""
    if cfg.unsigned_weights():
        return "uint8 with a zero point (--int8-weight-range unsigned)"
    if cfg.reduce_range():
        return "int8 in a 7-bit range (--int8-weight-range reduced or auto on a CPU without VNNI)"
    return "int8"


def weight_range_used(cfg: QuantConfig) -> str:
    """The range a report records: auto resolved to what this machine got."""
    if cfg.unsigned_weights():
        return "unsigned"
    return "reduced" if cfg.reduce_range() else "full"
