"""The board install (`pip install tvc[trt]`, no torch) can build engines and run `tvc bench`.

A child Python blocks every import of torch (and the packages that pull it in), imports the
runtime, report, TensorRT export, bench/eval stage and CLI modules, benchmarks an ONNX model
through the CLI, and measures an ONNX classifier's accuracy with `tvc bench --data` and
`tvc eval`.
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
    names = ["tvc.export.tensorrt", "tvc.cli", "tvc.records", "tvc.stages.bench",
             "tvc.stages.evaluate", "tvc.stages.report"]
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
    # quality on a board: an image classifier (784 -> 10) on Fashion-MNIST-shaped images,
    # through the task adapter, in `tvc bench --data` and `tvc eval`
    from tvc.data.synthetic import write_fake_fashion_mnist
    fm = "fashion-mnist:" + str(write_fake_fashion_mnist(sys.argv[1] + "/fm", 10, 12))
    w = numpy_helper.from_array(np.ones((784, 10), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])], "img",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              sys.argv[1] + "/img.onnx")
    r = CliRunner().invoke(cli, ["bench", sys.argv[1] + "/img.onnx", "--data", fm,
                                 "--threads", "1", "--warmup-s", "0", "--min-runs", "2",
                                 "--min-time-s", "0", "--json", sys.argv[1] + "/q.json"])
    assert r.exit_code == 0, r.output
    quality = json.load(open(sys.argv[1] + "/q.json"))[0]["accuracy"]
    r = CliRunner().invoke(cli, ["eval", sys.argv[1] + "/img.onnx", "--data", fm])
    assert r.exit_code == 0 and "on 12 fashion-mnist test images" in r.output, r.output
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0, info.output
    records = json.load(open(sys.argv[1] + "/bench.json"))
    torch_loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"imported": names, "records": len(records), "torch": torch_loaded,
                      "info": info.output, "quality": quality}))
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
        "tvc.records",
        "tvc.stages.bench",
        "tvc.cli",
    ):
        assert name in out["imported"]
    assert out["records"] == 2  # batch 1 and 2
    assert out["quality"]["n"] == 12 and out["quality"]["dataset"] == "fashion-mnist"
    assert "pytorch" in out["info"] and "not installed" in out["info"]
