"""The layout of a vision transformer that structured pruning and low-rank need to know.

`vit_layout(model)` names, per block, the attention (q, k, v and output projections, heads, head
dimension) and the MLP (its two Linears), plus the residual width, the classifier(s) and the
parameters torch-pruning cannot trace (per-head bias tables, mask tokens), for every family in
tvc.models.families (timm ViT / DeiT / DINOv2, Hugging Face ViT, DeiT, DINOv2 with and
without registers, BEiT; HF models are wrapped by tvc.models.hf.HFClassifier). Anything else is
refused with the names of the layers that are not understood.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models.families import GENERIC_MODULES, Family, family_of, supported_names
from tvc.models.structure import LowRankLinear

# (dotted name, owning module, attribute): a parameter that follows a width torch-pruning prunes
Untraced = tuple[str, nn.Module, str]


@dataclass
class AttnUnit:
    """One attention module and the Linear whose channels index its pruning group."""

    name: str
    module: nn.Module
    root: nn.Linear
    root_dim: str  # "in" or "out": which channels of `root` the group is indexed by
    style: str  # "timm" (fused qkv, scale attribute) or "hf" (q/k/v projections, scaling)
    proj: tuple[str, ...] = ("qkv", "proj")  # the attention's Linears
    per_head: list[Untraced] = field(default_factory=list)  # last axis indexes the heads

    @property
    def heads(self) -> int:
        return int(
            self.module.num_heads if self.style == "timm" else self.module.num_attention_heads
        )

    @property
    def head_dim(self) -> int:
        return int(self.module.head_dim)

    def linears(self) -> list[tuple[str, nn.Module]]:
        return [(f"{self.name}.{n}", getattr(self.module, n)) for n in self.proj]


@dataclass
class MlpUnit:
    name: str
    fc1: nn.Module
    fc2: nn.Module
    names: tuple[str, str] = ("fc1", "fc2")

    @property
    def root(self) -> nn.Linear:
        return out_linear(self.fc1)

    @property
    def hidden(self) -> int:
        return int(self.fc1.out_features)

    def linears(self) -> list[tuple[str, nn.Module]]:
        first, second = self.names
        return [(f"{self.name}.{first}", self.fc1), (f"{self.name}.{second}", self.fc2)]


@dataclass
class VitLayout:
    """Where the prunable widths of a supported ViT live."""

    family: str  # the style: "timm" or "hf"
    model: nn.Module
    embed: nn.Conv2d  # patch projection: its output channels are the embedding width
    attn: list[AttnUnit]
    mlp: list[MlpUnit]
    classifiers: list[tuple[str, nn.Module]] = field(default_factory=list)
    spec: Family | None = None  # the table entry this layout was read with
    per_embed: list[Untraced] = field(default_factory=list)  # last axis is the embedding
    shared_per_head: list[Untraced] = field(default_factory=list)  # one table for all blocks

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.family

    def follow(self, root: nn.Module, idxs: list[int]) -> None:
        """Prune the parameters torch-pruning does not trace along with the group rooted at
        `root` that removes channels `idxs` (call before the group is pruned): per-head tables
        lose the heads whose every dimension goes, mask tokens lose the embedding channels."""
        if root is self.embed:
            _drop_last(self.per_embed, idxs)
            width = self.embed_dim
            for _, head in self._concat_classifiers():
                # [class token, mean patch token] side by side: each copy loses the channels
                cols = [k * width + i for k in range(head.in_features // width) for i in idxs]
                _drop_last([("", head, "weight")], cols)
                head.in_features -= len(cols)
            return
        for a in self.attn:
            if a.root is not root:
                continue
            dim = a.head_dim
            gone = set(idxs)
            heads = [h for h in range(a.heads) if all(h * dim + j in gone for j in range(dim))]
            if heads and self.shared_per_head:
                raise ConfigError(
                    f"{a.name} shares its relative position bias with every block, so its heads "
                    "cannot be removed on their own",
                    "prune head dimensions instead (leave out --prune-heads)",
                )
            _drop_last(a.per_head, heads)

    def _concat_classifiers(self) -> list[tuple[str, nn.Module]]:
        if self.spec is None or self.spec.classifier_concat == 1:
            return []
        return [(n, h) for n, h in self.classifiers if isinstance(h, nn.Linear)]

    def untraced(self) -> list[nn.Parameter]:
        """The parameters `follow` prunes (torch-pruning's `ignored_params`)."""
        params = [getattr(o, leaf) for _, o, leaf in self.per_embed + self.shared_per_head]
        return params + [getattr(o, leaf) for a in self.attn for _, o, leaf in a.per_head]

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        """While torch-pruning traces the model: the untraced parameters do not require grad
        (so the graph does not see them: a bias table added to every block's attention scores
        would couple the blocks' heads), and classifiers that read several embeddings side by
        side are Identity (the graph ends at their input; `follow` prunes their columns)."""
        params = self.untraced()
        grads = [p.requires_grad for p in params]
        swapped = []
        try:
            for p in params:
                p.requires_grad_(False)
            for name, head in self._concat_classifiers():
                parent, _, leaf = name.rpartition(".")
                owner = self.model.get_submodule(parent)
                setattr(owner, leaf, nn.Identity())
                swapped.append((owner, leaf, head))
            yield
        finally:
            for p, g in zip(params, grads, strict=True):
                p.requires_grad_(g)
            for owner, leaf, head in swapped:
                setattr(owner, leaf, head)

    def check_head_pruning(self) -> None:
        """Refuse whole-head pruning where blocks share one per-head table."""
        if self.shared_per_head:
            raise ConfigError(
                f"this {self.name} model shares one relative position bias table across blocks, "
                "so whole heads cannot be removed block by block",
                "prune head dimensions instead (leave out --prune-heads)",
            )

    @property
    def embed_dim(self) -> int:
        return int(self.embed.out_channels)

    def widths(self) -> dict[str, Any]:
        """Embedding width and per-block heads / head_dim / MLP hidden width."""
        return {
            "embed": self.embed_dim,
            "blocks": [
                {
                    "heads": a.heads,
                    "head_dim": a.head_dim,
                    "attn_width": a.heads * a.head_dim,
                    "mlp": m.hidden,
                }
                for a, m in zip(self.attn, self.mlp, strict=True)
            ],
        }


def _drop_last(params: list[Untraced], idxs: list[int]) -> None:
    """Remove entries `idxs` of the last axis of each parameter, in place of the old one."""
    if not idxs:
        return
    for _, owner, leaf in params:
        p = getattr(owner, leaf)
        gone = set(idxs)
        keep = [i for i in range(p.shape[-1]) if i not in gone]
        p.data = p.data[..., keep].clone()  # the same Parameter object: the graph knows it


def out_linear(m: nn.Module) -> nn.Linear:
    """The Linear that produces `m`'s outputs (the second half of a factorized layer)."""
    return m.second if isinstance(m, LowRankLinear) else m


def in_linear(m: nn.Module) -> nn.Linear:
    """The Linear that consumes `m`'s inputs (the first half of a factorized layer)."""
    return m.first if isinstance(m, LowRankLinear) else m


def vit_layout(model: nn.Module, action: str = "prune or factorize") -> VitLayout:
    """The layout of a supported ViT; UnsupportedModelError names what is not understood (and
    what `action`, e.g. "merge tokens of", could not be done)."""
    fam = family_of(model)
    kind = type(model).__name__
    if fam is None:
        inner = getattr(model, "inner", None)
        what = f"{kind} ({type(inner).__name__})" if inner is not None else kind
        raise UnsupportedModelError(
            f"cannot {action} {what}: tvc understands {supported_names()}",
            "use one of those architectures",
        )
    layout = _layout(model, fam)
    allowed = GENERIC_MODULES | fam.modules
    unknown = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
               if type(m).__name__ not in allowed]  # fmt: skip
    if fam.style == "timm":
        for a in layout.attn:
            extras = {"q_norm": getattr(a.module, "q_norm", None),
                      "k_norm": getattr(a.module, "k_norm", None),
                      "norm": getattr(a.module, "norm", None)}  # fmt: skip
            for leaf, sub in extras.items():
                if sub is not None and not isinstance(sub, nn.Identity):
                    unknown.append(f"{a.name}.{leaf} (qk/scale norm over head dims)")
            if getattr(a.module, "gate", None) is not None:
                unknown.append(f"{a.name}.gate (gated attention)")
    if unknown:
        shown = ", ".join(unknown[:6]) + (
            f" and {len(unknown) - 6} more" if len(unknown) > 6 else ""
        )
        raise UnsupportedModelError(
            f"cannot {action} {kind}: it has {len(unknown)} layer(s) tvc does not "
            f"understand: {shown}",
            f"use one of: {supported_names()}",
        )
    return layout


