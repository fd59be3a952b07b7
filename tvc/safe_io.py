"""Safe file output: atomic writes, output paths checked before any work, storage failures as
one-line errors, and the clean-up of what killed writers left behind.

Every file tvc writes for a user (artifacts, records, reports, pictures) goes through here, so
an interrupted or failing run never leaves half of a file where the previous one was.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tvc.errors import ConfigError, ExportError, StorageError, TvcError, storage_error


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (see write_bytes_atomic)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file beside it and a rename: a crash or a full
    disk leaves the previous file intact, never half of a new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write failed
    return path


def check_output_file(
    path: str | os.PathLike, flag: str, *, force: bool = True, suffixes: tuple[str, ...] = ()
) -> Path:
    """Refuse, before any work, a file output (`flag` FILE: --json, a report, a picture) that
    is a directory, has the wrong suffix, exists when it may not be replaced (`force` False),
    or cannot be written where it is."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        example = path.with_suffix(suffixes[0]).name
        raise ConfigError(
            f"{flag} {path}: the file must end in {' or '.join(suffixes)}",
            f"name it like {example}",
        )
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory", "give a file path")
    if path.exists() and not force:
        raise ConfigError(
            f"{path} already exists", f"pass --force to replace it, or {flag} another file"
        )
    _check_writable(path.absolute(), flag)
    return path


def _check_writable(target: Path, flag: str) -> None:
    """The nearest existing ancestor of `target` must be a directory we may write into."""
    anc = target.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise StorageError(
            f"cannot write {flag} {target}: {anc} is a file, not a directory",
            f"choose another {flag} path",
        )
    try:  # a real probe: permission bits do not tell about read-only mounts, /proc, or root
        os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=anc))
    except OSError as exc:
        raise StorageError(
            f"cannot write {flag} {target}: {anc} is not writable ({exc.strerror})",
            f"write somewhere you may write, with {flag}",
        ) from exc


def clean_stale(parent: Path, name: str) -> list[Path]:
    """Remove what killed writers of `parent/name` left behind (staging and old directories,
    temporary files) when the process that made them is gone. Returns what was removed."""
    removed = []
    for p in parent.glob(f".{glob.escape(name)}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if not pid.isdigit() or not kind.endswith((".staging", ".old", ".tmp")):
            continue
        if int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_LOW_SPACE = 1 << 20  # below this many free bytes, a failed write is put down to a full disk


def _disk_full(where: Path) -> bool:
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return False
    return usage.total > 0 and usage.free < _LOW_SPACE  # /proc and friends have no size


@contextlib.contextmanager
def storage_errors(where: str | os.PathLike) -> Iterator[None]:
    """Disk full, permissions and the like become a one-line StorageError naming `where`. Writers
    that wrap ENOSPC in their own exception (torch.save, safetensors) are caught by checking the
    free space after the failure."""
    where = Path(where)
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, where)
        if err is None:
            if not _disk_full(where):
                raise
            err = storage_error(OSError(errno.ENOSPC, "disk full"), where)
        raise err from exc
    except ExportError as exc:
        # exporters wrap every failure, a full disk included, as "try another --opset"
        if not _disk_full(where):
            raise
        raise storage_error(OSError(errno.ENOSPC, "disk full"), where) from exc
    except TvcError:
        raise
    except Exception as exc:
        if not _disk_full(where):
            raise
        raise storage_error(OSError(errno.ENOSPC, "disk full"), where) from exc
