"""Object detection (DETR, Deformable DETR): COCO mAP on COCO-format or built-in scenes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.errors import ConfigError
from tvc.tasks.base import IGPT_TRAINING_ONLY, Column, OnnxIO, Outputs, Predict, Task

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet
    from tvc.models.load import LoadedModel, ModelInfo

INPUT, LOGITS, BOXES, MASK = "input", "logits", "boxes", "pixel_mask"
_FINE_TUNE_ONLY = "detectors prune heads and FFN channels of every layer by weight magnitude"
_BASELINE_STATS_IMAGES = 1000  # training images the eval baseline's box statistics read
_SET_LOSS = "detectors distil with DETR's set loss on matched queries"
_NO_ENGINE_YET = (
    "engines and dynamic batches are not supported for detectors yet: export the "
    "FP32/FP16/INT8 ONNX here and build the engine with trtexec from it"
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
            name: _NO_ENGINE_YET
            for name in (
                "trt",
                "dynamic_batch",
                "min_batch",
                "opt_batch",
                "max_batch",
                "workspace_mb",
                "timing_cache",
                "dla",
            )
        },
        "train": {
            "label_smoothing": "detectors train with DETR's set loss",
            "augment": "detector training does not augment scenes",
            "resume": "detector training keeps no checkpoint",
            "finetune": IGPT_TRAINING_ONLY,
            "ema": IGPT_TRAINING_ONLY,
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

    def agreement(
        self, reference: Outputs, candidate: Outputs, *, info: ModelInfo | None = None
    ) -> dict[str, Any]:
        """Query by query: pruning and factorizing keep the queries in place, and
        distillation matches them to the teacher's. Scores as the model scores them (softmax
        over all columns for DETR, sigmoid for Deformable DETR); with `info` (the input size)
        also box errors in input pixels and IoU on confident queries
        (tvc.eval.detection_parity)."""
        from tvc.eval.detection_parity import box_parity, class_scores

        ref_l, got_l = reference[LOGITS], candidate[LOGITS]
        same = float((ref_l.argmax(-1) == got_l.argmax(-1)).mean())
        sigmoid = _uses_sigmoid(info, ref_l)
        score_diff = np.abs(
            class_scores(got_l, sigmoid=sigmoid) - class_scores(ref_l, sigmoid=sigmoid)
        )
        record = {
            "n": int(ref_l.shape[0]),
            "agreement": same,
            "class_agreement": same,
            "max_abs_diff": float(np.abs(got_l - ref_l).max()),
            "logits_max_abs_diff": float(np.abs(got_l - ref_l).max()),
            "scores_max_abs_diff": float(score_diff.max()),
            "boxes_max_abs_diff": float(np.abs(candidate[BOXES] - reference[BOXES]).max()),
            "boxes_mean_abs_diff": float(np.abs(candidate[BOXES] - reference[BOXES]).mean()),
            "top1_agreement": same,  # the name tvc's classifier parity records use
        }
        if info is not None:
            _, h, w = info.input_size
            px = box_parity(reference, candidate, sigmoid=sigmoid, width=w, height=h)
            record.update({k: v for k, v in px.items() if k not in record})
        return record

    def variant_tolerance(self, info: ModelInfo, precision: str) -> dict[str, float] | None:
        """Box pixels, IoU and score limits for FP16 and INT8 (tvc.eval.detection_parity)."""
        from tvc.eval.detection_parity import tolerance

        _, h, w = info.input_size
        return tolerance(precision, w, h)

    def tolerance_misses(self, record: dict[str, Any], limits: dict[str, float]) -> list[str]:
        from tvc.eval.detection_parity import exceeded

        return exceeded(record, limits) if "boxes_px_mean_abs_diff" in record else []

    def parity_words(self, record: dict[str, Any]) -> str:
        words = f"class agreement {record['class_agreement']:.1%}"
        if "boxes_px_mean_abs_diff" in record:
            words += (
                f", boxes {record['boxes_px_mean_abs_diff']:.2f} px mean / "
                f"{record['boxes_px_max_abs_diff']:.2f} px max, IoU {record['iou_mean']:.3f} "
                f"on {record['boxes_compared']} box(es)"
            )
        if "detection_score_mean_abs_diff" in record:
            words += f", detection score diff {record['detection_score_mean_abs_diff']:.3f} mean"
        return words + f", score diff {record['scores_max_abs_diff']:.3f} max"

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
            # The letterbox mask reaches predictors that take one (an ONNX model exported
            # with --pixel-mask, run through tvc.runtime.predict); others see the padding.
            takes_mask = getattr(p, "takes_mask", False)

            def run(x: np.ndarray, mask: np.ndarray | None = None):
                out = p(x, mask) if mask is not None and takes_mask else p(x)
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
            pixel_mask=True,
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
            f"images of the {r['split']} split of {r['dataset']}"
        )

    def eval_notes(self, spec: str, data: Scenes) -> dict[str, Any]:
        """The grid baseline's mAP on the evaluated images (statistics from the training
        split, else from these images), and a warning when there are too few of them."""
        from tvc.data.detection import load_detection
        from tvc.errors import DataError
        from tvc.eval.detection_baseline import SMALL_SPLIT, grid_baseline

        scenes = data.scenes
        warnings = []
        if len(scenes) < SMALL_SPLIT:
            warnings.append(
                f"mAP on {len(scenes)} image(s) of the {scenes.split} split of {scenes.name} "
                f"says little: evaluate on {SMALL_SPLIT} or more images"
            )
        stats = scenes
        if scenes.split != "train":
            try:
                stats = load_detection(spec, "train", limit=_BASELINE_STATS_IMAGES)
            except DataError:  # no training split here: the evaluated images' own statistics
                stats = scenes
        baseline = grid_baseline(stats, scenes)
        if baseline is not None:
            baseline["line"] = (
                f"baseline (a fixed {baseline['grid']}x{baseline['grid']} grid of mean-size "
                f"'{baseline['class']}' boxes, from the {baseline['stats_from']}): "
                f"mAP {baseline['map']:.2f}, AP50 {baseline['ap50']:.2f}"
            )
        return {"baseline": baseline, "warnings": warnings}

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
        cfg.progress = not settings.get("no_progress", False)
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
                if not n and options.sampling != "gather":  # gather: the default, unasked
                    raise ConfigError(
                        f"--sampling {options.sampling} applies to Deformable DETR only; this "
                        "detector has no deformable attention",
                        "drop --sampling",
                    )
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


def _uses_sigmoid(info: ModelInfo | None, logits: np.ndarray) -> bool:
    """Deformable DETR scores classes with a sigmoid, DETR with a softmax over a "no object"
    column too. Without the model's facts, a one-column head can only be a sigmoid one."""
    if info is not None and "no_object_class" in info.extra:
        return not info.extra["no_object_class"]
    return logits.shape[-1] == 1
