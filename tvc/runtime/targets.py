"""What a benchmark measures: a target (ONNX file, artifact) resolved into variants.

An export artifact can hold several ONNX variants (FP32, INT8 Q/DQ, INT8 dynamic, FP16) and a
TensorRT engine; each is one benchmark variant. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvc.artifact import Artifact, is_artifact, load_artifact

# payload file -> precision, for ONNX files the export stages write
PRECISION_BY_FILE = {
    "model.onnx": "fp32",
    "model.ort.onnx": "fp32-ort",  # tvc export --ort-optimize: ONNX Runtime's fused graph
    "model.fp16.onnx": "fp16",
    "model.int8.onnx": "int8-qdq",
    "model.int8dyn.onnx": "int8-dynamic",
}


@dataclass
class Variant:
    label: str
    precision: str
    path: Path | None  # the payload file (None for a PyTorch model)
    artifact: Artifact | None
    model_name: str
    size_bytes: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    # an in-memory model a backend loaded to run (a PyTorch LoadedModel for the torch backend);
    # opaque here, so runtime never needs to know what it is
    model: Any = None


def onnx_variants(target: str) -> list[Variant]:
    """The ONNX variants in an artifact (or the single file given)."""
    p = Path(target)
    if p.is_file() and p.suffix == ".onnx":
        return [Variant(p.stem, "fp32", p, None, p.stem, p.stat().st_size)]
    if not is_artifact(p):
        return []
    art = load_artifact(p)
    name = art.meta.get("model", {}).get("name", p.name)
    # graphs exported beside the model (iGPT's single-step decoder) are not variants of it
    extra_graphs = set(art.meta.get("metrics", {}).get("extra_graphs") or {})
    variants = []
    for fname, info in art.meta["files"].items():
        graph = art.meta.get("variants", {}).get(fname, {}).get("graph", "full")
        if not fname.endswith(".onnx") or fname in extra_graphs or graph != "full":
            continue  # decoder.int8.onnx is that decoder's INT8, not a variant of the model
        precision = art.meta.get("variants", {}).get(fname, {}).get(
            "precision"
        ) or PRECISION_BY_FILE.get(fname, "fp32")
        variants.append(
            Variant(f"{name} {precision}", precision, art.path / fname, art, name, info["bytes"])
        )
    return sorted(
        variants,
        key=lambda v: (
            list(PRECISION_BY_FILE.values()).index(v.precision)
            if v.precision in PRECISION_BY_FILE.values()
            else 99
        ),
    )
