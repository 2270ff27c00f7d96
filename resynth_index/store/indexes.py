"""Upkeep of the cache's derived FAISS indexes: one per namespace, and one of prompt embeddings.

Every index is derived from LMDB (:mod:`resynth_index.store.records`) and kept up to date by **one catch-up
routine** (:meth:`DerivedIndexes._catch_up`) for both kinds. Each kind is a :class:`_Source` that says how far
LMDB goes (the highest id and the number of vectors there) and reads what lies beyond an id:

* a namespace index covers record ids; its vectors are the records' candidates (ids ``record_id << 12 | j``);
* the prompt index covers prompt ids; its vectors are the prompt embedder's embeddings of the normalized
  prompts (computed outside the read transaction, since embedding is slow).

Catch-up loads the newest snapshot that covers no id LMDB lacks (readers also swap in a newer one the writer
saved since), adds everything with a higher id, or rebuilds from LMDB when the index has outgrown its type
(:meth:`~resynth_index.store.vector_index.VectorIndex.wants_rebuild`). The writer snapshots an index after a
rebuild, once ``persist_every`` vectors were added since its last snapshot, and for every changed index at
:meth:`DerivedIndexes.flush` (``close()``). A crash loses only in-memory index state: the next open loads the
previous snapshot and catches up from LMDB.

On disk (``DIR/faiss/``, snapshot files named by :mod:`resynth_index.store.vector_index`)::

    vec-<namespace hex>/<last record id:020d>.faiss (+ .json)
    prompts-<embedder id, sanitised>-<sha256(embedder id)[:12]>/<last prompt id:020d>.faiss (+ .json)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from typing import Any, NamedTuple

import numpy as np

from ..errors import RindexError
from ..models.prompt_embedders import PromptEmbedder
from .records import RecordStore
from .vector_index import IndexPolicy, VectorIndex, remove_stale_temporaries


def _sanitise(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


class _Coverage(NamedTuple):
    last: int  # the highest id in LMDB
    total: int  # vectors the index holds once caught up
    dim: int


class _Source:
    """What one derived index covers: where its snapshots live, how far LMDB goes, what lies beyond an id."""

    name: str  # the snapshot directory's name under faiss/ (also the index's key in memory)
    policy: IndexPolicy

    def coverage(self, records: RecordStore, txn) -> _Coverage | None:
        raise NotImplementedError

    def read(self, records: RecordStore, txn, after: int) -> Any:
        """Whatever :meth:`vectors` needs for the ids above ``after`` (inside the read transaction)."""
        raise NotImplementedError

    def vectors(self, payload: Any) -> tuple[np.ndarray, np.ndarray]:
        """(FAISS ids, unit vectors) from :meth:`read`'s payload (outside the read transaction)."""
        return payload


class _NamespaceSource(_Source):
    def __init__(self, ns: str, policy: IndexPolicy):
        self.ns, self.policy, self.name = ns, policy, f"vec-{ns}"

    def coverage(self, records, txn):
        st = records.ns_stats(txn, self.ns)
        return None if st is None else _Coverage(st["last"], st["v"], st["d"])

    def read(self, records, txn, after):
        return records.scan_namespace(txn, self.ns, after)


class _PromptSource(_Source):
    def __init__(self, embedder: PromptEmbedder, policy: IndexPolicy):
        self.embedder, self.name = embedder, "prompts-" + _sanitise(embedder.id)
        # prompts are few next to candidates: stay exact longer, and near-duplicate reuse needs the top 1 right
        self.policy = IndexPolicy(exact_max=max(policy.exact_max, 200_000),
                                  memory_budget_bytes=policy.memory_budget_bytes,
                                  target_recall=0.99, recall_k=1, use_gpu=policy.use_gpu)

    def coverage(self, records, txn):
        last = records.last_prompt_id(txn)  # prompt ids are dense: one vector per id
        return _Coverage(last, last, self.embedder.dim)

    def read(self, records, txn, after):
        return records.scan_prompts(txn, after)

    def vectors(self, payload):
        pids, texts = payload
        emb = self.embedder
        vecs = emb.embed(texts) if texts else np.zeros((0, emb.dim), np.float32)
        if vecs.shape[1:] != (emb.dim,):
            raise RindexError(f"prompt embedder {emb.id} returned shape {vecs.shape}, expected (n, {emb.dim})")
        return np.asarray(pids, dtype=np.int64), vecs


