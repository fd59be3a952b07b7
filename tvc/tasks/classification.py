"""Image classification (ViT, DeiT, any timm or Hugging Face classifier): top-1 / top-5."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.tasks.base import IGPT_TRAINING_ONLY, Column, OnnxIO, Outputs, Predict, Task

if TYPE_CHECKING:
    from tvc.data.base import ImageSet
    from tvc.models.load import LoadedModel, ModelInfo

INPUT, LOGITS = "input", "logits"


class ClassificationTask(Task):
    name = "classification"
    metric = "top1"
    metric_label = "top-1 %"
    noun = "classifier"
    quality_key = "accuracy"
    data_example = "fashion-mnist"
    columns = (Column("top1", "top-1 %"), Column("top5", "top-5 %"))
    refuses: ClassVar[dict[str, dict[str, str]]] = {
        "export": {
            "sampling": "only Deformable DETR's attention samples bilinearly",
            "pixel_mask": "classifiers take whole images, never padded ones",
        },
        "train": {
            "num_queries": "object queries are for detectors (DETR, Deformable DETR)",
            "finetune": IGPT_TRAINING_ONLY,
            "ema": IGPT_TRAINING_ONLY,
        },
    }

    # The fallback task: anything no other task claims is an image classifier.
    def owns_model(self, spec: str) -> bool:
        return True

    def owns_info(self, info: ModelInfo) -> bool:
        return True

    def owns_data(self, spec: str) -> bool:
        return True

    def names_data(self, spec: str) -> bool:
        from pathlib import Path

        from tvc.data import FASHION_MNIST

        head, _, rest = spec.strip().partition(":")
        if head.lower() == FASHION_MNIST:
            return not rest or Path(rest).expanduser().exists()
        return Path(spec.strip()).expanduser().exists()

    # ---------------------------------------------------------------------------------- data
    def load_data(
        self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None, seed: int = 0
    ) -> ImageSet:
        from tvc.models.info import model_images

        return model_images(spec, split, info, limit=limit, seed=seed)

    def sample_inputs(self, info: ModelInfo, data_spec: str | None, n: int) -> tuple[Any, str]:
        import torch

        if data_spec is None:
            gen = torch.Generator().manual_seed(0)
            return torch.randn(n, *info.input_size, generator=gen), "random inputs"
        data = self.load_data(data_spec, "val", info, limit=n)
        x, _ = next(iter(data.batches(n)))
        return torch.from_numpy(x), f"{data.name} {data.split} images"

    def taylor_batches(self, info: ModelInfo, data_spec: str, n: int, size: int) -> list:
        """`n` labelled batches of `size` images, for taylor importance."""
        import torch

        data = self.load_data(data_spec, "train", info, limit=n * size)
        return [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data.batches(size)]

    # ------------------------------------------------------------------------------- running
    def outputs(self, model: Any, x: Any) -> Outputs:
        import torch

        with torch.no_grad():
            return {LOGITS: model.eval()(x).float().cpu().numpy()}

    def agreement(
        self, reference: Outputs, candidate: Outputs, *, info: ModelInfo | None = None
    ) -> dict[str, Any]:
        ref, got = reference[LOGITS].astype(np.float64), candidate[LOGITS].astype(np.float64)
        diff = np.abs(got - ref)
        return {
            "n": int(ref.shape[0]),
            "agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "rel_error": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12)),
        }

    def labels_misfit(self, info: ModelInfo, data: ImageSet) -> str | None:
        if data.num_classes != info.num_classes:
            return (
                f"has {data.num_classes} classes but the model's head has {info.num_classes}, "
                "so its labels cannot measure the model's accuracy"
            )
        return None

    def evaluate(
        self,
        predict: Predict,
        data: ImageSet,
        *,
        batch_size: int = 64,
        reference: Predict | None = None,
    ) -> dict[str, Any]:
        from tvc.eval.classification import evaluate

        def logits(p: Predict):
            return lambda x: p(x)[LOGITS]

        return evaluate(
            logits(predict),
            data,
            batch_size=batch_size,
            reference=logits(reference) if reference else None,
        )

    def quality(
        self,
        loaded: LoadedModel,
        data: ImageSet,
        *,
        reference: LoadedModel | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        from tvc.eval.classification import evaluate
        from tvc.progress import Progress, counted
        from tvc.train.loop import torch_predict

        ref = torch_predict(reference.model.eval(), device) if reference else None
        with Progress() as bar:  # a bar on a terminal, plain lines in a log
            bar.task(f"evaluating {loaded.info.name}", len(data), unit="images")
            predict = counted(torch_predict(loaded.model.eval(), device), bar)
            out = evaluate(predict, data, batch_size=256, reference=ref)
        for m in (loaded, reference):
            if m is not None:
                m.model.cpu()
        return out

    def headline(self, quality: dict[str, Any]) -> dict[str, Any]:
        return {"top1": quality["top1"], "top5": quality["top5"], "accuracy": quality}

    def describe(self, quality: dict[str, Any]) -> str:
        return f"top-1 {quality['top1']:.2f}% on {quality['n']} images"

    def eval_line(self, result: dict[str, Any]) -> str:
        r = result
        top5 = f", top-5 {r['top5']:.2f}%" if r["top5"] is not None else ""
        agree = f", agreement {r['agreement']:.2f}%" if r["agreement"] is not None else ""
        return (
            f"{r['variant']} [{r['backend']}]: top-1 {r['top1']:.2f}%{top5}{agree} on "
            f"{r['n']} {r['dataset']} {r['split']} images"
        )

    # ----------------------------------------------------------------------- train, compress
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict | None:
        from tvc.train.loop import TrainConfig
        from tvc.train.train import train_model

        known = {
            "epochs",
            "lr",
            "batch_size",
            "weight_decay",
            "warmup_epochs",
            "grad_clip",
            "label_smoothing",
            "augment",
            "seed",
            "device",
        }
        cfg = TrainConfig(
            **{k: v for k, v in settings.items() if k in known},
            progress=not settings.get("no_progress", False),
        )
        if cfg.grad_clip == 0:
            cfg.grad_clip = None
        cfg.validate()
        return train_model(
            loaded,
            data_spec,
            settings["output"],
            cfg,
            limit=settings.get("limit"),
            eval_limit=settings.get("eval_limit"),
            resume=settings.get("resume", False),
        )

    def prune(
        self, model: Any, settings: dict[str, Any], *, example: Any, batches: list | None = None
    ) -> dict[str, Any]:
        from tvc.compress.prune import PruneConfig, prune

        keep = tuple(
            k.strip()
            for item in settings.get("keep", ("head",))
            for k in item.split(",")
            if k.strip()
        )
        cfg = PruneConfig(
            ratio=settings["prune"],
            importance=settings.get("importance", "magnitude"),
            global_pruning=settings.get("global_", False),
            prune_heads=settings.get("prune_heads", False),
            round_to=settings.get("round_to", 8),
            keep=keep,
            steps=settings.get("steps", 1),
            seed=settings.get("seed", 0),
        )
        return prune(model, cfg, example_input=example, batches=batches)

    def distill(
        self, student: LoadedModel, teacher: LoadedModel, data_spec: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        from tvc.compress.distill import DistillConfig, distill

        given = {
            k: settings[k]
            for k in ("epochs", "kd", "temperature", "alpha", "limit", "lr", "batch_size", "device")
            if settings.get(k) is not None
        }
        cfg = DistillConfig(teacher=teacher.info.name, data=data_spec, eval_split=None, **given)
        cfg.validate()
        return distill(student, cfg, teacher=teacher)

    # -------------------------------------------------------------------------------- export
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        return OnnxIO((INPUT,), (LOGITS,), {INPUT: {0: "batch"}, LOGITS: {0: "batch"}})
