"""Detection transformers: DETR and Deformable DETR from Hugging Face `transformers`.

Both come wrapped in `HFDetector`, whose forward(pixel_values[, pixel_mask]) returns
`(logits, boxes)`: class logits per query and normalised (cx, cy, w, h) boxes in [0, 1].
DETR's logits have one extra last column, "no object" (softmax); Deformable DETR's do not
(sigmoid per class). `no_object_class` tells the two apart for the loss, decoding and evaluation.

A detector comes from a Hugging Face directory (config.json + weights, as save_pretrained writes
it), from one of tvc's small configurations below (random weights, built offline with a small
ResNet backbone from `transformers` itself, never a downloaded one), or from a tvc artifact
(family "hf-det", rebuilt from the recorded config by `det_build`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tvc.deps import require
from tvc.errors import ModelNotFoundError, WeightsError, first_line
from tvc.models.info import DETECTION_FAMILY, is_detector  # noqa: F401 (re-exported)

log = logging.getLogger("tvc")

DETECTION_TYPES = ("detr", "deformable_detr")
FAMILY = DETECTION_FAMILY
# HF detectors are trained with ImageNet statistics; tvc's small configs use 0.5/0.5.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HFDetector(nn.Module):
    """forward(pixel_values, pixel_mask=None) -> (logits, boxes), like a timm model's logits.

    `pixel_mask` (B, H, W) marks real pixels with 1 and padding with 0; None means all real.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.model_type = inner.config.model_type
        self.num_classes = int(inner.config.num_labels)
        self.num_queries = int(inner.config.num_queries)
        self.no_object_class = self.model_type == "detr"

    def forward(self, pixel_values, pixel_mask=None):
        out = self.inner(pixel_values=pixel_values, pixel_mask=pixel_mask, return_dict=True)
        return out.logits, out.pred_boxes

    def forward_all_layers(self, pixel_values, pixel_mask=None) -> list:
        """(logits, boxes) after every decoder layer, the last equal to forward()'s.

        Training supervises every layer (DETR's auxiliary losses), which speeds up learning
        severalfold; the prediction heads are shared (DETR) or per layer (Deformable DETR).
        """
        import torch

        inner = self.inner
        if self.model_type == "detr":
            old = inner.config.auxiliary_loss
            inner.config.auxiliary_loss = True  # makes the decoder keep every layer's output
            try:
                hidden = inner.model(
                    pixel_values=pixel_values, pixel_mask=pixel_mask
                ).intermediate_hidden_states
            finally:
                inner.config.auxiliary_loss = old
            return [
                (inner.class_labels_classifier(h), inner.bbox_predictor(h).sigmoid())
                for h in hidden
            ]
        from transformers.models.deformable_detr.modeling_deformable_detr import inverse_sigmoid

        out = inner(pixel_values=pixel_values, pixel_mask=pixel_mask, return_dict=True)
        hidden = out.intermediate_hidden_states
        outputs = []
        for level in range(hidden.shape[1]):  # as DeformableDetrForObjectDetection.forward
            ref = (
                out.init_reference_points
                if level == 0
                else (out.intermediate_reference_points[:, level - 1])
            )
            ref = inverse_sigmoid(ref)
            delta = inner.bbox_embed[level](hidden[:, level])
            if ref.shape[-1] == 4:
                coord = delta + ref
            else:
                coord = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            outputs.append((inner.class_embed[level](hidden[:, level]), coord.sigmoid()))
        return outputs


# ------------------------------------------------------------------------------ small configs


@dataclass(frozen=True)
class DetSmallConfig:
    """A detector small enough to train on a CPU, for tvc's 96x96 Fashion-MNIST canvases."""

    model_type: str
    config: dict[str, Any]
    description: str
    input_size: int = 96
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)


def _resnet(hidden: list[int], out: list[str], embed: int = 16) -> dict[str, Any]:
    """A small ResNet backbone config (basic blocks, one per stage); strides 4, 8, 16 by stage."""
    return {
        "model_type": "resnet",
        "num_channels": 3,
        "embedding_size": embed,
        "hidden_sizes": hidden,
        "depths": [1] * len(hidden),
        "layer_type": "basic",
        "out_features": out,
    }


