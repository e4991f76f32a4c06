"""Atomic file writes: a reader (or a killed writer's next run) sees the old file or the new one, never half.

Every file imgcls writes goes through `atomic_write`: the bytes go to a temp file in the target's own folder
(os.replace is only atomic within one file system), are fsynced, then renamed over the target. The temp name
is unique per call (pid + random), so two processes writing the same file never share a temp, and it has one
recognisable pattern, `.{name}.{pid}.{hex}.tmp`, so `clean_stale_temps` can remove what a SIGKILL left behind
without touching anyone else's files.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Union

Content = Union[bytes, str, Callable[[io.BufferedWriter], None]]

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
# What imgcls wrote before this module existed (tempfile.mkstemp for checkpoints, PID suffixes for the cache,
# a fixed suffix for split.json and the CSVs): left behind by kills of older versions, removed as well.
_LEGACY = re.compile(r"^(?P<name>(last|best|swa)\.pt)\.[A-Za-z0-9_]{8}\.tmp$"
                     r"|^(?P<cache>decoded-[0-9a-f]+\.(npy|json))\.(?P<pid>\d+)\.tmp$"
                     r"|^(?P<fixed>split\.json|summary\.csv|predictions\.csv)\.tmp$")


def temp_name(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write(path: str | Path, content: Content) -> None:
    """Write `content` (bytes, text as UTF-8, or a function that writes to a binary file) to `path` atomically.

    The file gets the permissions of any newly created file (0666 minus the umask): not mkstemp's 0600, so a
    checkpoint can be shared like any other file. On any failure (disk full, kill signal turned into an
    exception, a bug in the write function) the temp file is removed and the error re-raised; `path` keeps its
    old content.
    """
    path = Path(path)
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    writer = None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(content):
                writer = _Recording(fh)
                content(writer)
            else:
                fh.write(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # torch.save turns a failed write (disk full) into a RuntimeError without an errno: re-raise the
        # OSError underneath, and name the file in it, so that the command line can say what happened
        error = writer.error if writer is not None and writer.error is not None else exc
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from exc
        if error is not exc:
            raise error from exc
        raise


class _Recording:
    """A binary file that remembers the first OSError its writes raised (see atomic_write)."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):  # flush, tell, seek, fileno, ...: the file's own
        return getattr(self.fh, name)


@contextmanager
def folder_swap(target: str | Path):
    """A fresh temp folder beside `target` to write a set of files into (an export: model, classes,
    preprocessing); when the block ends without error it replaces `target` whole, and only then is the old
    folder removed. On any error (disk full, a kill turned into an exception) the temp folder goes and
    `target` keeps what it had: never a new model beside old metadata, never no model at all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = temp_name(target) if target.exists() else None
    if old is not None:
        os.replace(target, old)  # two renames: a crash between them leaves both folders, each whole
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_temps(folder: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Remove temp files of our own pattern in `folder` whose writer is gone; return what was removed.

    names: only temps of these target names (None = any). A temp whose pid is still alive (or is this process) is
    kept: it may be another process writing right now (torchrun ranks, a second run on the same split).
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet, or unreadable: nothing of ours to clean
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name) or _LEGACY.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        target = match.group("name") or match.groupdict().get("cache") or match.groupdict().get("fixed")
        if names is not None and target not in names:
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and (int(pid) == os.getpid() or _alive(int(pid))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
