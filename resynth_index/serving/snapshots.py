"""Index snapshots a serving process swaps between, without dropping or delaying a request.

A *snapshot* is one read-only engine (:meth:`~resynth_index.attribution.engine.Attributor.reopen`: the loaded
models are shared, the cache and its FAISS indexes are its own); its id is the highest committed record id
when it was opened. The service opens a newer one off the request path, :func:`warm`\\ s it, then swaps the
reference; batches that started on the old snapshot finish on it, and it is closed when the last of them
releases it.

**Exported snapshots, for replicas on other machines.** :func:`export_snapshot` (``rindex snapshot export DIR``)
writes a consistent, compact, read-only copy of an index into the *snapshot set* ``DIR``: a subdirectory named
by its export time and snapshot id, holding the LMDB copy, its FAISS indexes, the gallery and a manifest of ids
and checksums (:mod:`resynth_index.store.export`). It is written under a dot-name and renamed when whole, and the
manifest is written last, so a directory without one is never served. ``rindex serve --index DIR`` serves the
newest complete snapshot of a set (or a single snapshot directory) and swaps to a newer one when it appears.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RindexError
from ..store.export import MANIFEST, export_cache, read_manifest, write_manifest
from .protocol import ServingEngine

if TYPE_CHECKING:
    from ..attribution.engine import Attributor


def snapshot_id(engine: ServingEngine) -> int:
    """The highest committed record id of the engine's index (0 when empty)."""
    return max((st["last_record_id"] for st in engine.cache.namespaces().values()), default=0)


def warm(engine: ServingEngine) -> None:
    """Load the models and every index of the engine's namespaces, so that no request pays for it."""
    engine.inverter, engine.embedder  # noqa: B018 - lazy loads
    namespaces = engine.namespaces
    stored = engine.cache.namespaces()
    for g, ns in namespaces.items():
        if ns in stored:
            engine.cache.knn(g, ns, np.ones((1, stored[ns]["dim"]), np.float32), 1)
    engine.cache.lookup("rindex warm-up probe", namespaces)


class Snapshot:
    """One engine serving one snapshot of the index; closed once retired and released by its last batch."""

    def __init__(self, engine: ServingEngine, sid: int):
        self.engine, self.id, self.opened_at = engine, sid, time.time()
        self._lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self.closed = False

    def acquire(self) -> Snapshot:
        with self._lock:
            self._inflight += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.close()


def export_snapshot(engine: Attributor, directory: str | os.PathLike, *, keep: int | None = None) -> Path:
    """Export ``engine``'s index into the snapshot set ``directory``; returns the new snapshot's directory.
    ``keep``: delete all but the newest ``keep`` complete snapshots afterwards (a replica serving an older one
    keeps its open files; it swaps to the newest on its next refresh)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.time_ns():020d}"
    tmp = directory / f".tmp-{stamp}-{os.getpid()}"
    try:
        copied = export_cache(engine.cache, tmp, engine.models.get_prompt_embedder())
        gallery = engine.gallery.copy_to(tmp / "gallery")
        write_manifest(tmp, {
            "snapshot_id": copied["snapshot_id"], "created": time.time(), "source": str(Path(engine.index_dir).resolve()),
            "namespaces": copied["namespaces"], "gallery": gallery,
        })
        final = directory / f"{stamp}-r{copied['snapshot_id']}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        for old in complete_snapshots(directory)[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete_snapshots(directory: str | os.PathLike) -> list[Path]:
    """The complete snapshots of a set (a readable manifest), oldest first."""
    directory = Path(directory)
    out = []
    for child in sorted(directory.iterdir()) if directory.is_dir() else ():
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue
        try:
            read_manifest(child)
        except RindexError:  # an unreadable manifest: an incomplete snapshot
            continue
        out.append(child)
    return out


def snapshot_set(path: str | os.PathLike) -> Path | None:
    """``path`` when it is a directory of exported snapshots (neither an index nor one snapshot), else None."""
    path = Path(path)
    if not path.is_dir() or (path / "data.mdb").exists():
        return None
    return path if any(c.is_dir() and (c / MANIFEST).is_file() for c in path.iterdir()) else None


def newest_snapshot(directory: str | os.PathLike) -> Path | None:
    """The newest complete snapshot of a set, or None."""
    done = complete_snapshots(directory)
    return done[-1] if done else None


__all__ = ["Snapshot", "complete_snapshots", "export_snapshot", "newest_snapshot", "snapshot_id", "snapshot_set",
           "warm"]
