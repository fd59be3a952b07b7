"""Bad inputs and faults, tried as a user would: one row per case.

Each row prepares its workspace (copies of a model artifact, its ONNX export, a weights file, an
image folder and a COCO set), runs one `tvc` command in this process, and asserts the exit code,
the single `error: what; how to fix` line, and that the workspace is unchanged: nothing lost,
nothing half-written, no staging or temp file left. Rows that succeed check their own result.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.conftest import (
    Workspace,
    assert_one_line_error,
    leftovers,
    snapshot,
    tvc,
    write_coco,
)


@dataclass
class Case:
    group: str
    name: str
    args: Callable[[Workspace], list[str]]  # prepares the workspace, returns the command line
    code: int
    pattern: str = ""
    may_create: tuple[str, ...] = ()  # globs of new files the command may leave (e.g. a log)
    may_change: tuple[str, ...] = ()  # globs of files the command may rewrite
    check: Callable[[Workspace], None] | None = None  # for rows that succeed

    @property
    def id(self) -> str:
        return f"{self.group}-{self.name}"


CASES: list[Case] = []


def case(group: str, name: str, code: int, pattern: str = "", **kw):
    def register(fn: Callable[[Workspace], list[str]]):
        CASES.append(Case(group, name, fn, code, pattern, **kw))
        return fn

    return register


# ------------------------------------------------------------------------------------ helpers


def edit_meta(art: Path, fn: Callable[[dict], object]) -> None:
    meta = json.loads((art / "artifact.json").read_text())
    new = fn(meta)
    (art / "artifact.json").write_text(json.dumps(meta if new is None else new))


def rehash(art: Path) -> None:
    """Make artifact.json agree with the payload again (a consistent artifact, bad contents)."""
    from tvc.artifact import sha256_file

    def fix(meta):
        for name, info in meta["files"].items():
            info["sha256"] = sha256_file(art / name)
            info["bytes"] = (art / name).stat().st_size

    edit_meta(art, fix)


def set_weights(path: Path, fn: Callable[[dict], dict]) -> None:
    """Rewrite a safetensors file through `fn(state) -> state`."""
    from safetensors.torch import load_file, save_file

    save_file(fn(load_file(str(path))), str(path))


def poison(value: float) -> Callable[[dict], dict]:
    def fn(state: dict) -> dict:
        first = sorted(k for k, v in state.items() if v.is_floating_point())[0]
        state[first] = state[first].clone()
        state[first].view(-1)[0] = value
        return state

    return fn


def to_int32(state: dict) -> dict:
    return {k: (v * 100).to(__import__("torch").int32) for k, v in state.items()}


def torch_save(path: Path, obj) -> Path:
    import torch

    torch.save(obj, path)
    return path


def model_args(ws: Workspace, *extra: str) -> list[str]:
    return ["eval", ws.model, "--data", ws.folder, *extra]


# --------------------------------------------------------------------------------- models


case("model", "unknown-name", 2, r"vit_nope")(lambda ws: ["export", "vit_nope", "-o", ws.p("out")])
case("model", "empty-directory", 2, r"empty")(
    lambda ws: (ws.root.joinpath("empty").mkdir(), ["export", ws.p("empty"), "-o", ws.p("o")])[1]
)
case("model", "text-file", 2, r"is a file")(
    lambda ws: (
        ws.root.joinpath("notes.txt").write_text("hi"),
        ["export", ws.p("notes.txt"), "-o", ws.p("o")],
    )[1]
)
case("model", "input-size-zero", 2, r"--input-size must be >= 1")(
    lambda ws: ["export", "vit_pico", "--input-size", "0", "-o", ws.p("o")]
)
case("model", "input-size-negative", 2, r"--input-size must be >= 1")(
    lambda ws: ["export", "vit_pico", "--input-size", "-3", "-o", ws.p("o")]
)
case("model", "input-size-not-a-number", 2, r"--input-size.*run 'tvc export --help'")(
    lambda ws: ["export", "vit_pico", "--input-size", "big", "-o", ws.p("o")]
)
case("model", "num-classes-zero", 2, r"--num-classes")(
    lambda ws: ["export", "vit_pico", "--num-classes", "0", "-o", ws.p("o")]
)
case("model", "pretrained-not-on-disk", 2, r"never downloads")(
    lambda ws: ["export", "vit_pico", "--pretrained", "-o", ws.p("o")]
)
case("model", "eval-unknown-name", 2, r"vit_nope")(
    lambda ws: ["eval", "vit_nope", "--data", ws.folder]
)
case("model", "weights-for-an-artifact", 2, r"carries its own weights")(
    lambda ws: ["export", ws.model, "--weights", ws.weights, "-o", ws.p("o")]
)

# -------------------------------------------------------------------------------- weights


def _weights(ws: Workspace, name: str, data: bytes | None = None) -> Path:
    p = ws.root / name
    if data is not None:
        p.write_bytes(data)
    return p


def _weights_case(name: str, code: int, pattern: str, make: Callable[[Workspace], Path]):
    case("weights", name, code, pattern)(
        lambda ws: ["export", "vit_pico", "--weights", make(ws), "-o", ws.p("o")]
    )


_weights_case("zero-byte-pth", 2, r"empty \(0 bytes\)", lambda ws: _weights(ws, "w.pth", b""))
_weights_case(
    "zero-byte-safetensors", 2, r"empty \(0 bytes\)", lambda ws: _weights(ws, "e.safetensors", b"")
)
_weights_case(
    "garbage-safetensors",
    2,
    r"not a readable safetensors",
    lambda ws: _weights(ws, "g.safetensors", b"\x00garbage" * 50),
)
_weights_case(
    "garbage-pth", 2, r"cannot be loaded safely", lambda ws: _weights(ws, "g.pth", b"PK\x03\x04xx")
)
_weights_case(
    "unsupported-suffix",
    2,
    r"unsupported weights format",
    lambda ws: _weights(ws, "w.txt", b"1 2 3"),
)
_weights_case("missing-file", 2, r"does not exist", lambda ws: ws.root / "nope.safetensors")
_weights_case(
    "nan-weights",
    6,
    r"NaN/Inf",
    lambda ws: (set_weights(ws.weights, poison(math.nan)), ws.weights)[1],
)
_weights_case(
    "inf-weights-pth",
    6,
    r"NaN/Inf",
    lambda ws: torch_save(
        ws.root / "inf.pth",
        poison(math.inf)(__import__("safetensors.torch").torch.load_file(str(ws.weights))),
    ),
)
_weights_case(
    "int32-weights",
    2,
    r"integer tensors",
    lambda ws: (set_weights(ws.weights, to_int32), ws.weights)[1],
)
_weights_case(
    "wrong-shapes",
    2,
    r"do not fit the architecture",
    lambda ws: (
        set_weights(ws.weights, lambda s: {**s, "head.weight": s["head.weight"][:3]}),
        ws.weights,
    )[1],
)
_weights_case(
    "not-a-state-dict",
    2,
    r"does not hold a state dict",
    lambda ws: torch_save(ws.root / "d.pth", {"a": 1, "b": [2, 3]}),
)
_weights_case(
    "truncated-pth",
    2,
    r"cannot be loaded safely",
    lambda ws: _weights(
        ws,
        "t.pth",
        torch_save(
            ws.root / "full.pth",
            __import__("safetensors.torch").torch.load_file(str(ws.weights)),
        ).read_bytes()[:5000],
    ),
)


class _Evil:
    """Unpickling this runs a shell command: tvc must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _evil(ws: Workspace) -> list[str]:
    ws.extra["marker"] = ws.root.parent / "pwned"
    path = torch_save(ws.root / "evil.pth", {"w": _Evil(ws.extra["marker"])})
    return ["export", "vit_pico", "--weights", path, "-o", ws.p("o")]


