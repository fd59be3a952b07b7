"""The Runner interface: the base class validates, subclasses implement `infer_impl`.

A runner owns one loaded model on one backend. `infer` checks the feed against the model's
declared inputs (names, dtypes, ranks, fixed dimensions) and then calls `infer_impl`, so every
backend rejects bad input the same way. Timing lives outside the runner (runtime/bench.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvc.errors import ConfigError

Dim = int | str | None  # a fixed size, or a symbolic/dynamic one


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ",".join(str(d) if isinstance(d, int) else "?" for d in self.shape)
        return f"{self.name}[{dims}]:{np.dtype(self.dtype).name}"

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """This spec's shape with the first dynamic dimension set to `batch`."""
        dims = []
        for i, d in enumerate(self.shape):
            if i == 0 and isinstance(d, int) and d > 0 and d != batch:
                raise ConfigError(
                    f"input {self.name} has a fixed batch of {d}; batch {batch} cannot run",
                    f"re-export with --dynamic-batch or --batch {batch}",
                )
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif i == 0:
                dims.append(batch)
            else:
                raise ConfigError(
                    f"input {self.name} has a dynamic dimension {i} besides the batch",
                    "export the model with a fixed input size (--input-size)",
                )
        return tuple(dims)


class Runner(ABC):
    """Runs one model on one backend. Use as a context manager to release resources."""

    backend: str = "?"
    # Subclasses fill these in __init__ from the model they load.
    _inputs: list[TensorSpec]
    _outputs: list[TensorSpec]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def is_detector(self) -> bool:
        """DETR-style outputs (`logits` and `boxes`), whichever backend runs the model."""
        return {"logits", "boxes"} <= {o.name for o in self.outputs}

    @property
    def provider(self) -> str:
        """The device/provider the model runs on (e.g. CPUExecutionProvider)."""
        return self.backend

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "provider": self.provider}

    def infer(self, feeds: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Validate `feeds`, run the model and return its outputs by name."""
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise ConfigError(
                    f"the model has {len(self.inputs)} inputs ({names})",
                    "pass a dict of name -> array",
                )
            feeds = {self.inputs[0].name: feeds}
        self.check_feeds(feeds)
        return self.infer_impl(feeds)

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        expected = {s.name: s for s in self.inputs}
        missing = set(expected) - set(feeds)
        extra = set(feeds) - set(expected)
        if missing or extra:
            raise ConfigError(
                f"input names do not match: missing {sorted(missing)}, unexpected {sorted(extra)}",
                f"the model expects {', '.join(s.describe() for s in self.inputs)}",
            )
        for name, arr in feeds.items():
            spec = expected[name]
            if arr.dtype != spec.dtype:
                raise ConfigError(
                    f"input {name} has dtype {arr.dtype}, the model expects {spec.dtype}",
                    f"cast it with .astype(np.{np.dtype(spec.dtype).name})",
                )
            if arr.ndim != len(spec.shape):
                raise ConfigError(
                    f"input {name} has shape {arr.shape}, the model expects {spec.describe()}",
                    "reshape the input to the model's rank",
                )
            for i, (got, want) in enumerate(zip(arr.shape, spec.shape, strict=True)):
                if isinstance(want, int) and want > 0 and got != want:
                    hint = (
                        "re-export with --dynamic-batch or --batch N"
                        if i == 0
                        else "resize the input or re-export with --input-size"
                    )
                    raise ConfigError(
                        f"input {name} has shape {arr.shape}, the model expects "
                        f"{spec.describe()} (dimension {i} is fixed to {want})",
                        hint,
                    )

    @abstractmethod
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample_feeds(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right shape and dtype, for timing and parity checks. Integer
        inputs are token ids: drawn from {0, 1}, valid for any vocabulary (a negative id is an
        error in PyTorch, and wraps around silently in ONNX's Gather)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for s in self.inputs:
            shape = s.concrete_shape(batch)
            if np.issubdtype(s.dtype, np.integer):
                feeds[s.name] = rng.integers(0, 2, shape).astype(s.dtype)
            else:
                feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
        return feeds
