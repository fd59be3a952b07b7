"""Token merging on Hugging Face directories against timm: the same ViT-S/16 shape (DeiT-S:
width 384, 12 layers, 6 heads, 224 px) as a transformers ViT and DINOv2 saved with
save_pretrained and loaded as users bring them, and as timm's deit_small, each merged at the r
whose MACs are closest to 0.6x of its parent, all timed in ONE interleaved run (ONNX Runtime
CPU, FP32, batch 1). Random weights: latency and ONNX parity only.

transformers runs its own loop over the layers, so tvc's Hugging Face merging passes the token
sizes from layer to layer as one extra channel of the hidden states (tvc/models/merge_hf.py);
this measures what that costs next to timm, where tvc owns the loop.

    python benchmarks/bench_merge_hf.py        (about a minute and a half on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_merge import METHOD, time_variants
from common import load_note, write_result

from tvc.compress.merge import merge
from tvc.compress.report import count_macs
from tvc.models import load_model

SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224,
             patch_size=16, num_labels=1000)  # fmt: skip


def hf_directory(kind: str, where: Path) -> Path:
    """A random ViT-S/16-shaped transformers classifier saved with save_pretrained."""
    import transformers

    torch.manual_seed(1)
    if kind == "vit":
        model = transformers.ViTForImageClassification(
            transformers.ViTConfig(intermediate_size=1536, **SMALL)
        )
    else:
        model = transformers.Dinov2ForImageClassification(
            transformers.Dinov2Config(mlp_ratio=4, **SMALL)
        )
    path = where / f"hf-{kind}"
    model.eval().save_pretrained(path)
    return path


def closest_to(model, input_size, target: float = 0.6) -> tuple[int, Any, dict, float]:
    """The r (4..16) whose merged MACs are closest to `target` of the parent's."""
    base = count_macs(model, input_size)
    best = None
    for r in range(4, 17):
        m = copy.deepcopy(model).eval()
        rep = merge(m, [r], input_size)
        ratio = count_macs(m, input_size) / base
        if best is None or abs(ratio - target) < abs(best[3] - target):
            best = (r, m, rep, ratio)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time-s", type=float, default=3.0)
    ap.add_argument("--max-time-s", type=float, default=8.0)
    args = ap.parse_args()
    res: dict[str, Any] = {"config": vars(args), "note": f"{load_note()}; {METHOD}", "models": {}}
    variants: dict[str, Any] = {}
    info_of: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tvc-bench-merge-hf-") as tmp:
        sources = {
            "timm deit_small": "deit_small",
            "HF ViT": str(hf_directory("vit", Path(tmp))),
            "HF DINOv2": str(hf_directory("dinov2", Path(tmp))),
        }
        for name, spec in sources.items():
            torch.manual_seed(1)
            loaded = load_model(spec, warn_random=False)
            r, merged, rep, ratio = closest_to(loaded.model.eval(), loaded.info.input_size)
            print(f"{name}: r={r} gives MACs {ratio:.3f}x", flush=True)
            variants[f"{name} parent"], variants[f"{name} r{r}"] = loaded.model, merged
            info_of[name] = loaded.info
            res["models"][name] = {"r": r, "schedule": rep["schedule"],
                                   "macs_ratio": round(ratio, 4)}  # fmt: skip
        # one interleaved run over every variant, each exported with its own model's facts
        infos = {k: info_of[k.rsplit(" ", 1)[0]] for k in variants}
        lat = time_variants(variants, infos, Path(tmp) / "onnx", args)
        res["rounds"] = lat["_rounds"]
    for name, row in res["models"].items():
        parent, merged = lat[f"{name} parent"], lat[f"{name} r{row['r']}"]
        row.update(parent=parent, merged=merged,
                   speedup=round(parent["cpu_ms"] / merged["cpu_ms"], 3))  # fmt: skip
    path = write_result("merge_hf", res, markdown(res))
    print(markdown(res))
    print(f"wrote {path}")


def markdown(res: dict[str, Any]) -> str:
    out = [
        "# Token merging on Hugging Face directories vs timm (ONNX Runtime CPU, FP32, batch 1, "
        f"{res['config']['threads']} thread(s))\n",
        f"{res['note']}.\n",
        "ViT-S/16 shapes with random weights (latency and ONNX parity only), each merged at the "
        "r whose MACs are closest to 0.6x of its parent.\n",
        "| model | r | MACs | parent CPU ms | merged CPU ms | speedup | ONNX parity (merged) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        out.append(
            f"| {name} | {row['r']} | {row['macs_ratio']:.3f}x | {row['parent']['cpu_ms']:.2f} "
            f"| {row['merged']['cpu_ms']:.2f} | **{row['speedup']:.2f}x** | "
            f"{row['merged']['parity_max_abs_diff']:.1e} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