case("weights", "malicious-pickle", 2, r"pickled objects other than tensors, which tvc never runs")(
    _evil
)
case("weights", "weights-is-a-directory", 2, r"--weights")(
    lambda ws: ["export", "vit_pico", "--weights", ws.folder, "-o", ws.p("o")]
)

# ------------------------------------------------------------------------------ artifacts


def _meta_case(name: str, pattern: str, fn: Callable[[dict], object], cmd: str = "export"):
    def args(ws: Workspace) -> list[str]:
        edit_meta(ws.model, fn)
        if cmd == "eval":
            return model_args(ws)
        return ["export", ws.model, "-o", ws.p("o")]

    case("artifact", name, 2, pattern)(args)


_meta_case("json-is-a-list", r"not a JSON object", lambda m: [m])
_meta_case("no-files-field", r"lacks the field 'files'", lambda m: m.pop("files") and None)
_meta_case("files-is-a-list", r"'files' field that is not an object", lambda m: {**m, "files": []})
_meta_case(
    "file-without-sha256",
    r"no valid sha256/bytes",
    lambda m: [i.pop("sha256") for i in m["files"].values()] and None,
)
_meta_case(
    "bytes-is-a-string",
    r"no valid sha256/bytes",
    lambda m: [i.update(bytes="12") for i in m["files"].values()] and None,
)
_meta_case("schema-is-a-string", r"schema_version that is not an integer",
           lambda m: {**m, "schema_version": "1"})  # fmt: skip
