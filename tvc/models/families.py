"""The table of vision-transformer families tvc compresses: one layout description per family.

A `Family` says where things are in one kind of model: the backbone, its list of blocks, each
block's attention (its q/k/v/o projections, or timm's fused qkv + proj) and MLP, the patch
projection, the classifier(s), and the parameters that torch-pruning cannot see but that follow a
pruned width: per-head tables (BEiT's relative position bias: its last axis indexes the heads) and
embedding-wide parameters only used in masked pretraining (a `mask_token`). Pruning, low-rank,
the structure rebuild and export read models through `tvc.compress.vit_layout`, which reads this
table, and loading a Hugging Face directory without a preprocessor_config.json takes the family's
normalisation statistics from it; adding a family is adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Modules every family may contain (a factorized layer is a LowRankLinear).
GENERIC_MODULES = frozenset({
    "Linear", "LowRankLinear", "Conv2d", "LayerNorm", "Identity", "Dropout", "DropPath",
    "GELU", "GELUTanh", "QuickGELU", "SiLU", "ReLU", "Tanh", "Sequential", "ModuleList",
    "GELUActivation",
})  # fmt: skip


IMAGENET = ("ImageNet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ("0.5/0.5", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Family:
    """Where the prunable widths of one ViT family live. Paths are dotted attribute paths:
    `backbone` from the tvc model, `layers`/`embed`/`shared_per_head`/`per_embed` from the
    backbone, `attn`/`mlp`/`per_head` from a block, `proj`/`fc` from the attention / MLP, and
    `classifiers` from the tvc model (those missing in a model are skipped)."""

    name: str  # shown to users and recorded in reports, e.g. "hf-dinov2"
    classes: tuple[str, ...]  # the model's class names (HF: the class inside HFClassifier)
    style: str  # "timm" (fused qkv, `scale`, `num_heads`) or "hf" (q/k/v/o, `scaling`)
    backbone: str
    layers: tuple[str, ...]  # candidate paths of the block list (transformers versions differ)
    embed: str  # the patch projection Conv2d: its output channels are the embedding width
    classifiers: tuple[str, ...]
    modules: frozenset[str]  # module class names this family may contain
    attn: str = "attention"
    proj: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp: str = "mlp"
    fc: tuple[str, str] = ("fc1", "fc2")
    per_head: tuple[str, ...] = ()  # per block: parameters whose last axis indexes the heads
    shared_per_head: tuple[str, ...] = ()  # in the backbone: the same, shared by all blocks
    per_embed: tuple[str, ...] = ()  # in the backbone: last axis is the embedding, untraced
    classifier_concat: int = 1  # the classifiers read this many embeddings side by side
    # Hugging Face: the config's model_type, and the normalisation the family's released
    # checkpoints use (their preprocessor_config.json), for directories that lack that file
    model_types: tuple[str, ...] = ()
    title: str = ""  # the family's name in messages, e.g. "DINOv2"
    stats: tuple[str, tuple[float, ...], tuple[float, ...]] = HALF

    @property
    def heads_attr(self) -> str:
        return "num_heads" if self.style == "timm" else "num_attention_heads"


def _hf(prefix: str, *parts: str) -> frozenset[str]:
    return frozenset(f"{prefix}{p}" for p in parts) | {"HFClassifier"}


_HF_PARTS = ("Model", "Embeddings", "PatchEmbeddings", "Layer", "Attention", "MLP", "Encoder")
_BEIT_REL = "relative_position_bias.relative_position_bias_table"

FAMILIES: tuple[Family, ...] = (
    Family(
        name="timm-vit",  # ViT, DeiT, DeiT distilled, DINOv2 (LayerScale, register tokens)
        classes=("VisionTransformer", "VisionTransformerDistilled"),
        style="timm",
        backbone="",
        layers=("blocks",),
        embed="patch_embed.proj",
        classifiers=("head", "head_dist"),
        modules=frozenset(
            {
                "VisionTransformer",
                "VisionTransformerDistilled",
                "PatchEmbed",
                "Block",
                "Attention",
                "Mlp",
                "LayerScale",
                "PatchDropout",
                "MergingBlocks",  # token merging's loop (tvc.models.merge)
            }
        ),
        attn="attn",
        proj=("qkv", "proj"),
    ),
    Family(
        name="hf-vit",
        classes=("ViTForImageClassification",),
        style="hf",
        backbone="inner.vit",
        layers=("layers", "encoder.layer"),
        embed="embeddings.patch_embeddings.projection",
        classifiers=("inner.classifier",),
        modules=_hf("ViT", *_HF_PARTS, "ForImageClassification"),
        model_types=("vit",),
        title="ViT",
        stats=HALF,
    ),
    Family(
        name="hf-deit",  # DeiT and DeiT with its distillation token and second classifier
        classes=("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        style="hf",
        backbone="inner.deit",
        layers=("layers", "encoder.layer"),
        embed="embeddings.patch_embeddings.projection",
        classifiers=("inner.classifier", "inner.cls_classifier", "inner.distillation_classifier"),
        modules=_hf(
            "DeiT", *_HF_PARTS, "ForImageClassification", "ForImageClassificationWithTeacher"
        ),
        per_embed=("embeddings.mask_token",),
        model_types=("deit",),
        title="DeiT",
        stats=IMAGENET,
    ),
    Family(
        name="hf-dinov2",  # LayerScale; the classifier reads [class token, mean patch token]
        classes=("Dinov2ForImageClassification",),
        style="hf",
        backbone="inner.dinov2",
        layers=("encoder.layer", "layers"),
        embed="embeddings.patch_embeddings.projection",
        classifiers=("inner.classifier",),
        modules=_hf("Dinov2", *_HF_PARTS, "LayerScale", "DropPath", "ForImageClassification"),
        per_embed=("embeddings.mask_token",),
        classifier_concat=2,
        model_types=("dinov2",),
        title="DINOv2",
        stats=IMAGENET,
    ),
    Family(
        name="hf-dinov2-registers",
        classes=("Dinov2WithRegistersForImageClassification",),
        style="hf",
        backbone="inner.dinov2_with_registers",
        layers=("encoder.layer", "layers"),
        embed="embeddings.patch_embeddings.projection",
        classifiers=("inner.classifier",),
        modules=_hf(
            "Dinov2WithRegisters", *_HF_PARTS, "LayerScale", "DropPath", "ForImageClassification"
        ),
        per_embed=("embeddings.mask_token",),
        classifier_concat=2,
        model_types=("dinov2_with_registers",),
        title="DINOv2 with registers",
        stats=IMAGENET,
    ),
    Family(
        name="hf-beit",  # relative position bias per block or shared; LayerScale on the block
        classes=("BeitForImageClassification",),
        style="hf",
        backbone="inner.beit",
        layers=("layers", "encoder.layer"),
        embed="embeddings.patch_embeddings.projection",
        classifiers=("inner.classifier",),
        modules=_hf(
            "Beit",
            *_HF_PARTS,
            "RelativePositionBias",
            "Pooler",
            "DropPath",
            "ForImageClassification",
        ),
        per_head=(_BEIT_REL,),
        shared_per_head=("shared_position_bias.relative_position_bias_table",),
        per_embed=("embeddings.mask_token",),
        model_types=("beit",),
        title="BEiT",
        stats=HALF,
    ),
)


def family_of(model: object) -> Family | None:
    """The family entry that describes `model`, or None."""
    kind = type(model).__name__
    inner = getattr(model, "inner", None)
    inner_kind = type(inner).__name__ if inner is not None else None
    for fam in FAMILIES:
        probe = kind if fam.style == "timm" else inner_kind
        if kind != "HFClassifier" and fam.style == "hf":
            continue
        if probe in fam.classes:
            return fam
    return None


def family_of_model_type(model_type: str) -> Family | None:
    """The Hugging Face family whose config has this model_type, or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def supported_names() -> str:
    """The model classes tvc compresses, for error messages and docs."""
    timm = [c for f in FAMILIES if f.style == "timm" for c in f.classes]
    hf = [c for f in FAMILIES if f.style == "hf" for c in f.classes]
    return f"timm {', '.join(timm)} and Hugging Face {', '.join(hf)}"
