"""Artifacts: a directory holding a payload and `artifact.json`, written atomically.

`artifact.json` records what the payload is (kind), every payload file with its sha256, the parent
artifact (lineage), the spec that produced it, the model's inputs and outputs, metrics, and the
environment. Each step of tvc reads what the previous one wrote, possibly on another machine.

Writes go to a hidden staging directory beside the target and are renamed into place only when
complete, so an interrupted run leaves the previous artifact intact.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvc.errors import (
    ArtifactError,
    first_line,
)
from tvc.safe_io import (  # re-exported: the artifact API callers already import from here
    _check_writable,
    clean_stale,
    storage_errors,
)

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
        return payload_path(self.path, name)

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


# Whether write_artifact may replace an existing artifact when its caller does not say. The CLI's
# `--force` sets it around a command, so library code between the CLI and write_artifact does not
# have to thread the flag through every call.
_FORCE: contextvars.ContextVar[bool] = contextvars.ContextVar("tvc_artifact_force", default=False)
# The command that is running (e.g. "tvc compress ..."), recorded in every artifact's spec so
# each number says how it was produced. Set by the command line and the recipe runner.
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("tvc_command", default=None)


def record_command(command: str | None) -> contextvars.Token:
    """Record `command` in the spec of every artifact written from now on in this context;
    returns a token for `forget_command`."""
    return _COMMAND.set(command)


def forget_command(token: contextvars.Token) -> None:
    """Undo `record_command`: a command run in-process (tests, a notebook) must not stamp its
    command line on artifacts written after it."""
    _COMMAND.reset(token)


@contextlib.contextmanager
def allow_overwrite(force: bool = True) -> Iterator[None]:
    """Within this block, write_artifact replaces existing artifacts when `force` is true."""
    token = _FORCE.set(force)
    try:
        yield
    finally:
        _FORCE.reset(token)


def _same_or_inside(a: Path, b: Path) -> bool:
    """`a` is `b` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_output(
    target: str | os.PathLike,
    *,
    force: bool | None = None,
    inputs: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Refuse, before any work, an output path that would destroy something or cannot be written.

    An existing artifact is replaced only with `force`; an input (the source artifact, a weights
    file, a data directory) is never overwritten, even with `force`. Returns the absolute target.
    """
    force = _FORCE.get() if force is None else force
    target = Path(target).absolute()
    real = target.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if _same_or_inside(real, src) or _same_or_inside(src, real):
            raise ArtifactError(
                f"-o {target} would overwrite the input {given}",
                "write the result to another -o path (--force never replaces an input)",
            )
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ArtifactError(
            f"-o {target} is a file, not an artifact directory", "choose another -o path"
        )
    if target.exists():
        if is_artifact(target):
            if not force:
                raise ArtifactError(
                    f"-o {target} is an existing artifact",
                    "pass --force to replace it, or choose another -o path",
                )
        elif any(target.iterdir()):
            raise ArtifactError(
                f"output directory {target} exists and is not a tvc artifact",
                "choose another -o path or empty that directory",
            )
    _check_writable(target, "-o")
    return target


_storage_errors = storage_errors


@contextlib.contextmanager
def write_artifact(
    target: str | os.PathLike,
    kind: str,
    *,
    parent: Artifact | None = None,
    spec: dict[str, Any] | None = None,
    force: bool | None = None,
) -> Iterator[ArtifactWriter]:
    """Context manager that writes an artifact atomically.

    Usage::

        with write_artifact(out, "onnx", parent=src, spec={...}) as w:
            save(w.path_for("model.onnx"))
            w.meta["io"] = {...}

    Every file left in the staging directory becomes a payload file with its sha256. An existing
    artifact at `target` is replaced only with `force` (default: `allow_overwrite`'s setting),
    never when it is `parent`; the replacement is one atomic rename done under a lock, so two
    writers cannot lose each other's result silently: without `force` the second one fails.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    force = _FORCE.get() if force is None else force
    target = check_output(target, force=force, inputs=(parent.path,) if parent else ())
    with _storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        staging = target.parent / f".{target.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    writer = ArtifactWriter(target=target, kind=kind, staging=staging)
    writer.meta.update(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "parent": _lineage_entry(parent, target) if parent else None,
            "lineage": _lineage(parent, target),
            "spec": {**({"command": _COMMAND.get()} if _COMMAND.get() else {}), **(spec or {})},
            "metrics": {},
        }
    )
    try:
        with _storage_errors(target):
            yield writer
            _commit(writer, force=force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recorded_data(art: Artifact) -> tuple[str, str] | None:
    """The DATA the nearest step in `art`'s history read (its own spec first, then its lineage
    from the newest step back), with that step's name: what a model was trained, compressed or
    calibrated on. None when no step recorded any."""
    entries = [{"kind": art.kind, "spec": art.meta.get("spec") or {}}]
    entries += list(reversed(art.meta.get("lineage") or []))
    for entry in entries:
        spec = entry.get("spec") or {}
        options = spec.get("options") or {}
        data = spec.get("data") or options.get("calib") or options.get("data")
        if isinstance(data, str) and data.strip():
            return data, str(spec.get("stage") or spec.get("step") or entry.get("kind"))
    return None


def _lineage_entry(parent: Artifact, target: Path) -> dict[str, Any]:
    # The path is relative to the artifact that records it, so a tree of artifacts can be moved
    # or committed whole and still find its parents (and names no machine's home directory).
    where = os.path.relpath(parent.path.resolve(), target.resolve())
    return {
        "id": parent.id,
        "kind": parent.kind,
        "path": where,
        "spec": parent.meta.get("spec", {}),
    }


def _lineage(parent: Artifact | None, target: Path) -> list[dict[str, Any]]:
    """The parent's lineage plus the parent, every path re-based onto `target`."""
    if parent is None:
        return []
    older = []
    for entry in parent.meta.get("lineage", []):
        entry = dict(entry)
        if isinstance(entry.get("path"), str):
            where = (parent.path / entry["path"]).resolve()
            entry["path"] = os.path.relpath(where, target.resolve())
        older.append(entry)
    return [*older, _lineage_entry(parent, target)]


def parent_path(artifact_dir: str | os.PathLike, meta: dict[str, Any]) -> Path | None:
    """Where the artifact in `artifact_dir` (with artifact.json contents `meta`) says its parent
    is: a recorded relative path is taken from `artifact_dir`; older artifacts recorded it whole.
    None when it names no parent."""
    recorded = (meta.get("parent") or {}).get("path")
    if not isinstance(recorded, str) or not recorded:
        return None
    return Path(artifact_dir) / recorded  # an absolute `recorded` replaces artifact_dir


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself: commits into one directory take turns, and no
    lock file is left behind."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _commit(writer: ArtifactWriter, *, force: bool = False) -> None:
    from tvc.environment import host_environment

    files = {}
    for p in sorted(writer.staging.rglob("*")):
        if p.is_file():
            rel = p.relative_to(writer.staging).as_posix()
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    meta = writer.meta
    meta["files"] = files
    meta.setdefault("environment", host_environment())
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
    with _dir_lock(target.parent):
        if target.exists() and not force and (is_artifact(target) or any(target.iterdir())):
            # Another process committed here while we worked: keep its result, report ours lost.
            raise ArtifactError(
                f"{target} was written by another process while this one ran; "
                "this result was not kept",
                "pass --force to replace it, or write to another -o path",
            )
        if target.exists() and not (target.is_dir() and not target.is_symlink()):
            raise ArtifactError(f"-o {target} is a file, not a directory", "choose another -o path")
        swap_in_dir(writer.staging, target)


def swap_in_dir(staging: Path, target: Path) -> None:
    """Put the finished directory `staging` at `target` and remove what was there: one atomic
    exchange where the file system allows it, else two renames (a crash between them leaves the
    old directory at a `.old-PID` name that clean_stale removes). Readers of `target` see the
    old or the new directory whole, never a mix."""
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old directory
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _damaged(path: Path, what: str) -> ArtifactError:
    return ArtifactError(
        f"{path / ARTIFACT_FILE} {what}", "the artifact is damaged: re-run the step that wrote it"
    )


def payload_path(root: Path, name: str) -> Path:
    """`root/name`, refused unless it stays inside `root` (no absolute paths, no `..`, no symlink
    out): an edited artifact.json must not make tvc read, hash or run files elsewhere."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _damaged(root, f"names an invalid payload file {name!r}")
    pure = Path(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith("~"):
        raise ArtifactError(
            f"artifact {root} names a payload outside its directory ('{name}')",
            "payload files must lie inside the artifact directory; re-run the step that wrote it",
        )
    full = root / pure
    base = root.resolve()
    if full.exists() and base not in full.resolve().parents:
        raise ArtifactError(
            f"artifact {root} payload '{name}' links outside its directory",
            "payload files must lie inside the artifact directory; re-run the step that wrote it",
        )
    return full


def _check_meta(path: Path, meta: Any) -> None:
    """artifact.json's own fields have the types tvc relies on."""
    if not isinstance(meta, dict):
        raise _damaged(path, "is not a JSON object")
    for key in ("schema_version", "kind", "files", "id"):
        if key not in meta:
            raise _damaged(path, f"lacks the field '{key}'")
    if not isinstance(meta["schema_version"], int) or isinstance(meta["schema_version"], bool):
        raise _damaged(
            path, f"has a schema_version that is not an integer ({meta['schema_version']!r})"
        )
    if meta["kind"] not in KINDS:
        raise _damaged(path, f"has an unknown kind {meta['kind']!r} (known: {', '.join(KINDS)})")
    if not isinstance(meta["id"], str):
        raise _damaged(path, "has an id that is not a string")
    if not isinstance(meta["files"], dict):
        raise _damaged(path, "has a 'files' field that is not an object")
    for name, info in meta["files"].items():
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("sha256"), str)
            or not isinstance(info.get("bytes"), int)
            or isinstance(info.get("bytes"), bool)
        ):
            raise _damaged(path, f"has no valid sha256/bytes for payload '{name}'")
    for key in ("metrics", "spec", "model", "io", "variants"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise _damaged(path, f"has a '{key}' field that is not an object")
    for key in ("parent",):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _damaged(path, f"has a '{key}' field that is not an object")
    if "lineage" in meta and not isinstance(meta["lineage"], list):
        raise _damaged(path, "has a 'lineage' field that is not a list")


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(
            f"{path / ARTIFACT_FILE} is not valid JSON ({first_line(exc, 120)})",
            "the artifact is damaged: re-run the step that wrote it",
        ) from exc
    except OSError as exc:
        raise ArtifactError(
            f"cannot read {path / ARTIFACT_FILE} ({exc.strerror})", "check its permissions"
        ) from exc
    _check_meta(path, meta)
    if meta["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer tvc (schema {meta['schema_version']})",
            "upgrade tvc",
        )
    for name, info in meta["files"].items():
        f = payload_path(path, name)
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


def verify_payload(art: Artifact) -> str | None:
    """Why `art`'s payload no longer matches artifact.json (a missing or changed file), or None."""
    for name, info in art.meta["files"].items():
        try:
            f = payload_path(art.path, name)
        except ArtifactError as exc:
            return exc.problem
        if not f.is_file():
            return f"payload '{name}' is missing"
        if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
            return f"payload '{name}' was changed"
    return None


def update_metrics(artifact: Artifact, **metrics: Any) -> None:
    """Add metrics to an existing artifact's artifact.json (atomic replace, payload untouched)."""
    artifact.meta.setdefault("metrics", {}).update(metrics)
    tmp = artifact.path / f".{ARTIFACT_FILE}.tmp-{os.getpid()}"
    try:
        with _storage_errors(artifact.path):
            tmp.write_text(json.dumps(artifact.meta, indent=2, default=_json_default) + "\n")
            os.replace(tmp, artifact.path / ARTIFACT_FILE)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # left only when the write failed (disk full): never a stray file