_meta_case("schema-from-the-future", r"newer tvc", lambda m: {**m, "schema_version": 99})
_meta_case("unknown-kind", r"unknown kind 'banana'", lambda m: {**m, "kind": "banana"})
_meta_case("metrics-is-a-string", r"'metrics' field", lambda m: {**m, "metrics": "fast"}, "eval")
_meta_case("id-is-a-number", r"id that is not a string", lambda m: {**m, "id": 7}, "eval")
_meta_case("model-is-a-list", r"'model' field", lambda m: {**m, "model": []}, "eval")


def _escape(ws: Workspace, name: str) -> list[str]:
    outside = ws.root / "secret.onnx"
    shutil.copy(ws.onnx / "model.onnx", outside)

    def fn(m):
        info = m["files"].pop("model.onnx")
        m["files"][name.replace("SECRET", str(outside))] = info

    edit_meta(ws.onnx, fn)
    return ["bench", ws.onnx, "--min-runs", "1", "--warmup-s", "0"]


case("artifact", "payload-dotdot", 2, r"payload outside its directory")(
    lambda ws: _escape(ws, "../secret.onnx")
)
case("artifact", "payload-absolute", 2, r"payload outside its directory")(
    lambda ws: _escape(ws, "SECRET")
)


def _symlink_out(ws: Workspace) -> list[str]:
    (ws.onnx / "model.onnx").rename(ws.root / "elsewhere.onnx")
    (ws.onnx / "model.onnx").symlink_to(ws.root / "elsewhere.onnx")
    return ["bench", ws.onnx, "--min-runs", "1", "--warmup-s", "0"]


case("artifact", "payload-symlink-out", 2, r"links outside its directory")(_symlink_out)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


