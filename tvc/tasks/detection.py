"""Object detection (DETR, Deformable DETR): COCO mAP on COCO-format or built-in scenes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.errors import ConfigError
from tvc.tasks.base import Column, OnnxIO, Outputs, Predict, Task

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet
    from tvc.models.load import LoadedModel, ModelInfo

INPUT, LOGITS, BOXES, MASK = "input", "logits", "boxes", "pixel_mask"
_FINE_TUNE_ONLY = "detectors prune heads and FFN channels of every layer by weight magnitude"
_SET_LOSS = "detectors distil with DETR's set loss on matched queries"
_NO_ENGINE_YET = (
    "not supported for detection models yet: export the FP32/INT8 ONNX here and build the "
    "engine with trtexec from model.onnx"
)


@dataclass
class Scenes:
    """Detection scenes with the preprocessing and decoding of the model they are for."""

    scenes: DetectionSet
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    no_object_class: bool
    resize: str = "letterbox"  # tvc.data.letterbox (artifacts made before it: "stretch")

    def __len__(self) -> int:
        return len(self.scenes)


class DetectionTask(Task):
    name = "detection"
    metric = "map"
    metric_label = "COCO mAP"
    noun = "detector"
    quality_key = "detection"
    data_example = "fashion-mnist-det"
    columns = (Column("map", "mAP"), Column("ap50", "AP50"))
    refuses: ClassVar[dict[str, dict[str, str]]] = {
        "compress": {
            "importance": _FINE_TUNE_ONLY,
            "global_": _FINE_TUNE_ONLY,
            "prune_heads": _FINE_TUNE_ONLY,
            "keep": _FINE_TUNE_ONLY,
            "steps": _FINE_TUNE_ONLY,
            "kd": _SET_LOSS,
            "temperature": _SET_LOSS,
            "alpha": _SET_LOSS,
        },
        "export": {
            "fp16": _NO_ENGINE_YET,
            "trt": _NO_ENGINE_YET,
            "dynamic_batch": _NO_ENGINE_YET,
        },
        "train": {
            "label_smoothing": "detectors train with DETR's set loss",
            "augment": "detector training does not augment scenes",
            "resume": "detector training keeps no checkpoint",
        },
    }

    def owns_model(self, spec: str) -> bool:
        try:
            from tvc.models.detection import is_detection_spec
        except ImportError:  # detection needs the 'hf' extra (transformers)
            return False
        return is_detection_spec(spec)

    def owns_info(self, info: ModelInfo) -> bool:
        from tvc.models.info import is_detector  # torch-free: exported models on a board

        return is_detector(info)

    def owns_data(self, spec: str) -> bool:
        from tvc.data.detection import is_detection_spec

        return is_detection_spec(spec)

    # ------------------------------------------------------------------------------- models
    def load_model(self, spec: str, **kwargs: Any) -> LoadedModel:
        """load_model, plus what only detectors take: `num_queries`, `class_names`,
        `category_ids`, and --input-size for a Hugging Face directory too."""
        from tvc.models.detection_data import load_detector

        return load_detector(spec, **kwargs)

    def training_model_kwargs(self, model: str, data: str, options: dict[str, Any]) -> dict:
        """Classes and object queries from the training data (announced on the terminal)."""
        from tvc.models.detection_data import sized_for_data

        train = self._train_set(data, options.get("limit"))
        return sized_for_data(model, train, options)

    def _train_set(self, spec: str, limit: int | None) -> DetectionSet:
        """The train split, read once for sizing the model and training it."""
        from tvc.data.detection import load_detection

        key = (spec, limit)
        cached = getattr(self, "_train_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, load_detection(spec, "train", limit=limit))
            self._train_cache = cached
        return cached[1]

    # ---------------------------------------------------------------------------------- data
    def load_data(
        self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None, seed: int = 0
    ) -> Scenes:
        from tvc.data.detection import load_detection
        from tvc.eval.detection import resize_of

        # Scenes keep the dataset's own seed, so test numbers of different runs are comparable.
        scenes = load_detection(spec, split, limit=limit)
        return Scenes(
            scenes,
            tuple(info.input_size),
            tuple(info.mean),
            tuple(info.std),
            bool(info.extra.get("no_object_class", True)),
            resize_of(info),
        )

    def sample_inputs(self, info: ModelInfo, data_spec: str | None, n: int) -> tuple[Any, str]:
        import torch

        if data_spec is None:
            gen = torch.Generator().manual_seed(0)
            return torch.randn(n, *info.input_size, generator=gen), "random inputs"
        data = self.load_data(data_spec, "test", info)
        test = data.scenes
        sub = test.subset(min(n, len(test)))
        view = {"input_size": info.input_size, "mean": info.mean, "std": info.std}
        x = np.concatenate([b[0] for b in sub.batches(64, **view, resize=data.resize)])
        return torch.from_numpy(x), f"{test.name} {test.split} images"

    # ------------------------------------------------------------------------------- running
    def outputs(self, model: Any, x: Any) -> Outputs:
        import torch

        with torch.no_grad():  # x: images, or (images, pixel_mask) for a padded export
            logits, boxes = model.eval()(*x) if isinstance(x, tuple) else model.eval()(x)
        return {LOGITS: logits.float().cpu().numpy(), BOXES: boxes.float().cpu().numpy()}

    def agreement(self, reference: Outputs, candidate: Outputs) -> dict[str, Any]:
        """Query by query: pruning and factorizing keep the queries in place, and
        distillation matches them to the teacher's."""
        ref_l, got_l = reference[LOGITS], candidate[LOGITS]
        same = float((ref_l.argmax(-1) == got_l.argmax(-1)).mean())
        return {
            "n": int(ref_l.shape[0]),
            "agreement": same,
            "class_agreement": same,
            "max_abs_diff": float(np.abs(got_l - ref_l).max()),
            "logits_max_abs_diff": float(np.abs(got_l - ref_l).max()),
            "scores_max_abs_diff": float(np.abs(_softmax(got_l) - _softmax(ref_l)).max()),
            "boxes_max_abs_diff": float(np.abs(candidate[BOXES] - reference[BOXES]).max()),
            "boxes_mean_abs_diff": float(np.abs(candidate[BOXES] - reference[BOXES]).mean()),
            "top1_agreement": same,  # the name tvc's classifier parity records use
        }

    def evaluate(
        self,
        predict: Predict,
        data: Scenes,
        *,
        batch_size: int = 64,
        reference: Predict | None = None,
    ) -> dict[str, Any]:
        from tvc.eval.detection import evaluate_detector

        def pair(p: Predict):
            def run(x: np.ndarray):
                out = p(x)
                return out[LOGITS], out[BOXES]

            return run

        view = {
            "input_size": data.input_size,
            "mean": data.mean,
            "std": data.std,
            "resize": data.resize,
        }
        ref_kw: dict[str, Any] = {}
        if reference is not None:
            ref_kw = {
                "reference": pair(reference),
                "reference_preprocess": view,
                "reference_no_object_class": data.no_object_class,
            }
        return evaluate_detector(
            pair(predict),
            data.scenes,
            no_object_class=data.no_object_class,
            batch_size=batch_size,
            **view,
            **ref_kw,
        )

    def quality(
        self,
        loaded: LoadedModel,
        data: Scenes,
        *,
        reference: LoadedModel | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        from tvc.eval.detection import evaluate_model

        out = evaluate_model(loaded, data.scenes, device=device, reference=reference)
        for m in (loaded, reference):
            if m is not None:
                m.model.cpu()
        return out

    def headline(self, quality: dict[str, Any]) -> dict[str, Any]:
        return {"map": quality["map"], "ap50": quality["ap50"], "detection": quality}

    def describe(self, quality: dict[str, Any]) -> str:
        return f"mAP {quality['map']:.2f} (AP50 {quality['ap50']:.2f}) on {quality['n']} images"

    def eval_line(self, result: dict[str, Any]) -> str:
        r = result
        agree = f", agreement mAP {r['agreement']:.2f}" if r["agreement"] is not None else ""
        return (
            f"{r['variant']}: mAP {r['map']:.2f}, AP50 {r['ap50']:.2f}{agree} on {r['n']} "
            f"{r['dataset']} {r['split']} images"
        )

    # ----------------------------------------------------------------------- train, compress
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict | None:
        from tvc.train.detection import det_train_config, train_detector_run

        if settings.get("pretrained") and settings.get("weights") is None:
            from tvc.models.detection import DETECTION_CONFIGS

            if settings.get("model") in DETECTION_CONFIGS:
                raise ConfigError(
                    f"{settings['model']} has no pretrained weights on disk and tvc never "
                    "downloads",
                    "pass --weights FILE, or a Hugging Face detection directory as MODEL",
                )
        keys = ("epochs", "lr", "batch_size", "weight_decay", "grad_clip", "seed", "device")
        cfg = det_train_config(loaded, **{k: settings[k] for k in keys if k in settings})
        train = self._train_set(data_spec, settings.get("limit"))
        self._train_cache = None  # read again by the next run: files may change between runs
        return train_detector_run(
            loaded,
            data_spec,
            cfg,
            limit=settings.get("limit"),
            eval_limit=settings.get("eval_limit"),
            warmup_epochs=settings.get("warmup_epochs"),
            train=train,
        )

    def prune(
        self, model: Any, settings: dict[str, Any], *, example: Any, batches: list | None = None
    ) -> dict[str, Any]:
        from tvc.compress.detection import DetPruneConfig, prune_detector

        cfg = DetPruneConfig(ratio=settings["prune"], round_to=settings.get("round_to", 8))
        cfg.validate()
        return prune_detector(model, cfg)

    def factorize(self, model: Any, lowrank: Any, *, samples: Any) -> dict[str, Any]:
        from tvc.compress.detection import factorize_detector

        return factorize_detector(model, lowrank)

    def distill(
        self, student: LoadedModel, teacher: LoadedModel, data_spec: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        from tvc.data.detection import load_detection
        from tvc.train.detection import DetDistillConfig, distill_detector
        from tvc.train.dist import pick_device

        # lr 5e-4 with clip 1.0: what distils tvc's detectors (benchmarks/bench_detection.py)
        given = {k: settings[k] for k in ("epochs", "lr", "batch_size") if k in settings}
        device = str(pick_device(settings.get("device", "auto")))
        cfg = DetDistillConfig(
            grad_clip=1.0, **{"epochs": 1, "lr": 5e-4, "batch_size": 16, **given, "device": device}
        )
        cfg.validate()
        train = load_detection(data_spec, "train", limit=settings.get("limit"))
        return distill_detector(student, teacher, train, cfg)

    # -------------------------------------------------------------------------------- export
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        return OnnxIO((INPUT,), (LOGITS, BOXES), {INPUT: {0: "batch"}})

    export_eval_limit = 200  # COCO mAP of every gate step: scenes cost more than images
    default_calib = "fashion-mnist-det"
    parity_hint = (
        "try --sampling grid (or gather) or another --opset; if it persists, report the model"
    )

    def export_info(self, info: ModelInfo, input_size: int | None) -> ModelInfo:
        """Detectors take any size; each export fixes one (a square side)."""
        if input_size is None:
            return info
        if input_size < 32:
            raise ConfigError(
                f"--input-size {input_size} is too small for a detector "
                "(the backbone downsamples 16-32x)",
                "use 64 or more",
            )
        from tvc.models.info import ModelInfo

        return ModelInfo.from_json(
            {**info.to_json(), "input_size": [info.input_size[0], input_size, input_size]}
        )

    def export_patches(self, model: Any, options: Any):
        """Deformable DETR's bilinear sampler as Gathers or GridSample (tvc.export.deformable);
        plain DETR has nothing to patch."""
        import contextlib

        from tvc.export.deformable import deformable_sampling

        @contextlib.contextmanager
        def patched():
            with deformable_sampling(model, options.sampling) as n:
                yield {"sampling": options.sampling if n else None}

        return patched()

    def export_feeds(
        self, info: ModelInfo, batches: list[np.ndarray], options: Any
    ) -> list[dict[str, np.ndarray]]:
        """With --pixel-mask a `pixel_mask` input (1 = real pixel); every other sample batch
        is padded at the bottom/right, so parity covers masked pixels too."""
        if not options.pixel_mask:
            return super().export_feeds(info, batches, options)
        rng = np.random.default_rng(0)
        feeds = []
        for i, x in enumerate(batches):
            b, _, h, w = x.shape
            mask = np.ones((b, h, w), np.int64)
            if i % 2 == 1:
                for j in range(b):
                    mask[j, int(rng.integers(h // 2, h + 1)) :, :] = 0
                    mask[j, :, int(rng.integers(w // 2, w)) :] = 0
            feeds.append({INPUT: x, MASK: mask})
        return feeds

    def export_io(self, info: ModelInfo, io: dict[str, Any]) -> dict[str, Any]:
        for out in io["outputs"]:
            if out["name"] == BOXES:
                out["format"] = "cxcywh, normalised to [0, 1]"
        return {**io, "no_object_class": bool(info.extra.get("no_object_class", False))}

    def images(self, data: Scenes) -> Any:
        from tvc.data.base import ImageSet

        view = {"input_size": data.input_size, "mean": data.mean, "std": data.std}
        x = np.concatenate([b[0] for b in data.scenes.batches(64, **view, resize=data.resize)])
        scenes = data.scenes
        return ImageSet.from_arrays(
            x, np.zeros(len(x), np.int64), name=scenes.name, split=scenes.split
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (any trailing "no object" column included)."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