def _get(root: nn.Module, path: str) -> Any:
    """The attribute at dotted `path` below `root` (root itself for ""), or None."""
    obj: Any = root
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _untraced(root: nn.Module, prefix: str, paths: tuple[str, ...]) -> list[Untraced]:
    found = []
    for path in paths:
        owner_path, _, leaf = path.rpartition(".")
        owner = _get(root, owner_path)
        if owner is not None and isinstance(getattr(owner, leaf, None), nn.Parameter):
            found.append((_join(prefix, path), owner, leaf))
    return found


def _layout(model: nn.Module, fam: Family) -> VitLayout:
    backbone = _get(model, fam.backbone)
    where = next((p for p in fam.layers if _get(backbone, p) is not None), None)
    if backbone is None or where is None:
        raise UnsupportedModelError(
            f"cannot prune this {type(model).__name__}: it has no block list at "
            f"{' or '.join(_join(fam.backbone, p) for p in fam.layers)}",
            "use a model built by timm or transformers >= 5",
        )
    prefix = _join(fam.backbone, where)
    attn, mlp = [], []
    for i, block in enumerate(_get(backbone, where)):
        name = f"{prefix}.{i}"
        a, m = _get(block, fam.attn), _get(block, fam.mlp)
        ok_attn = a is not None and all(hasattr(a, n) for n in fam.proj)
        if fam.style == "timm":
            ok_attn = ok_attn and type(a).__name__ == "Attention"
        if not ok_attn or m is None or not all(hasattr(m, n) for n in fam.fc):
            raise UnsupportedModelError(
                f"cannot prune this {type(model).__name__}: block {name} has attention "
                f"{type(a).__name__} and MLP {type(m).__name__}, tvc understands attention with "
                f"{'/'.join(fam.proj)} and an MLP with {'/'.join(fam.fc)}",
                "use a plain ViT/DeiT (timm) or a model of transformers >= 5 "
                "(q_proj/k_proj/v_proj/o_proj attention)",
            )
        aname = _join(name, fam.attn)
        per_head = _untraced(block, name, fam.per_head)
        if fam.style == "timm":
            unit = AttnUnit(aname, a, in_linear(a.proj), "in", "timm", fam.proj, per_head)
        else:
            # The group is rooted at v_proj's outputs: torch-pruning traces q, k, v and o_proj
            # from there (from o_proj's inputs it loses the trail at the attention reshape).
            unit = AttnUnit(aname, a, out_linear(a.v_proj), "out", "hf", fam.proj, per_head)
        attn.append(unit)
        fc1, fc2 = (getattr(m, n) for n in fam.fc)
        mlp.append(MlpUnit(_join(name, fam.mlp), fc1, fc2, fam.fc))
    heads = [(p, _get(model, p)) for p in fam.classifiers if _get(model, p) is not None]
    return VitLayout(
        fam.style,
        model,
        _get(backbone, fam.embed),
        attn,
        mlp,
        heads,
        spec=fam,
        per_embed=_untraced(backbone, fam.backbone, fam.per_embed),
        shared_per_head=_untraced(backbone, fam.backbone, fam.shared_per_head),
    )