case("artifact", "tampered-weights", 2, r"sha256 mismatch")(
    lambda ws: (_flip(ws.model / "weights.safetensors"), model_args(ws))[1]
)
case("artifact", "tampered-onnx-bench", 2, r"sha256 mismatch")(
    lambda ws: (_flip(ws.onnx / "model.onnx"), ["bench", ws.onnx])[1]
)
case("artifact", "deleted-payload", 2, r"missing its payload file")(
    lambda ws: ((ws.model / "weights.safetensors").unlink(), model_args(ws))[1]
)
case("artifact", "artifact-json-empty", 2, r"not valid JSON")(
    lambda ws: ((ws.model / "artifact.json").write_text(""), model_args(ws))[1]
)
case("artifact", "artifact-json-binary", 2, r"not valid JSON")(
    lambda ws: ((ws.model / "artifact.json").write_bytes(b"\xff\xfe\x00"), model_args(ws))[1]
)
case("artifact", "nan-weights-eval", 6, r"NaN/Inf")(
    lambda ws: (
        set_weights(ws.model / "weights.safetensors", poison(math.nan)),
        rehash(ws.model),
        model_args(ws),
    )[2]
)
case("artifact", "nan-weights-export", 6, r"NaN/Inf")(
    lambda ws: (
        set_weights(ws.model / "weights.safetensors", poison(math.nan)),
        rehash(ws.model),
        ["export", ws.model, "-o", ws.p("o")],
    )[2]
)
case("artifact", "inf-weights-compress", 6, r"NaN/Inf")(
    lambda ws: (
        set_weights(ws.model / "weights.safetensors", poison(-math.inf)),
        rehash(ws.model),
        ["compress", ws.model, "--prune", "0.5", "-o", ws.p("o")],
    )[2]
)
case("artifact", "int32-weights-in-artifact", 2, r"integer tensors")(
    lambda ws: (
        set_weights(ws.model / "weights.safetensors", to_int32),
        rehash(ws.model),
        model_args(ws),
    )[2]
)
case("artifact", "unknown-variant", 2, r"model.nope.onnx")(
    lambda ws: ["eval", ws.onnx, "--data", ws.folder, "--variant", "model.nope.onnx"]
)

# ------------------------------------------------------------------------------ ONNX files


def _nan_onnx(ws: Workspace) -> list[str]:
    """An ONNX artifact whose weights are NaN, its hashes consistent (e.g. exported elsewhere)."""
    import onnx
    from onnx import numpy_helper

    path = ws.onnx / "model.onnx"
    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = math.nan
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    rehash(ws.onnx)
    return ["eval", ws.onnx, "--data", ws.folder]


case("onnx", "nan-weights-onnx-eval", 6, r"NaN/Inf")(_nan_onnx)
case("onnx", "garbage-onnx-file-eval", 2, r"garbage.onnx")(
    lambda ws: (
        (ws.root / "garbage.onnx").write_bytes(b"\x08\x01garbage" * 10),
        ["eval", ws.p("garbage.onnx"), "--data", ws.folder],
    )[1]
)
case("onnx", "garbage-onnx-file-bench", 2, r"garbage.onnx")(
    lambda ws: (
        (ws.root / "garbage.onnx").write_bytes(b"\x08\x01garbage" * 10),
        ["bench", ws.p("garbage.onnx")],
    )[1]
)
case("onnx", "empty-onnx-file", 2, r"empty.onnx")(
    lambda ws: ((ws.root / "empty.onnx").write_bytes(b""), ["bench", ws.p("empty.onnx")])[1]
)
case("onnx", "bare-engine-file", 2, r"bare TensorRT engine file")(
    lambda ws: ((ws.root / "m.engine").write_bytes(b"\x00" * 64), ["bench", ws.p("m.engine")])[1]
)
case("onnx", "backend-trt-without-tensorrt", 5, r"needs TensorRT.*pip install 'tvc\[trt\]'")(
    lambda ws: ["bench", ws.onnx, "--backend", "trt"]
)
case("onnx", "backend-empty", 2, r"--backend")(lambda ws: ["bench", ws.onnx, "--backend", ""])
case("onnx", "backend-unknown", 2, r"foo")(lambda ws: ["bench", ws.onnx, "--backend", "foo"])
case("onnx", "opset-99", 2, r"99")(
    lambda ws: ["export", ws.model, "--opset", "99", "-o", ws.p("o")]
)
case("onnx", "unsigned-weights-static", 2, r"unsigned is for --int8 dynamic")(
    lambda ws: [
        *("export", ws.model, "--int8", "static", "--calib", ws.folder),
        *("--int8-weight-range", "unsigned", "-o", ws.p("o")),
    ]
)
case("onnx", "opset-too-old", 2, r"too old")(
    lambda ws: ["export", ws.model, "--opset", "9", "-o", ws.p("o")]
)
case("onnx", "threads-zero", 2, r"--threads")(lambda ws: ["bench", ws.onnx, "--threads", "0"])
case("onnx", "batch-zero", 2, r"--batch")(lambda ws: ["bench", ws.onnx, "--batch", "0"])
case("onnx", "batch-not-numbers", 2, r"--batch")(lambda ws: ["bench", ws.onnx, "--batch", "a,b"])
case("onnx", "export-batch-zero", 2, r"batch")(
    lambda ws: ["export", ws.model, "--batch", "0", "-o", ws.p("o")]
)
case("onnx", "prune-not-a-number", 2, r"--prune.*run 'tvc compress --help' for the options")(
    lambda ws: ["compress", ws.model, "--prune", "abc", "-o", ws.p("o")]
)
case("onnx", "unknown-option", 2, r"no such option.*run 'tvc export --help'")(
    lambda ws: ["export", ws.model, "--fast", "-o", ws.p("o")]
)
case("onnx", "unknown-command", 2, r"no such command 'exprot'")(
    lambda ws: ["exprot", ws.model, "-o", ws.p("o")]
)

