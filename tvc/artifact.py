"""Artifacts: a directory holding a payload and `artifact.json`, written atomically.

`artifact.json` records what the payload is (kind), every payload file with its sha256, the parent
artifact (lineage), the spec that produced it, the model's inputs and outputs, metrics, and the
environment. Each step of tvc reads what the previous one wrote, possibly on another machine.

Writes go to a hidden staging directory beside the target and are renamed into place only when
complete, so an interrupted run leaves the previous artifact intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvc.errors import ArtifactError

ARTIFACT_FILE = "artifact.json"
SCHEMA_VERSION = 1
KINDS = ("model", "onnx", "engine")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    """A loaded, validated artifact directory."""

    path: Path
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def id(self) -> str:
        return self.meta["id"]

    def file(self, name: str) -> Path:
        if name not in self.meta["files"]:
            have = ", ".join(sorted(self.meta["files"])) or "none"
            raise ArtifactError(
                f"artifact {self.path} has no payload file '{name}' (it has: {have})",
                "point at an artifact that contains it, or re-run the step that makes it",
            )
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.meta["files"]

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.meta["files"].values())


@dataclass
class ArtifactWriter:
    """Stage files in `staging`, fill `meta`, and commit atomically on success."""

    target: Path
    kind: str
    staging: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def path_for(self, name: str) -> Path:
        """Where to write payload file `name` while staging."""
        return self.staging / name


def is_artifact(path: str | os.PathLike) -> bool:
    return (Path(path) / ARTIFACT_FILE).is_file()


@contextlib.contextmanager
def write_artifact(
    target: str | os.PathLike,
    kind: str,
    *,
    parent: Artifact | None = None,
    spec: dict[str, Any] | None = None,
) -> Iterator[ArtifactWriter]:
    """Context manager that writes an artifact atomically.

    Usage::

        with write_artifact(out, "onnx", parent=src, spec={...}) as w:
            save(w.path_for("model.onnx"))
            w.meta["io"] = {...}

    Every file left in the staging directory becomes a payload file with its sha256.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    target = Path(target).absolute()
    if target.exists() and not is_artifact(target) and any(target.iterdir()):
        raise ArtifactError(
            f"output directory {target} exists and is not a tvc artifact",
            "choose another -o path or empty that directory",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer = ArtifactWriter(target=target, kind=kind, staging=staging)
    writer.meta.update(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parent": _lineage_entry(parent) if parent else None,
            "lineage": (
                [*parent.meta.get("lineage", []), _lineage_entry(parent)] if parent else []
            ),
            "spec": spec or {},
            "metrics": {},
        }
    )
    try:
        yield writer
        _commit(writer)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _lineage_entry(parent: Artifact) -> dict[str, Any]:
    return {
        "id": parent.id,
        "kind": parent.kind,
        "path": str(parent.path),
        "spec": parent.meta.get("spec", {}),
    }


def _commit(writer: ArtifactWriter) -> None:
    from tvc.runtime.device import environment

    files = {}
    for p in sorted(writer.staging.rglob("*")):
        if p.is_file():
            rel = p.relative_to(writer.staging).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    meta = writer.meta
    meta["files"] = files
    meta.setdefault("environment", environment())
    # The id names the payload: same files, same id, wherever the artifact lives.
    meta["id"] = hashlib.sha256(
        json.dumps({k: v["sha256"] for k, v in files.items()}, sort_keys=True).encode()
    ).hexdigest()[:16]
    with open(writer.staging / ARTIFACT_FILE, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    target = writer.target
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(writer.staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_artifact(path: str | os.PathLike, *, verify: bool = True) -> Artifact:
    """Load and validate an artifact; payload hashes are checked unless `verify=False`."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist", "check the path")
    if not path.is_dir() or not (path / ARTIFACT_FILE).is_file():
        raise ArtifactError(
            f"{path} is not a tvc artifact (no {ARTIFACT_FILE})",
            "pass a directory written by 'tvc compress', 'tvc train' or 'tvc export'",
        )
    try:
        meta = json.loads((path / ARTIFACT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path / ARTIFACT_FILE} is not valid JSON ({exc})",
            "the artifact is damaged: re-run the step that wrote it",
        ) from exc
    for key in ("schema_version", "kind", "files", "id"):
        if key not in meta:
            raise ArtifactError(
                f"{path / ARTIFACT_FILE} lacks the field '{key}'",
                "the artifact is damaged: re-run the step that wrote it",
            )
    if meta["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer tvc (schema {meta['schema_version']})",
            "upgrade tvc",
        )
    for name, info in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(
                f"artifact {path} is missing its payload file '{name}'",
                "re-run the step that wrote the artifact",
            )
        if verify and (f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]):
            raise ArtifactError(
                f"payload '{name}' of {path} was changed after it was written (sha256 mismatch)",
                "re-run the step that wrote the artifact; do not edit artifacts by hand",
            )
    return Artifact(path=path.absolute(), meta=meta)


def update_metrics(artifact: Artifact, **metrics: Any) -> None:
    """Add metrics to an existing artifact's artifact.json (atomic replace, payload untouched)."""
    artifact.meta.setdefault("metrics", {}).update(metrics)
    tmp = artifact.path / f".{ARTIFACT_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(artifact.meta, indent=2, default=_json_default) + "\n")
    os.replace(tmp, artifact.path / ARTIFACT_FILE)
