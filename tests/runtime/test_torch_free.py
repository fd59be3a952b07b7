"""The board install (`pip install tvc[trt]`, no torch) can build engines and run `tvc bench`.

A child Python blocks every import of torch (and the packages that pull it in), imports the
runtime, report, TensorRT export and CLI modules, and benchmarks an ONNX model through the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import importlib, importlib.util, json, pkgutil, sys

    BLOCKED = {"torch", "torchvision", "timm", "torch_pruning", "transformers", "safetensors"}

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())

    import tvc.report, tvc.runtime
    names = ["tvc.export.tensorrt", "tvc.cli"]
    for pkg in (tvc.runtime, tvc.report):
        names += [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    if importlib.util.find_spec("tvc.export.trt_rules") is not None:
        names.append("tvc.export.trt_rules")
    for name in names:
        importlib.import_module(name)

    # a tiny ONNX model made without torch, benchmarked through the CLI
    import numpy as np, onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((12, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              sys.argv[1] + "/tiny.onnx")

    from click.testing import CliRunner
    from tvc.cli import cli
    r = CliRunner().invoke(cli, ["bench", sys.argv[1] + "/tiny.onnx", "--backend", "ort",
                                 "--batch", "1,2", "--threads", "1", "--warmup-s", "0",
                                 "--min-runs", "3", "--min-time-s", "0",
                                 "--json", sys.argv[1] + "/bench.json"])
    assert r.exit_code == 0, r.output
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0, info.output
    records = json.load(open(sys.argv[1] + "/bench.json"))
    torch_loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"imported": names, "records": len(records), "torch": torch_loaded,
                      "info": info.output}))
    """
)


def test_runtime_report_engine_build_and_bench_import_without_torch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] == []
    for name in (
        "tvc.runtime.trt",
        "tvc.runtime.cuda",
        "tvc.runtime.power",
        "tvc.runtime.bench",
        "tvc.export.tensorrt",
        "tvc.report.schema",
        "tvc.cli",
    ):
        assert name in out["imported"]
    assert out["records"] == 2  # batch 1 and 2
    assert "pytorch" in out["info"] and "not installed" in out["info"]