# ----------------------------------------------------------------------------------- data


case("data", "empty-data", 2, r"--data is empty")(lambda ws: ["eval", ws.model, "--data", ""])
case("data", "blank-data", 2, r"--data is empty")(lambda ws: ["eval", ws.model, "--data", "  "])
case("data", "missing-dir", 2, r"not found")(lambda ws: ["eval", ws.model, "--data", ws.p("nope")])
case("data", "data-is-a-file", 2, r"is a file")(lambda ws: ["eval", ws.model, "--data", ws.weights])
case("data", "labels-of-other-classes", 2, r"has 3 classes but the model's head has 2")(
    lambda ws: (shutil.copytree(ws.folder / "dog", ws.folder / "bird"), model_args(ws))[1]
)
case("data", "one-class-folder", 2, r"only one class")(
    lambda ws: (shutil.rmtree(ws.folder / "dog"), model_args(ws))[1]
)
case("data", "no-class-subfolders", 2, r"no class sub-folders")(
    lambda ws: (
        (ws.root / "flat").mkdir(),
        (ws.root / "flat" / "a.png").write_bytes(b"x"),
        ["eval", ws.model, "--data", ws.p("flat")],
    )[2]
)
case("data", "no-readable-images", 2, r"none of the .* readable image")(
    lambda ws: ([p.write_bytes(b"not an image") for p in ws.folder.rglob("*.png")], model_args(ws))[
        1
    ]
)
case("data", "coco-json-for-a-classifier", 2, r"detection")(
    lambda ws: ["eval", ws.model, "--data", ws.coco / "annotations.json"]
)
case("data", "fashion-mnist-elsewhere-missing", 2, r"")(
    lambda ws: ["eval", ws.model, "--data", f"fashion-mnist:{ws.p('nope')}"]
)
case("data", "limit-zero", 2, r"--limit")(
    lambda ws: ["eval", ws.model, "--data", ws.folder, "--limit", "0"]
)


def _coco(name: str, pattern: str, **kw):
    def args(ws: Workspace) -> list[str]:
        shutil.rmtree(ws.coco)
        write_coco(ws.coco, **kw)
        return ["eval", "detr_pico", "--data", ws.coco, "--limit", "2"]

    case("data", f"coco-{name}", 2, pattern)(args)


_coco("box-outside-image", r"outside its 64x64 image", boxes=[[40, 40, 60, 10], [1, 1, 5, 5]])
_coco("box-negative-size", r"outside its 64x64 image or of no size",
      boxes=[[4, 4, -20, 20], [1, 1, 5, 5]])  # fmt: skip
