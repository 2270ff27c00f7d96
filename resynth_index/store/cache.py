"""The candidate cache: resynthesised candidate embeddings keyed by (namespace, normalized prompt).

Generation is the cost of attribution by resynthesis, so every candidate embedding is kept. LMDB is the
durable **source of truth**; FAISS indexes are **derived** acceleration structures that are persisted for a
fast start and can always be rebuilt from LMDB. :class:`CandidateCache` is the public face; the work is split
by responsibility:

* :mod:`.environment` -- the LMDB environment (one per path per process, read-only opens, map growth);
* :mod:`.writer_lock` -- one writer per cache directory, across processes;
* :mod:`.records` -- the sub-databases, the vector byte stream and the one write transaction per batch;
* :mod:`.indexes` -- the derived FAISS indexes: catch-up, rebuild, snapshots;
* :mod:`.lookup` -- exact lookup, near-duplicate prompt reuse, kNN;
* :mod:`.vector_index` -- one FAISS index, its type, tuning and snapshot files.

Flow of one write, and what a crash at each point leaves
-------------------------------------------------------
1. ``put(prompt, {generator: (namespace, seeds, vectors)})`` normalises the prompt
   (:func:`~resynth_index.store.keys.normalize_prompt`), L2-normalises the vectors and opens **one** LMDB write
   transaction for all generators of the prompt (``put_many``: for up to ``batch_prompts`` prompts). In it: a
   prompt id (new prompts only), and per generator a record id from the ``next_record_id`` counter in
   ``meta``, the record, its vector chunks, its key and the namespace's statistics. Keys already present are
   left alone (a key names deterministic vectors: same namespace, same prompt, same seeds), so ``put`` is
   idempotent.
2. **Commit** (``fsync``; LMDB's copy-on-write B-tree switches the meta page last). A crash before this point
   leaves *nothing* of the prompt; after it, *all* of it. Readers in any process see the prompt from their
   next transaction on, never half of it (MVCC snapshots).
3. **Index catch-up**, after the commit: each touched namespace's FAISS index adds the records with ids above
   the highest id it covers (read back from LMDB, so there is one code path for writes, crash recovery and
   readers); the prompt-embedding index embeds new prompts the same way. When an index has grown past its
   type's range it is rebuilt from LMDB (:mod:`resynth_index.store.vector_index`). A crash here only loses
   in-memory index state.
4. **Snapshot**: the writer persists an index (temp file, fsync, atomic ``os.replace``; the covered record id
   is in the file name) after a rebuild, once ``index_persist_every`` vectors have been added since its last
   snapshot, and at ``close()``. A crash here leaves the previous snapshot, or a ``.tmp`` that the next writer
   deletes.
5. **Reopen**: ``reader_check()`` clears reader slots of dead processes; each index loads its newest
   snapshot that covers no record LMDB lacks (unreadable ones are skipped; none: rebuilt from LMDB) and
   catches up. So after a crash anywhere, every committed prompt is present whole, nothing uncommitted is
   visible, and the indexes agree with the records. :meth:`CandidateCache.verify` checks exactly that.

Concurrency
-----------
One writer, many readers, also across processes. The writer holds an exclusive ``fcntl.flock`` on
``writer.lock`` for its lifetime; a second writer waits up to ``lock_timeout`` seconds (default 0) and then
gets :class:`CacheLockedError`. Readers (``readonly=True``) take no lock and never write (LMDB is opened
read-only; a reader of a directory no writer created gets :class:`~resynth_index.errors.RindexError`); every
``lookup`` sees the latest commit, and ``knn``/near-duplicate search catch their in-memory indexes up first
(cheap when nothing changed; :meth:`CandidateCache.refresh` does it for all loaded indexes, swapping in a newer
snapshot the writer saved). Within one process, instances on the same path share one LMDB environment (LMDB
forbids opening an environment twice per process). An instance must not cross ``fork()``: using it in a child
raises. When the map is full the writer doubles ``map_size`` and retries the transaction; readers adopt the
new size.

On-disk layout (``DIR/``)
-------------------------
::

    data.mdb, lock.mdb      the LMDB environment; sub-databases in :mod:`.records`
    writer.lock             the writer's flock (:mod:`.writer_lock`)
    faiss/vec-<namespace hex>/<last record id>.faiss (+ .json)
                            the candidate index of one namespace (ids ``record_id << 12 | position``)
    faiss/prompts-<embedder id, sanitised>/<last prompt id>.faiss (+ .json)
                            the prompt-embedding index of one prompt embedder (ids = prompt ids)

Vectors are L2-normalised on ``put`` and stored as float16 by default (``vector_dtype="float32"`` keeps
full precision): a relative error of about 5e-4 per component (norms 1 ± 1e-3), well below the margins
attribution decides on. Inner product is therefore cosine similarity, and since the indexes are built from
the same decoded values, the scores ``knn`` returns equal dot products with ``Candidates.vectors``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import faiss
import numpy as np

from ..errors import ConfigError, RindexError
from ..models.prompt_embedders import PromptEmbedder
from .environment import Environment, EnvironmentMissing, EnvironmentUnreadable
from .indexes import DerivedIndexes
from .keys import SCHEMA_VERSION
from .lookup import DEFAULT_NEAR_THRESHOLD, CacheLookup, Lookups, Neighbour, StoredCandidate
from .records import (
    DB_NAMES,
    CacheCorruptError,
    Candidates,
    RecordStore,
    prepare_prompt,
)
from .vector_index import IndexPolicy, VectorIndex, faiss_gpu_count
from .writer_lock import CacheLockedError, WriterLock

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start (sparse); doubled whenever it fills


class CandidateCache:
    """LMDB-backed cache of candidate embeddings with derived FAISS indexes (see the module docstring).

    Args:
        path: the cache directory (created by a writer).
        prompt_embedder: enables near-duplicate reuse; ``None`` disables it (lookups are exact only).
        near_threshold: cosine similarity (of prompt embeddings) at or above which a stored prompt is reused.
        readonly: a reader: no writer lock, no writes, no snapshots.
        map_size: the initial LMDB map size in bytes (sparse; doubled when full).
        vector_dtype: ``"float16"`` (default) or ``"float32"`` storage of candidate vectors.
        index_policy: how the per-namespace FAISS indexes are chosen and tuned.
        index_persist_every: the writer snapshots an index once this many vectors were added since its last
            snapshot (and at ``close()``).
        lock_timeout: seconds a second writer waits for the writer lock before :class:`CacheLockedError`.
        faiss_threads: OpenMP threads for FAISS (default: all cores).
        writer_lock: the directory's writer lock, already taken by the caller (taken here when None), so that a
            writer can be refused before it loads any model; the cache releases it at ``close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        prompt_embedder: PromptEmbedder | None = None,
        near_threshold: float = DEFAULT_NEAR_THRESHOLD,
        readonly: bool = False,
        map_size: int = DEFAULT_MAP_SIZE,
        vector_dtype: str = "float16",
        index_policy: IndexPolicy | None = None,
        index_persist_every: int = 50_000,
        lock_timeout: float = 0.0,
        faiss_threads: int | None = None,
        writer_lock: WriterLock | None = None,
    ):
        if not 0.0 < float(near_threshold) <= 1.0:
            raise ConfigError(f"near_threshold must be in (0, 1], got {near_threshold!r}")
        if vector_dtype not in ("float16", "float32"):
            raise ConfigError(f"vector_dtype must be 'float16' or 'float32', got {vector_dtype!r}")
        if map_size < (1 << 20):
            raise ConfigError(f"map_size must be at least 1 MiB, got {map_size}")
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self.prompt_embedder = prompt_embedder
        self.near_threshold = float(near_threshold)
        self.vector_dtype = vector_dtype
        self.index_policy = index_policy or IndexPolicy()
        self.index_persist_every = int(index_persist_every)
        if faiss_threads:
            faiss.omp_set_num_threads(int(faiss_threads))
        self._pid = os.getpid()
        self._closed = False
        self._env: Environment | None = None
        self._writer_lock = writer_lock or WriterLock(self.path)

        if not self.readonly and not self._writer_lock.held:
            os.makedirs(self.path, exist_ok=True)
            self._writer_lock.acquire(lock_timeout)
        try:
            self._env = self._open_env(int(map_size))
        except BaseException:
            self._writer_lock.release()
            raise
        try:
            self._records = RecordStore(self._env, vector_dtype=vector_dtype)
            self._indexes = DerivedIndexes(
                self.path, self._records, readonly=self.readonly, policy=self.index_policy,
                persist_every=self.index_persist_every, prompt_embedder=prompt_embedder,
            )
            self._lookups = Lookups(self._records, self._indexes, prompt_embedder=prompt_embedder,
                                    near_threshold=self.near_threshold)
            self._records.init_meta(self.path)
            if not self.readonly:
                self._indexes.open_all()  # writer: caught up on open
        except BaseException:
            self.close()
            raise

    def _open_env(self, map_size: int) -> Environment:
        try:
            return Environment.open(self.path, DB_NAMES, readonly=self.readonly, map_size=map_size)
        except EnvironmentMissing as exc:
            what = "no initialised cache" if exc.exists else "no cache"
            raise RindexError(f"{what} at {self.path} (a writer creates it)") from exc
        except EnvironmentUnreadable as exc:
            raise CacheCorruptError(f"{self.path} is not a resynth-index cache: {exc.__cause__}") from exc

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Snapshot dirty indexes (writer), release the environment and the writer lock. Idempotent."""
        if self._closed:
            return
        try:
            if not self.readonly and os.getpid() == self._pid and hasattr(self, "_indexes"):
                self.flush()
        finally:
            self._closed = True
            if self._env is not None:
                self._env.close()  # in a child of fork() this only forgets the handle
            self._writer_lock.release()

    def __enter__(self) -> CandidateCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._closed and os.getpid() == self._pid:
                self.close()
        except Exception:
            pass

    def _check_usable(self) -> None:
        if self._closed:
            raise RindexError("the cache is closed")
        if os.getpid() != self._pid:
            raise RindexError("a CandidateCache must not cross fork(); open a new one in the child process")

    # -- writes ----------------------------------------------------------------------------------------
    def put(self, prompt: str, entries: Mapping[str, tuple[str, Sequence[int], np.ndarray]]) -> None:
        """Store the candidates of one prompt for all its generators in one transaction (see module docs)."""
        self.put_many([(prompt, entries)])

    def put_many(self, items: Iterable[tuple[str, Mapping[str, tuple[str, Sequence[int], np.ndarray]]]],
                 *, batch_prompts: int = 256) -> None:
        """Store many prompts; each transaction holds up to ``batch_prompts`` whole prompts."""
        batch: list = []
        for prompt, entries in items:
            batch.append(prepare_prompt(prompt, entries))
            if len(batch) >= batch_prompts:
                self._commit(batch)
                batch = []
        if batch:
            self._commit(batch)

    def _commit(self, batch) -> None:
        self._check_usable()
        if self.readonly:
            raise RindexError("this cache was opened readonly=True")
        with self._indexes.lock:
            touched = self._records.commit(batch)  # <- the commit point
            for ns in touched:
                self._indexes.catch_up_namespace(ns)
            self._indexes.catch_up_prompts()

    # -- reads -----------------------------------------------------------------------------------------
    def contains(self, prompt: str, namespaces: Mapping[str, str]) -> bool:
        """True when every generator has candidates for exactly this (normalized) prompt."""
        self._check_usable()
        return self._lookups.contains(prompt, namespaces)

    def lookup(self, prompt: str, namespaces: Mapping[str, str]) -> CacheLookup:
        """Exact hit, near-duplicate reuse or miss (with the partial exact candidates); see :class:`CacheLookup`."""
        self._check_usable()
        return self._lookups.lookup(prompt, namespaces)

    def knn(self, generator: str, namespace: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Unrestricted top-``k`` (inner product) over all cached candidates of ``namespace``.

        ``generator`` names the caller's generator (checked against the namespace's writers when known).
        Queries are L2-normalised here. Returns one list per query, best first (fewer than ``k`` when the
        namespace holds fewer vectors).
        """
        self._check_usable()
        return self._lookups.knn(generator, namespace, queries, k)

    def sample(self, namespace: str, limit: int, seed: int = 0) -> list[StoredCandidate]:
        """Up to ``limit`` stored candidates of ``namespace`` with their prompts and vectors (a fixed-seed
        draw): the cache read as a labelled gallery, for calibrating the open-set decision."""
        self._check_usable()
        return self._lookups.sample(namespace, limit, seed)

    # -- indexes ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Catch up every loaded index with records committed since (readers; cheap when nothing changed)."""
        self._check_usable()
        self._indexes.refresh()

    def flush(self) -> None:
        """Writer: snapshot every index that changed since its last snapshot."""
        self._check_usable()
        self._indexes.flush()

    # -- export ------------------------------------------------------------------------------------------
    def copy_to(self, directory: str | os.PathLike) -> None:
        """A compacting copy of the LMDB environment into ``directory`` as of one read transaction (the FAISS
        indexes are derived: :func:`~resynth_index.store.export.export_cache` brings them level with it)."""
        from .export import copy_environment

        self._check_usable()
        with self._env.read() as txn:
            copy_environment(self._env, directory, txn=txn)

    # -- introspection -----------------------------------------------------------------------------
    def namespaces(self) -> dict[str, dict]:
        """namespace -> {dim, generators, records, vectors, last_record_id}."""
        self._check_usable()
        with self._env.read() as txn:
            return {
                ns: {"dim": st["d"], "generators": list(st["g"]), "records": st["r"], "vectors": st["v"],
                     "last_record_id": st["last"]}
                for ns, st in self._records.all_ns_stats(txn).items()
            }

    def info(self) -> dict:
        """Prompts, vectors per generator and namespace, disk bytes, index types, embedder, threshold."""
        self._check_usable()
        with self._env.read() as txn:
            stat = {name: txn.stat(self._env.dbs[name]) for name in DB_NAMES}
            next_rid = self._records.next_record_id(txn)
        nss = self.namespaces()
        per_gen: dict[str, int] = {}
        for ns, st in nss.items():
            idx = self._indexes.loaded_namespace_index(ns)
            st["index"] = idx.info if idx is not None else VectorIndex.peek(self._indexes.namespace_directory(ns))
            for g in st["generators"]:
                per_gen[g] = per_gen.get(g, 0) + st["vectors"]
        lmdb_bytes = _disk_bytes(self.path, recursive=False)
        faiss_bytes = _disk_bytes(self._indexes.faiss_dir, recursive=True)
        total_vectors = sum(st["vectors"] for st in nss.values())
        env_info = self._env.env.info()
        prompt_index = self._indexes.loaded_prompt_index()
        return {
            "path": os.path.abspath(self.path),
            "schema_version": SCHEMA_VERSION,
            "prompts": stat["prompts"]["entries"],
            "records": stat["records"]["entries"],
            "vectors": total_vectors,
            "vectors_per_generator": per_gen,
            "namespaces": nss,
            "disk_bytes": lmdb_bytes + faiss_bytes,
            "disk_bytes_lmdb": lmdb_bytes,
            "disk_bytes_faiss": faiss_bytes,
            "bytes_per_vector": round((lmdb_bytes + faiss_bytes) / total_vectors, 1) if total_vectors else None,
            "lmdb_map_size": env_info["map_size"],
            "lmdb_used_bytes": (env_info["last_pgno"] + 1) * self._env.env.stat()["psize"],
            "next_record_id": next_rid,
            "vector_dtype": self.vector_dtype,
            "prompt_embedder": self.prompt_embedder.id if self.prompt_embedder is not None else None,
            "prompt_index": prompt_index.info if prompt_index is not None else None,
            "near_threshold": self.near_threshold,
            "faiss_gpu": faiss_gpu_count() > 0,
        }

    def verify(self) -> dict:
        """Check that records, keys, vectors and every index agree; raises :class:`CacheCorruptError` if not.

        Returns counts. Used by the crash tests; cheap enough to run on a small cache at any time.
        """
        self._check_usable()
        problems, n_rec, per_ns = self._records.check()
        for ns, st in self.namespaces().items():
            idx = self._indexes.namespace_index(ns)
            if idx is not None and idx.ntotal != st["vectors"]:
                problems.append(f"index of namespace {ns[:12]} holds {idx.ntotal} vectors, records {st['vectors']}")
        if self.prompt_embedder is not None:
            pidx = self._indexes.prompt_index()
            with self._env.read() as txn:
                n_prompts = txn.stat(self._env.dbs["prompts"])["entries"]
            if pidx.ntotal != n_prompts:
                problems.append(f"prompt index holds {pidx.ntotal} prompts, LMDB {n_prompts}")
        if problems:
            raise CacheCorruptError("; ".join(problems[:10]))
        return {"records": n_rec, "vectors": sum(per_ns.values())}


def _disk_bytes(path: str, recursive: bool) -> int:
    """Bytes actually allocated on disk (sparse map files count only their written pages)."""
    total = 0
    if not os.path.isdir(path):
        return 0
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat().st_blocks * 512
        elif recursive and entry.is_dir(follow_symlinks=False):
            total += _disk_bytes(entry.path, True)
    return total


__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "CacheCorruptError",
    "CacheLockedError",
    "CacheLookup",
    "CandidateCache",
    "Candidates",
    "Neighbour",
]
