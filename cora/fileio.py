"""Atomic file writes: a temporary file beside the target, then os.replace. An interrupted write never
leaves a truncated checkpoint, export or results file behind.

    atomic_write("model.onnx", lambda tmp: onnx.save(proto, tmp))
    write_json("metrics.json", {"AP50": 0.42})

The file gets the mode a plain `open` would give (0666 minus the umask), is fsynced before the rename and
its folder after it. The temporary file is `.<name>.<pid>.cora-tmp`: removed on any exception, and a leftover
of a killed writer (its process gone) is removed by the next write of the same target. A failed write (a
full disk, a file-size limit, a folder in the way) is a UserError naming the target.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Callable

from cora.errors import UserError

TMP_SUFFIX = ".cora-tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls write(tmp_path), then moves tmp_path onto path (creating its folder)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path}: cannot create its folder ({e.strerror or e})") from e
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory (a file path was expected)")
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        # O_EXCL: never follow or reuse another file; mode 0o666 & ~umask, as open() would give.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(str(tmp))
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException as e:
        failed = isinstance(e, Exception) and not isinstance(e, UserError)  # not the writer's own message
        reason = _write_failure(e, path.parent) if failed else None
        tmp.unlink(missing_ok=True)
        if reason is not None:
            raise UserError(f"cannot write {path}: {reason}") from e
        raise
    try:  # the rename itself survives a power cut only once the folder is on disk
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a file system without directory fsync: the file is written all the same
        pass


def read_json(path: str | os.PathLike, what: str):
    """The JSON value in file `path`; a missing file (FileNotFoundError) or bad JSON (ValueError) is one line
    naming `what` (e.g. "annotation file") and the path."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None


def write_json(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)

    atomic_write(path, write)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files of earlier writes of `path` whose process is gone (a killed write);
    returns them. Those of a live process (a concurrent writer) are kept."""
    path = Path(path)
    # exactly atomic_write's names for this target (a glob would also match `<name>.7`'s temporaries)
    own = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)}")
    removed = []
    for entry in os.listdir(path.parent if str(path.parent) else "."):
        match = own.fullmatch(entry)
        if match and not _alive(int(match[1])):
            tmp = path.with_name(entry)
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# File-system refusals a writer may report only in its message (safetensors: "... (os error 28)").
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def _write_failure(error: BaseException, folder: Path) -> str | None:
    """Why a write failed, when the file system refused it: an OSError in the exception chain (Python file
    objects raise one), an OS error named in the message (Rust / C++ writers), or a file system left with
    under 1 MiB (torch.save's C++ writer only says "unexpected pos"). None for anything else (a bug, or the
    writer's own check failing), which keeps its type."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    named = [os.strerror(n) for n in _WRITE_ERRNOS if os.strerror(n) in str(error)]
    if named:
        return named[0]
    try:
        st = os.statvfs(folder)
        full = st.f_bavail * st.f_frsize < 2**20
    except OSError:
        full = False
    return os.strerror(errno.ENOSPC) if full else None