_coco("box-zero-size", r"of no size", boxes=[[4, 4, 0, 20], [1, 1, 5, 5]])
_coco("box-negative-origin", r"outside", boxes=[[-10, 4, 5, 5], [1, 1, 5, 5]])
_coco("box-nan", r"not four finite numbers", boxes=[[math.nan, 4, 5, 5], [1, 1, 5, 5]])
_coco("box-three-numbers", r"not four finite numbers", boxes=[[4, 4, 5], [1, 1, 5, 5]])
_coco("box-strings", r"not four finite numbers", boxes=[["4", 4, 5, 5], [1, 1, 5, 5]])
_coco("file-name-escapes", r"points outside", file_names=["../../../etc/passwd", "images/b.png"])
_coco("file-name-absolute", r"points outside", file_names=["/etc/hostname", "images/b.png"])
_coco("annotation-without-bbox", r"lacks 'bbox'",
      annotations=[{"id": 1, "image_id": 1, "category_id": 1}])  # fmt: skip
_coco("image-without-file-name", r"lacks 'file_name'", images=[{"id": 1}])
_coco("unknown-category", r"unknown category_id",
      annotations=[{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 4, 4]}])  # fmt: skip
_coco("images-not-a-list", r"no 'images' list", images={"a": 1})


def _corrupt_image(ws: Workspace) -> list[str]:
    (ws.coco / "images" / "a.png").write_bytes(b"\x89PNG broken")
    return ["eval", "detr_pico", "--data", ws.coco, "--limit", "2"]


case("data", "coco-corrupt-image", 2, r"not a readable image")(_corrupt_image)
case("data", "coco-not-json", 2, r"cannot read COCO annotations")(
    lambda ws: (
        (ws.coco / "annotations.json").write_text("{nope"),
        ["eval", "detr_pico", "--data", ws.coco],
    )[1]
)

# ---------------------------------------------------------------------------- output paths


case("output", "export-onto-its-input", 2, r"would overwrite the input")(
    lambda ws: ["export", ws.model, "-o", ws.model]
)
case("output", "export-onto-its-input-with-force", 2, r"--force never replaces an input")(
    lambda ws: ["export", ws.model, "-o", ws.model, "--force"]
)
case("output", "export-into-its-input", 2, r"would overwrite the input")(
    lambda ws: ["export", ws.model, "-o", ws.model / "sub"]
)
case("output", "onto-the-weights-file", 2, r"would overwrite the input|is a file")(
    lambda ws: ["export", "vit_pico", "--weights", ws.weights, "-o", ws.weights]
)
case("output", "compress-onto-its-input", 2, r"would overwrite the input")(
    lambda ws: ["compress", ws.model, "--prune", "0.5", "-o", ws.model, "--force"]
)
case("output", "eval-data-as-output", 2, r"would overwrite the input|not a tvc artifact")(
    lambda ws: ["export", ws.model, "--calib", ws.folder, "--int8", "static", "-o", ws.folder]
)
case("output", "existing-artifact-without-force", 2, r"existing artifact; pass --force")(
    lambda ws: ["export", ws.model, "-o", ws.onnx]
)
case("output", "non-empty-directory", 2, r"exists and is not a tvc artifact")(
    lambda ws: ["export", ws.model, "-o", ws.folder]
)
case("output", "output-is-a-file", 2, r"is a file")(
    lambda ws: ["export", ws.model, "-o", ws.weights]
)
case("output", "output-under-a-file", 7, r"is a file, not a directory")(
    lambda ws: ["export", ws.model, "-o", ws.weights / "out"]
)
case("output", "output-in-proc", 7, r"not writable")(
    lambda ws: ["export", ws.model, "-o", "/proc/tvc-fault-out"]
)
# file outputs (--json, a report, a picture) are checked before any work, like -o artifacts
case("output", "eval-json-in-proc", 7, r"cannot write --json .*not writable")(
    lambda ws: ["eval", ws.model, "--data", ws.folder, "--json", "/proc/tvc-fault/e.json"]
)
case("output", "bench-json-is-a-directory", 2, r"--json .* is a directory")(
    lambda ws: ["bench", ws.onnx, "--min-runs", "1", "--json", ws.folder]
)
case("output", "bench-json-under-a-file", 7, r"is a file, not a directory")(
    lambda ws: ["bench", ws.onnx, "--min-runs", "1", "--json", ws.weights / "r.json"]
)
case("output", "train-onto-its-input", 2, r"would overwrite the input")(
    lambda ws: ["train", ws.model, "--data", ws.folder, "-o", ws.model, "--force"]
)


