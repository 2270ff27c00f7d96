"""Index snapshots a serving process swaps between, without dropping or delaying a request.

A *snapshot* is one read-only engine (:meth:`~resynth_index.attribution.engine.Attributor.reopen`: the loaded
models are shared, the cache and its FAISS indexes are its own); its id is the highest committed record id
when it was opened. The service opens a newer one off the request path, :func:`warm`\\ s it, then swaps the
reference; batches that started on the old snapshot finish on it, and it is closed when the last of them
releases it.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .protocol import ServingEngine


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


__all__ = ["Snapshot", "snapshot_id", "warm"]
