"""How readers and measurements get bytes: exact byte ranges through one small file-access interface.

`LocalFiles` reads with os.pread and imports nothing. A remote model comes with a `RemoteFiles`
(locate/remote.py) that has the same methods and fetches a whole list of ranges in one concurrent
batch; that is why callers ask for all the ranges they need at once instead of one at a time.
"""

from __future__ import annotations

import os
import stat
from itertools import starmap

from ..tensors import CheckpointError

_PREAD = getattr(os, "pread", None)  # POSIX; elsewhere a seek and a read


class LocalFiles:
    """Open file descriptors, one per file, for positional reads; closed when the reading ends. A
    checkpoint's header reader and its measurements share one: each shard is opened once."""

    remote = False

    def __init__(self):
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}

    def _open(self, path: str) -> int:
        """Opened without blocking (a FIFO would wait for a writer) and checked to be a regular file on
        the open descriptor (nothing can swap it after the check)."""
        from .regular import require_regular_file

        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except OSError as error:
            require_regular_file(path)  # says "a symlink loop", "a symlink to nothing", ... where it applies
            raise CheckpointError(path, f"cannot read: {error.strerror or error}",
                                  "check the path and permissions") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                require_regular_file(path)
                raise CheckpointError(path, "is not a regular file", "point to the real file")
        except BaseException:
            os.close(fd)
            raise
        self._fds[path], self._sizes[path] = fd, info.st_size
        return fd

    def size(self, path: str) -> int:
        """The file's size in bytes (it is opened to know it)."""
        if path not in self._sizes:
            self._open(path)
        return self._sizes[path]

    def read(self, path: str, offset: int, size: int) -> bytes:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._open(path)
        if _PREAD is None:
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)
        data = _PREAD(fd, size, offset)
        while len(data) < size:  # a network file system may return less than asked before the end
            more = _PREAD(fd, size - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def read_ranges(self, ranges: list[tuple[str, int, int]]):
        """The bytes of each (path, offset, size), in order; shorter where a file ends early. Read as the
        caller goes (an iterator): a remote batch arrives whole, but local bytes need not all be held at
        once (the first pages of every tensor of a Mixtral-8x7B are 4 MB of fresh memory)."""
        return starmap(self.read, ranges)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._sizes.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