def _replaced(ws: Workspace) -> None:
    from tvc.artifact import load_artifact, parent_path

    art = load_artifact(ws.onnx)
    parent = parent_path(art.path, art.meta)
    assert parent.resolve() == ws.model.resolve()  # the new export, from the model
    assert art.meta["parent"]["id"] != art.id
    assert "o" not in {p.name for p in ws.root.iterdir()}


case(
    "output",
    "existing-artifact-with-force",
    0,
    may_change=("onnx/*",),
    check=_replaced,
)(lambda ws: ["export", ws.model, "-o", ws.onnx, "--force"])


def _stale(ws: Workspace) -> list[str]:
    # what an export killed with SIGKILL (pid 999999999, long gone) leaves beside its -o
    (ws.root / ".out.staging-999999999").mkdir()
    (ws.root / ".out.staging-999999999" / "model.onnx").write_bytes(b"half")
    (ws.root / ".out.tmp-999999999").write_bytes(b"half")
    return ["export", ws.model, "-o", ws.p("out")]


def _stale_gone(ws: Workspace) -> None:
    from tvc.artifact import load_artifact

    assert load_artifact(ws.root / "out").kind == "onnx"
    assert not list(ws.root.glob(".out.*"))


case("output", "stale-staging-cleaned", 0, may_create=("out/*",), check=_stale_gone,
     may_change=(".out.*",))(_stale)  # fmt: skip

# --------------------------------------------------------------------------------- training


def _tiny_train(ws: Workspace, *extra: str) -> list[str]:
    return ["train", "vit_pico", "--data", ws.folder, "--epochs", "2", "--batch-size", "2",
            "--eval-limit", "2", "--no-progress", "--warmup-epochs", "0", "-o", ws.p("t"),
            *extra]  # fmt: skip


case("train", "diverging-lr", 6, r"NaN/Inf.*lower --lr", may_create=("t.ckpt/*",))(
    lambda ws: _tiny_train(ws, "--lr", "1e9", "--grad-clip", "0")
)
case("train", "diverging-lr-clipped", 6, r"NaN/Inf.*lower --lr", may_create=("t.ckpt/*",))(
    lambda ws: _tiny_train(ws, "--lr", "1e30")
)
case("train", "lr-zero", 2, r"--lr")(lambda ws: _tiny_train(ws, "--lr", "0"))
case("train", "one-class-data", 2, r"only one class")(
    lambda ws: (shutil.rmtree(ws.folder / "dog"), _tiny_train(ws))[1]
)


def _no_test_split(ws: Workspace) -> list[str]:
    # split folders with train/ only: refused before training (no t.ckpt/ may appear), not
    # after a finished run when the test split is read
    shutil.copytree(ws.folder, ws.root / "splits" / "train")
    return [*_tiny_train(ws)[:3], ws.p("splits"), *_tiny_train(ws)[4:]]


case("train", "split-folders-without-test", 2, r"no 'test/'")(_no_test_split)


def _evil_resume(ws: Workspace) -> list[str]:
    ws.extra["marker"] = ws.root.parent / "pwned"
    (ws.root / "t.ckpt").mkdir()
    torch_save(ws.root / "t.ckpt" / "last.pt", {"w": _Evil(ws.extra["marker"])})
    return _tiny_train(ws, "--resume")


case("train", "malicious-checkpoint", 2, r"never runs")(_evil_resume)

