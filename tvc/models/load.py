"""Turn a MODEL argument into a torch module and the facts every later step needs.

MODEL may be a timm name or alias (`deit_small_patch16_224`, `vit_b16`), one of tvc's small
configs (`vit_fmnist`), a Hugging Face model directory (config.json + weights: transformers'
save_pretrained, or a timm model from the Hub), or a tvc model artifact. Weights come only
from disk: tvc never downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tvc.artifact import Artifact, is_artifact, load_artifact, parent_path
from tvc.deps import require
from tvc.errors import ArtifactError, ConfigError, ModelNotFoundError, WeightsError
from tvc.models import registry
from tvc.models.info import LoadedModel, ModelInfo, read_json

log = logging.getLogger("tvc")

WEIGHTS_FILE = "weights.safetensors"


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    pretrained: bool = False,
    warn_random: bool = True,
) -> LoadedModel:
    """Build or load the model named by `spec`. See the module docstring for the forms."""
    require("torch", "loading a PyTorch model")
    if input_size is not None and input_size < 1:  # 0 or less: no image to build a model for
        raise ConfigError(f"--input-size must be >= 1, got {input_size}", "e.g. --input-size 224")
    path = Path(spec)
    if path.exists():
        if is_artifact(path):
            if weights is not None:
                raise WeightsError(
                    f"{spec} is an artifact and carries its own weights",
                    "drop --weights, or pass the architecture name with --weights",
                )
            loaded = model_from_artifact(load_artifact(path))
            if input_size is not None and input_size != loaded.info.input_size[-1]:
                raise ConfigError(
                    f"--input-size {input_size} does not apply to the artifact {spec}: it keeps "
                    f"the size it was made at ({loaded.info.input_size[-1]} px)",
                    "drop --input-size, or start again from the original model with it",
                )
            return loaded
        if path.is_dir() and (path / "config.json").is_file():
            from tvc.models.hf import hf_from_directory
            from tvc.models.timm_dir import is_timm_config, timm_from_directory

            if weights is not None:
                raise WeightsError(
                    f"{spec} is a model directory and carries its own weights",
                    "drop --weights, or pass the architecture name with --weights",
                )
            cfg = read_json(path / "config.json")
            if is_timm_config(cfg):  # a timm Hub folder (huggingface-cli download timm/...)
                return timm_from_directory(
                    path, cfg, num_classes=num_classes, input_size=input_size
                )

            return hf_from_directory(path, num_classes=num_classes, input_size=input_size)
        if path.suffix == ".onnx":
            raise ModelNotFoundError(
                f"{spec} is an ONNX file, but this step needs a PyTorch model",
                "pass the model name or the model artifact it was exported from",
            )
        if path.is_file():
            raise ModelNotFoundError(
                f"{spec} is a file; a weights file needs its architecture",
                f"pass the architecture and the file: MODEL_NAME --weights {spec}",
            )
        raise ModelNotFoundError(
            f"{spec} is a directory but neither a tvc artifact nor a Hugging Face model "
            "(no artifact.json or config.json)",
            "point at a directory written by tvc or saved with save_pretrained()",
        )
    from tvc.models.lstr import LSTR_CONFIGS, lstr_from_name

    if spec in LSTR_CONFIGS:  # LSTR lane-shape transformers
        return lstr_from_name(spec, weights=weights, input_size=input_size,
                              warn_random=warn_random)  # fmt: skip
    from tvc.models.detection import DETECTION_CONFIGS, det_from_name
    from tvc.models.igpt import CONFIGS as IGPT_CONFIGS
    from tvc.models.igpt import igpt_from_name

    if spec in IGPT_CONFIGS:  # Image GPT small configs
        return igpt_from_name(spec, weights=weights, warn_random=warn_random)
    if spec in DETECTION_CONFIGS:  # DETR / Deformable DETR small configs
        return det_from_name(spec, weights=weights, num_classes=num_classes,
                             input_size=input_size, warn_random=warn_random)  # fmt: skip
    resolved = registry.resolve(spec)
    return timm_from_name(
        resolved,
        weights=weights,
        num_classes=num_classes,
        input_size=input_size,
        pretrained=pretrained,
        warn_random=warn_random,
    )


def _timm_build(arch: str, kwargs: dict[str, Any]):
    import timm

    return timm.create_model(arch, pretrained=False, **kwargs)


def timm_from_name(
    resolved: registry.Resolved,
    *,
    weights: str | Path | None,
    num_classes: int | None,
    input_size: int | None,
    pretrained: bool,
    warn_random: bool,
) -> LoadedModel:
    from tvc.models.weights import NPZ, load_into, load_npz, npz_classes, read_state_dict

    kwargs = dict(resolved.kwargs)
    state = None
    npz = weights is not None and Path(weights).suffix == NPZ  # a JAX/Flax ViT checkpoint
    new_head = num_classes is not None  # asked for: may differ from the checkpoint's
    if pretrained and weights is None:
        raise WeightsError(
            f"pretrained weights for {resolved.name} are not on disk and tvc never downloads",
            "download them yourself and pass --weights FILE (safetensors or .pth state dict)",
        )
    ckpt_classes = npz_classes(weights) if npz else None
    if npz and num_classes is None:
        num_classes = ckpt_classes
    elif weights is not None and not npz:
        state = read_state_dict(weights)
        head = state.get("head.weight")
        if num_classes is None and head is not None and head.ndim == 2:
            num_classes = int(head.shape[0])
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if input_size is not None:
        kwargs["img_size"] = input_size
    model = _timm_build(resolved.arch, kwargs)
    if npz:
        load_npz(model, weights)  # a head of another class count stays as built (random)
        if ckpt_classes != getattr(model, "num_classes", ckpt_classes):
            held = f"a {ckpt_classes}-class head" if ckpt_classes else "no classifier"
            log.warning(f"{weights} holds {held}: the {model.num_classes}-class head is new, "
                        "random until trained (tvc train MODEL --data D)")  # fmt: skip
    if state is not None:
        if input_size is not None:
            state = _resample_for(model, state)
        if new_head:
            state = _fresh_classifier(model, state, str(weights))
        load_into(model, state, str(weights))
    elif warn_random and not npz:
        log.warning(
            "%s is randomly initialised (no --weights given); accuracy numbers will be "
            "meaningless, latency and size are still valid",
            resolved.name,
        )
    model.eval()
    info = _timm_info(model, resolved.name, resolved.arch, kwargs, weights)
    if weights is not None and resolved.name not in registry.SMALL_CONFIGS:
        from tvc.models.preprocess import timm_preprocess

        # a checkpoint of this architecture: read image files as timm evaluates it
        info.extra["preprocess"] = timm_preprocess(getattr(model, "pretrained_cfg", {}) or {})
    return LoadedModel(model, info)


def _fresh_classifier(model, state: dict, source: str) -> dict:
    """--num-classes asked for another class count than the checkpoint's classifier: keep the
    checkpoint's backbone and the freshly built (random) classifier, and say so, as a Hugging
    Face directory does. Only the classifier's tensors may differ; anything else still fails."""
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = model.state_dict()
    swapped = [
        k
        for k in state
        if k in own
        and any(k.startswith(f"{h}.") for h in heads)
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if not swapped:
        return state
    log.warning(
        f"the classifier in {source} predicts {state[swapped[0]].shape[0]} classes, "
        f"{getattr(model, 'num_classes', '?')} were asked for: it is replaced by a new one, "
        "random until trained (tvc train MODEL --data D)"
    )
    return {**state, **{k: own[k] for k in swapped}}


def _resample_for(model, state: dict) -> dict:
    """Resize position embeddings when the input size differs from the checkpoint's."""
    try:
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError:
        return state
    return checkpoint_filter_fn(state, model)


def _timm_info(model, name: str, arch: str, kwargs: dict, weights) -> ModelInfo:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    chans = kwargs.get("in_chans", cfg.get("input_size", (3,))[0])
    if img is None:
        img = cfg.get("input_size", (3, 224, 224))[1:]
    return ModelInfo(
        name=name,
        family="timm",
        arch=arch,
        kwargs=kwargs,
        num_classes=int(getattr(model, "num_classes", kwargs.get("num_classes", 1000))),
        input_size=(int(chans), int(img[0]), int(img[1])),
        mean=tuple(float(x) for x in cfg.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(float(x) for x in cfg.get("std", (0.5, 0.5, 0.5))),
        weights=str(weights) if weights else "random",
        extra={"dist_token": bool(getattr(model, "dist_token", None) is not None)},
    )


def build_from_info(info: ModelInfo):
    """A fresh model of `info`'s architecture and structure (weights uninitialised)."""
    if info.family == "timm":
        model = _timm_build(info.arch, info.kwargs)
    elif info.family == "hf":
        from tvc.models.hf import hf_build

        model = hf_build(info.kwargs)
    elif info.family == "igpt":
        from tvc.models.igpt import igpt_build

        model = igpt_build(info.kwargs)
    elif info.family == "hf-det":
        from tvc.models.detection import det_build

        model = det_build(info.kwargs)
    elif info.family == "lstr":
        from tvc.models.lstr import lstr_build

        model = lstr_build(info.kwargs)
    else:
        raise ArtifactError(
            f"unknown model family '{info.family}' in artifact",
            "the artifact was written by a newer tvc; upgrade tvc",
        )
    if info.structure:
        from tvc.models.structure import apply_structure

        apply_structure(model, info.structure)
    return model


def model_from_artifact(artifact: Artifact) -> LoadedModel:
    """Rebuild a model artifact: fresh architecture + recorded structure + safetensors weights."""
    from tvc.models.weights import load_into, read_state_dict

    if artifact.kind != "model":
        parent = parent_path(artifact.path, artifact.meta)
        if parent and is_artifact(parent) and load_artifact(parent, verify=False).kind == "model":
            return model_from_artifact(load_artifact(parent))
        raise ArtifactError(
            f"{artifact.path} is a '{artifact.kind}' artifact, not a PyTorch model artifact",
            "pass the model artifact it was made from (see 'parent' in its artifact.json)",
        )
    if "model" not in artifact.meta:
        raise ArtifactError(
            f"{artifact.path}/artifact.json has no 'model' section", "re-run the step that wrote it"
        )
    info = ModelInfo.from_json(artifact.meta["model"])
    model = build_from_info(info)
    load_into(model, read_state_dict(artifact.file(WEIGHTS_FILE)), str(artifact.path))
    model.eval()
    return LoadedModel(model, info, artifact)


def save_model(writer, loaded: LoadedModel) -> None:
    """Write a model's weights (safetensors) and its rebuild info into an artifact being staged."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(writer.path_for(WEIGHTS_FILE)))
    writer.meta["model"] = loaded.info.to_json()


def write_model_artifact(
    loaded: LoadedModel,
    out: str | Path,
    *,
    spec: dict[str, Any],
    metrics: dict[str, Any],
    force: bool | None = None,
) -> Artifact:
    """Write `loaded` as a model artifact at `out`, atomically, with `metrics`; return it.

    The parent is the artifact the model came from (lineage). The model moves to the CPU, where
    its weights are read for saving.
    """
    from tvc.artifact import write_artifact

    loaded.model.to("cpu")
    with write_artifact(out, "model", parent=loaded.artifact, spec=spec, force=force) as w:
        save_model(w, loaded)
        w.meta["metrics"] = metrics
    return load_artifact(out)
