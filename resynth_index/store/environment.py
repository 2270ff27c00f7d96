"""One LMDB environment layer for everything the package keeps in LMDB (the candidate cache, the gallery).

LMDB forbids opening one environment twice in a process (closing either handle would drop the other's
``fcntl`` locks), so every opener goes through :meth:`Environment.open`, which keeps **one environment per
real path per process**, reference-counted, and hands each opener its own :class:`Environment` handle:

* **Registry by real path**: two spellings of a directory (a symlink, ``./x`` and ``x``) share one entry.
* **Fork-aware**: an entry records the process that opened it. A child of ``fork()`` never reuses an inherited
  entry, a handle used in a child raises :class:`~resynth_index.errors.RindexError` instead of touching the
  parent's memory map, and closing it there only forgets it (``mdb_env_close`` in a child would clear the
  parent's reader slots). py-lmdb refuses to open an environment again in a child while the inherited one is
  open, so open environments after forking (the server does; the crash tests fork from a clean forkserver).
* **Readers and writers**: a read-only opener may share an environment a writer opened in this process (the
  handle refuses to write). A writer cannot share an environment that is open read-only here; it gets
  :class:`~resynth_index.errors.RindexError` and has to wait until those readers close.
* **Read-only opens write nothing**: ``lmdb.open(readonly=True)``, sub-databases opened without ``create``,
  and no write transaction, ever. A read-only open of an environment no writer has created (no ``data.mdb``)
  or initialised (its sub-databases missing) raises :class:`EnvironmentMissing` and creates nothing; the
  caller decides what that means (the cache refuses, the gallery reads as empty).
* **Stale readers**: ``reader_check()`` at every open clears the reader slots of processes that died.
* **Map growth**: :meth:`Environment.write` doubles ``map_size`` on ``MapFullError`` and retries the whole
  transaction; :meth:`Environment.read` adopts a size another process grew the map to (``MapResizedError``).

On disk an environment is a directory holding ``data.mdb`` (the B-tree; sparse, so the map size costs no
disk) and ``lock.mdb`` (the reader table). LMDB commits are atomic and durable (``sync``/``metasync``: the
meta page switches last), so a crash leaves every committed transaction and nothing of an uncommitted one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import lmdb

from ..errors import RindexError

T = TypeVar("T")


class EnvironmentMissing(RindexError):
    """A read-only open found no environment (``exists``: ``data.mdb`` is there, its sub-databases are not)."""

    def __init__(self, message: str, *, exists: bool = False):
        super().__init__(message)
        self.exists = exists


class EnvironmentUnreadable(RindexError):
    """The directory holds an LMDB environment whose sub-databases cannot be opened (not one of ours)."""


class _Shared:
    """The one environment of a real path in this process."""

    def __init__(self, env: lmdb.Environment, dbs: dict, names: tuple[str, ...], writable: bool, pid: int):
        self.env, self.dbs, self.names, self.writable, self.pid = env, dbs, names, writable, pid
        self.refs = 0
        self.resize_lock = threading.RLock()


_REGISTRY: dict[str, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()


class Environment:
    """One opener's handle on a shared LMDB environment (see the module docstring).

    ``dbs`` maps each named sub-database to its handle; :meth:`read` and :meth:`write` are the only ways in.
    """

    def __init__(self, shared: _Shared, path: str, real: str, readonly: bool):
        self._shared = shared
        self.path, self._real, self.readonly = path, real, readonly
        self.env: lmdb.Environment = shared.env
        self.dbs: dict = shared.dbs
        self._pid = shared.pid
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        names: Sequence[str],
        *,
        readonly: bool,
        map_size: int,
        init: Callable[[lmdb.Transaction, dict], None] | None = None,
    ) -> Environment:
        """Open (or share) the environment at ``path`` with the named sub-databases ``names``.

        A writer creates the directory, the environment and the sub-databases, and runs ``init(txn, dbs)`` in
        that same first transaction (once per process). Raises :class:`EnvironmentMissing` for a read-only
        open of an environment nobody created, :class:`EnvironmentUnreadable` when the sub-databases cannot
        be opened, and :class:`~resynth_index.errors.RindexError` for a writer while readers hold it here.
        """
        path = os.fspath(path)
        names = tuple(names)
        if not readonly:
            os.makedirs(path, exist_ok=True)
        real = os.path.realpath(path)
        pid = os.getpid()
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(real)
            inherited = shared is not None and shared.pid != pid
            if inherited:
                shared = None  # inherited through fork(): never touch it
            if shared is not None:
                if not readonly and not shared.writable:
                    raise RindexError(
                        f"{path} is open read-only in this process; close those instances before opening a writer"
                    )
                if set(names) - set(shared.names):
                    raise RindexError(f"{path} is open in this process with other sub-databases {shared.names}")
            else:
                try:
                    shared = _open_shared(path, real, names, readonly=readonly, map_size=map_size, init=init, pid=pid)
                except lmdb.Error as exc:
                    if inherited:
                        raise RindexError(
                            f"{path} was opened before fork() and is still open in the parent; LMDB cannot open it "
                            "again in this child process: open it after forking"
                        ) from exc
                    raise
                _REGISTRY[real] = shared
            shared.refs += 1
            return cls(shared, path, real, readonly)

    # -- transactions -----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise RindexError(f"the LMDB environment {self.path} was closed")
        if os.getpid() != self._pid:
            raise RindexError(
                f"the LMDB environment {self.path} must not cross fork(); open environments after forking"
            )

    def read(self) -> lmdb.Transaction:
        """A read transaction (a consistent snapshot of the latest commit); use it as a context manager."""
        self._check()
        for _ in range(8):
            try:
                return self.env.begin()
            except lmdb.MapResizedError:
                with self._shared.resize_lock:
                    try:
                        self.env.set_mapsize(0)  # adopt the size another process grew the map to
                    except lmdb.Error:
                        time.sleep(0.01)
        return self.env.begin()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one write transaction and commit; when the map is full, double it and run ``fn``
        again in a fresh transaction (so ``fn`` must not keep state across calls, or must reset it)."""
        self._check()
        if self.readonly:
            raise RindexError(f"{self.path} was opened read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                with self._shared.resize_lock:
                    new_size = self.env.info()["map_size"] * 2
                    for _ in range(200):
                        try:
                            self.env.set_mapsize(new_size)
                            break
                        except lmdb.Error:  # a read transaction of another thread is active
                            time.sleep(0.005)
                    else:
                        raise

    # -- lifecycle ----------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release this handle; the environment closes with its last handle. Idempotent. In a child of
        ``fork()`` it only forgets the handle (the parent's environment is the parent's to close)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return
        with _REGISTRY_LOCK:
            shared = self._shared
            shared.refs -= 1
            if shared.refs <= 0:
                if _REGISTRY.get(self._real) is shared:
                    del _REGISTRY[self._real]
                shared.env.close()


def _open_shared(path: str, real: str, names: tuple[str, ...], *, readonly: bool, map_size: int,
                 init: Callable | None, pid: int) -> _Shared:
    if readonly and not os.path.exists(os.path.join(real, "data.mdb")):
        raise EnvironmentMissing(f"no LMDB environment at {path}")
    env = lmdb.open(
        real, map_size=map_size, subdir=True, readonly=readonly, lock=True, max_dbs=len(names) + 2,
        max_readers=1024, readahead=False, meminit=False, sync=True, metasync=True,
    )
    try:
        env.reader_check()
        if readonly:
            dbs = {name: env.open_db(name.encode(), create=False) for name in names}
        else:
            with env.begin(write=True) as txn:
                dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in names}
                if init is not None:
                    init(txn, dbs)
    except lmdb.NotFoundError as exc:
        env.close()
        raise EnvironmentMissing(f"no initialised LMDB environment at {path}", exists=True) from exc
    except lmdb.Error as exc:
        env.close()
        raise EnvironmentUnreadable(f"{path}: {exc}") from exc
    except BaseException:
        env.close()
        raise
    return _Shared(env, dbs, names, not readonly, pid)


__all__ = ["Environment", "EnvironmentMissing", "EnvironmentUnreadable"]