# ------------------------------------------------------------------------------ the table


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_fault(c: Case, ws: Workspace) -> None:
    outside = ws.root.parent / "outside-marker"
    outside.write_text("keep")
    args = c.args(ws)
    before = snapshot(ws.root)
    res = tvc(*args)
    if c.code:
        line = assert_one_line_error(res, c.code, c.pattern)
        assert "weights_only=False" not in res.stderr, line  # never advise running pickles
    else:
        assert res.code == 0, res.stderr[-800:]
    after = snapshot(ws.root)

    def allowed(name: str, globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(name, g) for g in globs)

    changed = [k for k in before if after.get(k) != before[k] and not allowed(k, c.may_change)]
    assert not changed, f"changed or lost: {changed}"
    new = [k for k in after if k not in before and not allowed(k, c.may_create)]
    assert not new, f"left behind: {new}"
    assert not leftovers(ws.root), leftovers(ws.root)
    assert outside.read_text() == "keep"
    for marker in [ws.extra.get("marker")]:
        assert marker is None or not marker.exists(), "a pickle ran code"
    if c.check is not None:
        c.check(ws)


def test_default_output_never_replaces_an_artifact(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -o, export writes `<model>-exported` in the working directory; a second run
    finds it there and refuses to replace it without --force."""
    monkeypatch.chdir(ws.root)
    assert tvc("export", "model").code == 0
    made = ws.root / "model-exported"
    assert (made / "model.onnx").is_file()
    before = snapshot(made)
    assert_one_line_error(tvc("export", "model"), 2, r"existing artifact; pass --force")
    assert snapshot(made) == before


def test_the_table_covers_every_class() -> None:
    groups = {c.group for c in CASES}
    assert groups >= {"model", "weights", "artifact", "onnx", "data", "output", "train"}
    assert len(CASES) >= 80


# --------------------------------------------------------- disk full, simulated and on a tmpfs


def test_disk_full_during_export_is_a_storage_error_and_keeps_the_old_artifact(
    ws: Workspace, monkeypatch
) -> None:
    import tvc.export.onnx as onnx_mod

    real = onnx_mod._torch_export

    def full(*args, **kwargs):
        real(*args, **kwargs)  # the file is written, then the disk turns out full
        path = next(a for a in args if isinstance(a, Path))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(onnx_mod, "_torch_export", full)
    before = snapshot(ws.root)
    res = tvc("export", ws.model, "-o", ws.onnx, "--force")
    assert_one_line_error(res, 7, r"no space left on the device")
    assert "--opset" not in res.stderr
    assert snapshot(ws.root) == before
    assert not leftovers(ws.root)


def test_disk_full_while_updating_metrics_leaves_no_temp_file(ws: Workspace, monkeypatch) -> None:
    from tvc.artifact import load_artifact, update_metrics
    from tvc.errors import StorageError

    art = load_artifact(ws.model)
    before = snapshot(ws.root)

    def full(self, *a, **k):
        Path.write_bytes(self, b"{half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageError, match="no space left"):
        update_metrics(art, top1=0.5)
    monkeypatch.undo()
    assert snapshot(ws.root) == before
    assert not leftovers(ws.root)


@pytest.fixture
def small_disk(tmp_path):
    from tests.faults.conftest import can_mount_tmpfs

    where = tmp_path / "small"
    if not can_mount_tmpfs(where):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC rows still run")
    yield where
    import subprocess

    subprocess.run(["umount", str(where)], check=False)


@pytest.mark.parametrize("what", ["export", "model-artifact"])
def test_a_real_full_disk(small_disk: Path, ws: Workspace, what: str) -> None:
    """256 kB of tmpfs: the export (~330 kB) cannot fit; nothing half-written is left there."""
    if what == "export":
        res = tvc("export", ws.model, "-o", small_disk / "out")
    else:
        (small_disk / "filler").write_bytes(b"x" * 200_000)
        res = tvc("compress", ws.model, "--prune", "0.1", "-o", small_disk / "out")
    assert_one_line_error(res, 7, r"no space left on the device")
    names = {p.name for p in small_disk.iterdir()}
    assert names <= {"filler"}, names
