"""Only regular files are read: a FIFO blocks the first read until a writer comes, a character device
(/dev/zero, /dev/urandom) never ends, and either can hide behind a symlink named like a checkpoint."""

from __future__ import annotations

import errno
import os
import stat

from ..tensors import CheckpointError


def non_regular_kind(path: str) -> str | None:
    """What `path` is when it is not a regular file (following symlinks), or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return f"a symlink to nothing ({os.readlink(path)})"
        return "missing" if error.errno == errno.ENOENT else f"unreadable ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    if os.path.islink(path):
        kind = f"a symlink to {os.path.realpath(path)}, {kind}"
    return kind


def require_regular_file(path: str) -> None:
    kind = non_regular_kind(path)
    if kind is not None:
        raise CheckpointError(path, f"is {kind}, not a checkpoint file",
                              "point to the real file" if kind != "missing" else "check the path")