_DETR_COMMON = {"num_labels": 10, "num_queries": 10, "dropout": 0.0, "auxiliary_loss": False}
DETECTION_CONFIGS: dict[str, DetSmallConfig] = {
    "detr_pico": DetSmallConfig(
        "detr",
        {
            **_DETR_COMMON,
            "backbone_config": _resnet([16, 32], ["stage2"]),
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
        },
        "DETR, ResNet(16,32) stride 8, width 64, 2+2 layers, 10 queries: ~0.2 M params; tests",
    ),
    "detr_nano": DetSmallConfig(
        "detr",
        {
            **_DETR_COMMON,
            "backbone_config": _resnet([32, 64], ["stage2"], embed=32),
            "d_model": 128,
            "encoder_layers": 3,
            "decoder_layers": 3,
            "encoder_attention_heads": 8,
            "decoder_attention_heads": 8,
            "encoder_ffn_dim": 256,
            "decoder_ffn_dim": 256,
        },
        "DETR, ResNet(32,64) stride 8, width 128, 3+3 layers, 10 queries: ~0.9 M params",
    ),
    "detr_micro": DetSmallConfig(
        "detr",
        {
            **_DETR_COMMON,
            # Three stages to stride 16: a wider backbone sees whole garments, and a 6x6 map
            # keeps attention cheap. On tvc's set it learns classes several times faster
            # than detr_pico's stride-8 two-stage backbone.
            "backbone_config": _resnet([32, 64, 128], ["stage3"], embed=32),
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
        },
        "DETR, ResNet(32,64,128) stride 16, width 64, 2+2 layers, 10 queries: ~0.5 M params",
    ),
    "deformable_detr_pico": DetSmallConfig(
        "deformable_detr",
        {
            **_DETR_COMMON,
            "backbone_config": _resnet([16, 32, 64], ["stage1", "stage2", "stage3"]),
            "num_feature_levels": 3,
            "d_model": 64,  # GroupNorm(32, d_model) in the input projections
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "encoder_n_points": 2,
            "decoder_n_points": 2,
        },
        "Deformable DETR, 3 levels (strides 4/8/16), width 64, 2+2 layers: ~0.25 M params",
    ),
}


# ---------------------------------------------------------------------------------- building


def _normalise_config(config) -> None:
    """Settings every tvc detector gets, whatever the checkpoint said.

    Eager attention exports and prunes predictably; untied prediction heads save to safetensors
    (which refuses tensors that share memory); pure-PyTorch deformable attention exports to ONNX.
    """
    config._attn_implementation = "eager"
    if config.model_type == "deformable_detr":
        config.tie_word_embeddings = False
        config.disable_custom_kernels = True


def det_config(config_dict: dict[str, Any]):
    """A transformers config object from a plain dict (as stored in artifacts)."""
    transformers = require("transformers", "detection transformers")
    cfg = dict(config_dict)
    model_type = cfg.pop("model_type", None)
    if model_type not in DETECTION_TYPES:
        raise ModelNotFoundError(
            f"model_type '{model_type}' is not a detection transformer tvc supports",
            f"use one of: {', '.join(DETECTION_TYPES)}",
        )
    # A legacy timm backbone would need timm's resnet50 and maybe a download; tvc configs and
    # current checkpoints carry a transformers backbone config instead.
    return transformers.AutoConfig.for_model(model_type, **cfg)


def det_build(config_dict: dict[str, Any]) -> HFDetector:
    """A freshly initialised detector of `config_dict`'s architecture (no download, ever)."""
    transformers = require("transformers", "detection transformers")
    from tvc.models.hf import quiet

    config = det_config(config_dict)
    _normalise_config(config)
    with quiet(transformers):  # e.g. a timm backbone's note on attention, not the user's concern
        inner = transformers.AutoModelForObjectDetection.from_config(config)
    return HFDetector(inner)