class DerivedIndexes:
    """The loaded FAISS indexes of one cache and their catch-up, rebuild and snapshots (module docstring).

    ``lock`` serialises catch-up, rebuilds and snapshots; the writer also holds it across a commit and the
    catch-up that follows, so no other thread catches up half-way between.
    """

    def __init__(self, path: str, records: RecordStore, *, readonly: bool, policy: IndexPolicy,
                 persist_every: int, prompt_embedder: PromptEmbedder | None):
        self.faiss_dir = os.path.join(path, "faiss")
        self.records = records
        self.readonly = readonly
        self.policy = policy
        self.persist_every = int(persist_every)
        self.lock = threading.RLock()
        self._prompts = _PromptSource(prompt_embedder, policy) if prompt_embedder is not None else None
        self._loaded: dict[str, tuple[_Source, VectorIndex]] = {}  # snapshot directory name -> (source, index)

    def directory(self, source: _Source) -> str:
        return os.path.join(self.faiss_dir, source.name)

    def namespace_directory(self, ns: str) -> str:
        return os.path.join(self.faiss_dir, f"vec-{ns}")

    # -- the one catch-up routine -------------------------------------------------------------------------
    def _ensure(self, source: _Source, persist: bool) -> VectorIndex | None:
        """The index of ``source``, caught up with LMDB (cheap when nothing changed)."""
        with self.records.env.read() as txn:
            cov = source.coverage(self.records, txn)
        if cov is None:
            return None
        loaded = self._loaded.get(source.name)
        if loaded is not None and loaded[1].last_id >= cov.last:
            return loaded[1]  # fast path: nothing new
        return self._catch_up(source, persist=persist and not self.readonly)

    def _catch_up(self, source: _Source, persist: bool = False) -> VectorIndex | None:
        directory = self.directory(source)
        with self.lock:
            with self.records.env.read() as txn:
                cov = source.coverage(self.records, txn)
                if cov is None:
                    return None
                loaded = self._loaded.get(source.name)
                idx = loaded[1] if loaded is not None else None
                if idx is None:
                    idx = VectorIndex.load(directory, cov.dim, source.policy, max_last_id=cov.last)
                elif self.readonly:
                    idx.load_if_newer(directory, cov.last)
                if idx is None:
                    idx = VectorIndex(cov.dim, source.policy)
                if idx.last_id >= cov.last:
                    self._loaded[source.name] = (source, idx)
                    return idx
                rebuilt = idx.wants_rebuild(cov.total)
                payload = source.read(self.records, txn, 0 if rebuilt else idx.last_id)
            ids, vecs = source.vectors(payload)
            if rebuilt:
                idx.rebuild(ids, vecs, cov.last)
            else:
                idx.add(ids, vecs, cov.last)
            self._loaded[source.name] = (source, idx)
            if persist and not self.readonly and (rebuilt or idx.unsaved >= self.persist_every):
                idx.save(directory)
            return idx

    # -- the two kinds ------------------------------------------------------------------------------------
    def namespace_index(self, ns: str, persist: bool = False) -> VectorIndex | None:
        """The caught-up index of namespace ``ns`` (None when it has no records)."""
        return self._ensure(_NamespaceSource(ns, self.policy), persist)

    def catch_up_namespace(self, ns: str) -> None:
        """Writer, after a commit: add the namespace's new records (snapshotting when due)."""
        self._catch_up(_NamespaceSource(ns, self.policy), persist=True)

    def prompt_index(self, persist: bool = False) -> VectorIndex:
        """The caught-up prompt-embedding index (only with a prompt embedder)."""
        return self._ensure(self._prompts, persist)

    def catch_up_prompts(self) -> None:
        if self._prompts is not None:
            self._catch_up(self._prompts, persist=True)

    def loaded_namespace_index(self, ns: str) -> VectorIndex | None:
        """The namespace's index if it is loaded (never loads or catches up)."""
        loaded = self._loaded.get(f"vec-{ns}")
        return None if loaded is None else loaded[1]

    def loaded_prompt_index(self) -> VectorIndex | None:
        loaded = self._loaded.get(self._prompts.name) if self._prompts is not None else None
        return None if loaded is None else loaded[1]

    # -- all of them --------------------------------------------------------------------------------------
    def open_all(self) -> None:
        """Writer at open: delete temporaries of a killed writer, then load and catch up every index."""
        remove_stale_temporaries(self.faiss_dir)
        for sub in (os.listdir(self.faiss_dir) if os.path.isdir(self.faiss_dir) else []):
            remove_stale_temporaries(os.path.join(self.faiss_dir, sub))
        with self.records.env.read() as txn:
            namespaces = list(self.records.all_ns_stats(txn))
        for ns in namespaces:
            self.namespace_index(ns, persist=True)
        if self._prompts is not None:
            self.prompt_index(persist=True)

    def refresh(self) -> None:
        """Catch up every loaded index with what was committed since (cheap when nothing changed)."""
        for source, _ in list(self._loaded.values()):
            self._ensure(source, persist=False)

    def flush(self) -> None:
        """Writer: snapshot every index that changed since its last snapshot (or never had one)."""
        if self.readonly:
            return
        with self.lock:
            for source, idx in self._loaded.values():
                if idx.dirty:
                    idx.save(self.directory(source))


__all__ = ["DerivedIndexes"]
