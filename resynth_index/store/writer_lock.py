"""The cache's single-writer rule: an exclusive ``fcntl.flock`` on ``DIR/writer.lock``, held for a writer's life.

LMDB already serialises write *transactions*, but the cache's writer also owns the derived FAISS indexes and
their snapshots, so a second writer (in another process or this one) must not run at the same time. The lock
file holds the writer's pid (informational). ``flock`` is released by the kernel when the process dies, so a
killed writer never leaves the cache locked. Readers take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ..errors import RindexError


class CacheLockedError(RindexError):
    """Another process (or instance) holds the cache's writer lock."""


class WriterLock:
    """The exclusive writer lock of the cache directory ``path`` (which must exist)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = os.path.join(path, "writer.lock")
        self._fd: int | None = None
        self._pid = os.getpid()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; :class:`CacheLockedError` when it stays taken."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise CacheLockedError(
                        f"cache {self.path} already has a writer (lock {self.lock_path}); open it with readonly=True "
                        "or wait for the writer to close"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._pid = fd, os.getpid()

    def release(self) -> None:
        """Release the lock (idempotent). A forked child only closes its copy of the descriptor: ``flock`` locks
        belong to the open file, which the child shares with its parent, so unlocking there would free the
        parent's lock while the parent still writes."""
        if self._fd is not None:
            try:
                if os.getpid() == self._pid:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


__all__ = ["CacheLockedError", "WriterLock"]