def init_for_training(model: HFDetector) -> None:
    """Re-initialise a fresh DETR's transformer as the DETR paper does, for training from scratch.

    transformers draws every Linear from N(0, 0.02), made for fine-tuning from a checkpoint. For a
    narrow model trained from scratch that is too small: query and key projections of 0.02 give
    uniform attention and near-zero gradients, so the decoder never learns where to look and
    the class loss sits at ln(num_classes) (measured: tvc's detr_pico learnt no classes in 15
    epochs on 4000 scenes). DETR's own code draws its transformer weights xavier-uniform; tvc
    does that for the encoder, decoder, input projection, query embeddings and heads.
    Deformable DETR keeps transformers' init: its sampling offsets start on a deliberate grid.
    """
    if model.model_type != "detr":
        return
    inner = model.inner
    parts = (
        inner.model.encoder,
        inner.model.decoder,
        inner.model.input_projection,
        inner.model.query_position_embeddings,
        inner.class_labels_classifier,
        inner.bbox_predictor,
    )
    for part in parts:
        for p in part.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)


def _info(name: str, config, *, input_size: int, mean, std, weights: str, model: HFDetector):
    from tvc.models.info import ModelInfo

    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}

    return ModelInfo(
        name=name,
        family=FAMILY,
        arch=config.model_type,
        kwargs=config.to_dict(),
        num_classes=int(config.num_labels),
        input_size=(int(config.num_channels), int(input_size), int(input_size)),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        weights=weights,
        extra={
            "task": "detection",
            "num_queries": model.num_queries,
            "no_object_class": model.no_object_class,
            "resize": "letterbox",  # tvc.data.letterbox; older artifacts lack it: "stretch"
            # what label i means: id2label's names (set from the training data's categories)
            "class_names": [labels.get(i, f"LABEL_{i}") for i in range(int(config.num_labels))],
        },
    )


def set_classes(
    config,
    *,
    num_classes: int | None,
    num_queries: int | None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
) -> list[str]:
    """Apply a class count, query count and class names to a transformers detection config;
    returns what changed (for the log). Names and COCO category ids are kept in the config
    (id2label, and tvc_category_ids), so they travel with the artifact and save_pretrained."""
    changed = []
    if num_classes is not None and num_classes != config.num_labels:
        changed.append(f"classes {config.num_labels} -> {num_classes}")
        config.num_labels = num_classes  # resets id2label to LABEL_i
    if num_queries is not None and num_queries != config.num_queries:
        changed.append(f"queries {config.num_queries} -> {num_queries}")
        config.num_queries = num_queries
    if class_names is not None and len(class_names) == config.num_labels:
        config.id2label = dict(enumerate(class_names))
        config.label2id = {n: i for i, n in enumerate(class_names)}
    if category_ids is not None and len(category_ids) == config.num_labels:
        config.tvc_category_ids = [int(c) for c in category_ids]
    return changed


def det_from_name(
    name: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    num_queries: int | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    warn_random: bool = True,
):
    """One of DETECTION_CONFIGS, randomly initialised or with a weights file for it;
    `num_classes` / `num_queries` size its class head and object queries."""
    from tvc.models.info import LoadedModel
    from tvc.models.weights import load_into, read_state_dict

    small = DETECTION_CONFIGS[name]
    config = det_config({"model_type": small.model_type, **small.config})
    set_classes(
        config,
        num_classes=num_classes,
        num_queries=num_queries,
        class_names=class_names,
        category_ids=category_ids,
    )
    model = det_build(config.to_dict())
    if weights is not None:
        state = read_state_dict(weights)
        if not any(k.startswith("inner.") for k in state):
            state = {f"inner.{k}": v for k, v in state.items()}
        load_into(model, state, str(weights))
    else:
        init_for_training(model)
        if warn_random:
            log.warning(
                "%s is randomly initialised (no --weights given); mAP numbers will be "
                "meaningless, latency and size are still valid",
                name,
            )
    model.eval()
    config = model.inner.config
    info = _info(
        name,
        config,
        input_size=input_size or small.input_size,
        mean=small.mean,
        std=small.std,
        weights=str(weights) if weights else "random",
        model=model,
    )
    return LoadedModel(model, info)


def det_from_directory(
    path: Path,
    *,
    num_classes: int | None = None,
    input_size: int | None = None,
    num_queries: int | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
):
    """A Hugging Face detection directory (config.json + model.safetensors/pytorch_model.bin).

    With `num_classes` different from the checkpoint's, the class head is re-initialised (for
    fine-tuning on another label set); with `num_queries` different from the checkpoint's, the
    query embeddings are (they have one row per query); everything else loads. Both are said
    on the terminal.
    """
    from tvc.models.hf import require_hf_weights
    from tvc.models.info import LoadedModel, read_json
    from tvc.models.weights import load_into

    transformers = require("transformers", "detection transformers")
    require_hf_weights(path)
    config = det_config(read_json(path / "config.json"))
    changes = set_classes(
        config,
        num_classes=num_classes,
        num_queries=num_queries,
        class_names=class_names,
        category_ids=category_ids,
    )
    changed = bool(changes)
    if changes:
        log.warning(
            "%s: %s; %s re-initialised for fine-tuning",
            path.name,
            ", ".join(changes),
            " and ".join(
                part
                for part, hit in (
                    ("the class head", "classes" in " ".join(changes)),
                    ("the query embeddings", "queries" in " ".join(changes)),
                )
                if hit
            ),
        )
    _normalise_config(config)
    from tvc.models.hf import quiet, say_what_is_new

    try:
        # Local directory only: transformers reads safetensors, or .bin with weights_only=True,
        # and maps legacy parameter names of older DETR checkpoints. Its load report and bars
        # are kept off the terminal: what the checkpoint lacked is said below in tvc's words.
        with quiet(transformers):
            hf, loading = transformers.AutoModelForObjectDetection.from_pretrained(
                str(path),
                config=config,
                local_files_only=True,
                ignore_mismatched_sizes=changed,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc, 200)
        raise WeightsError(
            f"cannot load the detector in {path} ({first})",
            "check that config.json and the weights were saved together by save_pretrained()",
        ) from exc
    missing = sorted(loading.get("missing_keys") or [])
    say_what_is_new(path, hf, missing, num_classes if changed else None)
    model = det_build(config.to_dict())
    # hf's state dict lists tied heads under every name, which fills the untied copies.
    load_into(model.inner, hf.state_dict(), str(path))
    model.eval()
    pre = path / "preprocessor_config.json"
    proc = read_json(pre) if pre.is_file() else {}
    if input_size is None:
        input_size = _size_from_processor(proc.get("size", {}))
    info = _info(
        path.name,
        model.inner.config,
        input_size=input_size,
        mean=proc.get("image_mean", IMAGENET_MEAN),
        std=proc.get("image_std", IMAGENET_STD),
        weights=str(path),
        model=model,
    )
    return LoadedModel(model, info)


def _size_from_processor(size: dict[str, Any]) -> int:
    """The square export size from a preprocessor config (DETR's own: shortest edge 800)."""
    for key in ("height", "shortest_edge"):
        if isinstance(size.get(key), int):
            return int(size[key])
    return 800


def torch_predictor(model: nn.Module, device: str = "cpu"):
    """predict(x[, pixel_mask]) -> (logits, boxes) as numpy, for tvc.eval.detection."""
    import torch

    def predict(x, pixel_mask=None):
        mask = None if pixel_mask is None else torch.from_numpy(pixel_mask).to(device)
        with torch.inference_mode():
            logits, boxes = model(torch.from_numpy(x).to(device), mask)
        return logits.float().cpu().numpy(), boxes.float().cpu().numpy()

    return predict


def is_detection_spec(spec: str) -> bool:
    """True when MODEL names a detector, decided without building it: a small detection config,
    a Hugging Face directory of a DETR type, or a tvc artifact made from a detector."""
    import json

    if spec in DETECTION_CONFIGS:
        return True
    path = Path(spec)
    try:
        if (path / "artifact.json").is_file():
            model = json.loads((path / "artifact.json").read_text()).get("model") or {}
            return model.get("family") == FAMILY or (
                (model.get("extra") or {}).get("task") == "detection"
            )
        if (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text()).get("model_type") in (
                DETECTION_TYPES
            )
    except (OSError, ValueError, AttributeError, TypeError):  # damaged JSON: not a detector
        return False  # the regular loaders explain unreadable files
    return False
