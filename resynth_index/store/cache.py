"""The candidate cache: resynthesised candidate embeddings keyed by (namespace, normalized prompt).

Generation is the cost of attribution by resynthesis, so every candidate embedding is kept. LMDB is the
durable **source of truth**; FAISS indexes are **derived** acceleration structures that are persisted for a
fast start and can always be rebuilt from LMDB.

Flow of one write, and what a crash at each point leaves
-------------------------------------------------------
1. ``put(prompt, {generator: (namespace, seeds, vectors)})`` normalises the prompt
   (:func:`~resynth_index.store.keys.normalize_prompt`), L2-normalises the vectors and opens **one** LMDB write
   transaction for all generators of the prompt. In it: a prompt id (new prompts only), and per generator a
   record id from the ``next_record_id`` counter in ``meta``, the record, its vector chunks, its key and the
   namespace's statistics. Keys already present are left alone (a key names deterministic vectors: same
   namespace, same prompt, same seeds), so ``put`` is idempotent.
2. **Commit** (``fsync``; LMDB's copy-on-write B-tree switches the meta page last). A crash before this point
   leaves *nothing* of the prompt; after it, *all* of it. Readers in any process see the prompt from their
   next transaction on, never half of it (MVCC snapshots).
3. **Index catch-up**, after the commit: each touched namespace's FAISS index adds the records with ids above
   the highest id it covers (read back from LMDB, so there is one code path for writes, crash recovery and
   readers); the prompt-embedding index embeds new prompts the same way. When an index has grown past its
   type's range it is rebuilt from LMDB (:mod:`resynth_index.store.vector_index`). A crash here only loses
   in-memory index state.
4. **Snapshot**: the writer persists an index (temp file, fsync, atomic ``os.replace``; the covered record id
   is in the file name) once ``index_persist_every`` vectors have been added since its last snapshot, and at
   ``close()``. A crash here leaves the previous snapshot, or a ``.tmp`` that the next writer deletes.
5. **Reopen**: ``reader_check()`` clears reader slots of dead processes; each index loads its newest
   snapshot that covers no record LMDB lacks (unreadable ones are skipped; none: rebuilt from LMDB) and
   catches up. So after a crash anywhere, every committed prompt is present whole, nothing uncommitted is
   visible, and the indexes agree with the records. :meth:`CandidateCache.verify` checks exactly that.

Concurrency
-----------
One writer, many readers, also across processes. The writer holds an exclusive ``fcntl.flock`` on
``writer.lock`` for its lifetime; a second writer waits up to ``lock_timeout`` seconds (default 0) and then
gets :class:`CacheLockedError`. Readers (``readonly=True``) take no lock; every ``lookup`` sees the latest
commit, and ``knn``/near-duplicate search catch their in-memory indexes up first (cheap when nothing
changed; :meth:`refresh` does it for all loaded indexes, swapping in a newer snapshot the writer saved).
Within one process, instances on the same path share one LMDB environment (LMDB forbids opening an
environment twice per process). An instance must not cross ``fork()``: using it in a child raises.
When the map is full the writer doubles ``map_size`` (``set_mapsize``) and retries the transaction;
readers adopt the new size on ``MapResizedError``.

On-disk layout (``DIR/``)
-------------------------
``data.mdb``, ``lock.mdb``
    the LMDB environment, named sub-databases (all integers big-endian so that keys sort by id):

    ``meta``        ``schema_version``, ``next_record_id``, ``next_prompt_id``, ``vector_bytes`` (the stream's
                    length), ``created``
    ``prompts``     prompt id (u64) -> msgpack ``{p: normalized prompt, r: first raw prompt, t: time}``
    ``prompt_ids``  sha256(normalized prompt) -> prompt id
    ``records``     record id (u64) -> msgpack ``{p: prompt, pid, g: generator, ns, s: seeds, n: γ, d: dim,
                    dt: bytes per component (2 = float16, 4 = float32), t: time}``
    ``vectors``     chunk number (u64) -> 2,016 bytes of one append-only byte stream holding every record's
                    packed little-endian vectors back to back (a record names its offset ``o``; the last chunk
                    is topped up by the next write). Chunks stay inside B-tree leaf pages (two per 4 KiB page)
                    and are appended in key order (``MDB_APPEND``), so pages fill completely: no overflow-page
                    waste, which per-record values of 1-8 KiB would cost (up to 1.5-2x).
    ``keys``        :func:`~resynth_index.store.keys.prompt_key` (namespace, prompt) -> record id
    ``ns_records``  namespace (32 raw bytes) + record id -> empty (per-namespace scans for catch-up)
    ``namespaces``  namespace hex -> msgpack ``{d: dim, g: [generators], r: records, v: vectors, last: id}``
``writer.lock``
    the writer's flock.
``faiss/vec-<namespace hex>/<last id>.faiss`` (+ ``.json``)
    the candidate index of one namespace (ids ``record_id << 12 | position``).
``faiss/prompts-<embedder id, sanitised>/<last prompt id>.faiss``
    the prompt-embedding index of one prompt embedder (ids = prompt ids).

Vectors are L2-normalised on ``put`` and stored as float16 by default (``vector_dtype="float32"`` keeps
full precision): a relative error of about 5e-4 per component (norms 1 ± 1e-3), well below the margins
attribution decides on. Inner product is therefore cosine similarity, and since the indexes are built from
the same decoded values, the scores ``knn`` returns equal dot products with ``Candidates.vectors``.

Near-duplicate reuse
--------------------
With a ``prompt_embedder``, ``lookup`` that finds no complete exact hit searches the prompt-embedding index
for the nearest stored prompts; the most similar one at cosine >= ``near_threshold`` that is complete for
every requested generator is reused (status ``"near"``, with ``matched_prompt`` and ``similarity``).
:data:`DEFAULT_NEAR_THRESHOLD` was calibrated for MiniLM on ``resynth_index/data/paraphrases.tsv`` with
``tools/calibrate_near_threshold.py`` (see that script's output for the distributions).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import faiss
import lmdb
import msgpack
import numpy as np

from ..errors import ConfigError, RindexError
from ..models.prompt_embedders import PromptEmbedder
from .keys import SCHEMA_VERSION, normalize_prompt, prompt_key
from .vector_index import (
    MAX_GAMMA,
    IndexPolicy,
    VectorIndex,
    remove_stale_temporaries,
    split_id,
    vector_ids,
)

#: Cosine similarity (MiniLM prompt embeddings) at or above which a stored prompt's candidates are reused.
#: Calibrated by ``tools/calibrate_near_threshold.py`` on ``resynth_index/data/paraphrases.tsv`` (45 paraphrase
#: and 45 near-miss pairs): the smallest 0.01 step with at most 2.5% false reuse. At 0.95, 64% of paraphrases
#: are reused and 1 near miss of 45 is (a word-order swap, 0.99, that MiniLM cannot see); 0.94 would
#: let 7% through, 0.90 16%. Re-calibrate for a CLIP text tower.
DEFAULT_NEAR_THRESHOLD = 0.95

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start (sparse); doubled whenever it fills
CHUNK_BYTES = 2016  # two chunks (+ 8-byte keys, node headers) fill one 4 KiB leaf page; never an overflow page
_U64 = struct.Struct(">Q")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DBS = ("meta", "prompts", "prompt_ids", "records", "vectors", "keys", "ns_records", "namespaces")


class CacheLockedError(RindexError):
    """Another process (or instance) holds the cache's writer lock."""


class CacheCorruptError(RindexError):
    """The cache on disk is not a resynth-index cache of this schema version."""


@dataclass
class Candidates:
    """The γ candidate embeddings of one prompt for one generator."""

    vectors: np.ndarray  # (γ, d) float32, unit rows
    seeds: list[int]
    record_id: int
    prompt: str = ""
    generator: str = ""
    namespace: str = ""


@dataclass
class CacheLookup:
    status: str  # "hit" | "near" | "miss"
    normalized_prompt: str
    matched_prompt: str | None
    similarity: float | None
    candidates: dict[str, Candidates] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    #: the most similar *other* stored prompt seen by the near-duplicate search (also below the threshold)
    nearest_prompt: str | None = None
    nearest_similarity: float | None = None


@dataclass(frozen=True)
class Neighbour:
    score: float  # inner product (cosine: stored vectors are unit length)
    record_id: int
    prompt: str
    seed: int
    position: int = 0  # index of the candidate within its record


# ------------------------------------------------------------------------------------------------------
# one LMDB environment per path per process


class _SharedEnv:
    def __init__(self, env: lmdb.Environment, dbs: dict, writable: bool, pid: int):
        self.env, self.dbs, self.writable, self.pid = env, dbs, writable, pid
        self.refs = 0
        self.resize_lock = threading.RLock()


_ENVS: dict[str, _SharedEnv] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(path: str, *, readonly: bool, map_size: int) -> _SharedEnv:
    real = os.path.realpath(path)
    pid = os.getpid()
    with _ENVS_LOCK:
        shared = _ENVS.get(real)
        if shared is not None and shared.pid != pid:
            shared = None  # inherited through fork(): never touch it
        if shared is not None:
            if not readonly and not shared.writable:
                raise RindexError(
                    f"cache {path} is open read-only in this process; close those instances before opening a writer"
                )
            shared.refs += 1
            return shared
        if readonly and not os.path.exists(os.path.join(real, "data.mdb")):
            raise RindexError(f"no cache at {path} (a writer creates it)")
        env = lmdb.open(
            real, map_size=map_size, subdir=True, readonly=readonly, lock=True, max_dbs=len(_DBS) + 2,
            max_readers=1024, readahead=False, meminit=False, sync=True, metasync=True,
        )
        if not readonly:
            env.reader_check()
        try:
            if readonly:
                dbs = {name: env.open_db(name.encode(), create=False) for name in _DBS}
            else:
                with env.begin(write=True) as txn:
                    dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in _DBS}
        except lmdb.NotFoundError as exc:
            env.close()
            raise RindexError(f"no initialised cache at {path} (a writer creates it)") from exc
        except lmdb.Error as exc:
            env.close()
            raise CacheCorruptError(f"{path} is not a resynth-index cache: {exc}") from exc
        shared = _SharedEnv(env, dbs, not readonly, pid)
        shared.refs = 1
        _ENVS[real] = shared
        return shared


def _release_env(path: str, shared: _SharedEnv) -> None:
    real = os.path.realpath(path)
    with _ENVS_LOCK:
        shared.refs -= 1
        if shared.refs <= 0:
            if _ENVS.get(real) is shared:
                del _ENVS[real]
            shared.env.close()


def _sanitise(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------


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
        self._dt_bytes = 2 if vector_dtype == "float16" else 4
        self.index_policy = index_policy or IndexPolicy()
        self.index_persist_every = int(index_persist_every)
        if faiss_threads:
            faiss.omp_set_num_threads(int(faiss_threads))
        self._pid = os.getpid()
        self._closed = False
        self._lock_fd: int | None = None
        self._mutate = threading.RLock()  # index catch-up / rebuild / snapshot
        self._indexes: dict[str, VectorIndex] = {}
        self._prompt_index: VectorIndex | None = None
        self._embed_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._embed_cache_lock = threading.Lock()

        if not self.readonly:
            os.makedirs(self.path, exist_ok=True)
            self._acquire_writer_lock(lock_timeout)
        try:
            self._shared = _open_env(self.path, readonly=self.readonly, map_size=int(map_size))
        except BaseException:
            self._release_writer_lock()
            raise
        self._env = self._shared.env
        self._db = self._shared.dbs
        try:
            self._init_meta()
            if not self.readonly:
                remove_stale_temporaries(self._faiss_dir())
                for sub in (os.listdir(self._faiss_dir()) if os.path.isdir(self._faiss_dir()) else []):
                    remove_stale_temporaries(os.path.join(self._faiss_dir(), sub))
                self._open_all_indexes()  # writer: caught up on open
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------------
    def _acquire_writer_lock(self, timeout: float) -> None:
        lock_path = os.path.join(self.path, "writer.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
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
                        f"cache {self.path} already has a writer (lock {lock_path}); open it with readonly=True "
                        "or wait for the writer to close"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def close(self) -> None:
        """Snapshot dirty indexes (writer), release the environment and the writer lock. Idempotent."""
        if self._closed:
            return
        try:
            if not self.readonly and os.getpid() == self._pid and hasattr(self, "_shared"):
                self.flush()
        finally:
            self._closed = True
            if hasattr(self, "_shared") and os.getpid() == self._pid:
                _release_env(self.path, self._shared)
            self._release_writer_lock()

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

    # -- LMDB helpers ----------------------------------------------------------------------------------
    def _read_txn(self) -> lmdb.Transaction:
        self._check_usable()
        for _ in range(8):
            try:
                return self._env.begin()
            except lmdb.MapResizedError:
                with self._shared.resize_lock:
                    try:
                        self._env.set_mapsize(0)  # adopt the size another process grew the map to
                    except lmdb.Error:
                        time.sleep(0.01)
        return self._env.begin()

    def _write(self, fn):
        """Run ``fn(txn)`` in one write transaction; grow the map and retry when it is full."""
        self._check_usable()
        if self.readonly:
            raise RindexError("this cache was opened readonly=True")
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                with self._shared.resize_lock:
                    new_size = self._env.info()["map_size"] * 2
                    for attempt in range(200):
                        try:
                            self._env.set_mapsize(new_size)
                            break
                        except lmdb.Error:  # a read transaction of another thread is active
                            time.sleep(0.005)
                    else:
                        raise

    def _init_meta(self) -> None:
        def init(txn):
            meta = self._db["meta"]
            if txn.get(b"schema_version", db=meta) is None:
                txn.put(b"schema_version", msgpack.packb(SCHEMA_VERSION), db=meta)
                txn.put(b"next_record_id", _U64.pack(1), db=meta)
                txn.put(b"next_prompt_id", _U64.pack(1), db=meta)
                txn.put(b"vector_bytes", _U64.pack(0), db=meta)
                txn.put(b"created", msgpack.packb(time.time()), db=meta)

        if not self.readonly:
            self._write(init)
        with self._read_txn() as txn:
            raw = txn.get(b"schema_version", db=self._db["meta"])
        if raw is None or msgpack.unpackb(raw) != SCHEMA_VERSION:
            found = None if raw is None else msgpack.unpackb(raw)
            raise CacheCorruptError(f"cache {self.path} has schema version {found}, this code reads {SCHEMA_VERSION}")

    # -- vectors ---------------------------------------------------------------------------------------
    def _encode_vectors(self, vectors: np.ndarray) -> bytes:
        dt = "<f2" if self._dt_bytes == 2 else "<f4"
        return np.ascontiguousarray(vectors, dtype=dt).tobytes()

    def _read_vectors(self, txn, rid: int, rec: dict) -> np.ndarray:
        n, d, dt, off = rec["n"], rec["d"], rec["dt"], rec["o"]
        nbytes = n * d * dt
        vdb = self._db["vectors"]
        c0, c1 = off // CHUNK_BYTES, (off + nbytes - 1) // CHUNK_BYTES
        start = off - c0 * CHUNK_BYTES
        if c0 == c1:
            raw = txn.get(_U64.pack(c0), db=vdb)
        else:
            raw = b"".join([txn.get(_U64.pack(c), db=vdb) for c in range(c0, c1 + 1)])
        if raw is None or len(raw) < start + nbytes:
            raise CacheCorruptError(f"record {rid}: vector bytes missing")
        return np.frombuffer(raw, dtype="<f2" if dt == 2 else "<f4", count=n * d, offset=start).reshape(n, d).astype(np.float32)

    def _append_stream(self, txn, end: int, blob: bytes) -> int:
        """Append ``blob`` to the vector byte stream ending at ``end``; return the new end."""
        vdb = self._db["vectors"]
        c, used = divmod(end, CHUNK_BYTES)
        pos = 0
        if used:  # top up the partial last chunk (rewritten in place, in this transaction)
            last = txn.get(_U64.pack(c), db=vdb)
            if last is None or len(last) != used:
                raise CacheCorruptError(f"vector stream chunk {c} has {None if last is None else len(last)} bytes, expected {used}")
            pos = CHUNK_BYTES - used
            txn.put(_U64.pack(c), last + blob[:pos], db=vdb)
            c += 1
        while pos < len(blob):
            _append(txn, _U64.pack(c), blob[pos : pos + CHUNK_BYTES], vdb)
            pos += CHUNK_BYTES
            c += 1
        return end + len(blob)

    @staticmethod
    def _prepare_vectors(name: str, vectors) -> np.ndarray:
        x = np.asarray(vectors)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ConfigError(f"generator {name!r}: vectors must be a non-empty (γ, d) array, got shape {x.shape}")
        if x.shape[0] >= MAX_GAMMA:
            raise ConfigError(f"generator {name!r}: at most {MAX_GAMMA - 1} candidates per prompt, got {x.shape[0]}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ConfigError(f"generator {name!r}: vectors contain NaN or infinity")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ConfigError(f"generator {name!r}: a candidate vector is all zeros")
        return x / norms

    # -- writes ----------------------------------------------------------------------------------------
    def put(self, prompt: str, entries: Mapping[str, tuple[str, Sequence[int], np.ndarray]]) -> None:
        """Store the candidates of one prompt for all its generators in one transaction (see module docs)."""
        self.put_many([(prompt, entries)])

    def put_many(self, items: Iterable[tuple[str, Mapping[str, tuple[str, Sequence[int], np.ndarray]]]],
                 *, batch_prompts: int = 256) -> None:
        """Store many prompts; each transaction holds up to ``batch_prompts`` whole prompts."""
        batch: list = []
        for prompt, entries in items:
            batch.append(self._validate_entry(prompt, entries))
            if len(batch) >= batch_prompts:
                self._commit_batch(batch)
                batch = []
        if batch:
            self._commit_batch(batch)

    def _validate_entry(self, prompt, entries):
        norm = normalize_prompt(prompt)
        if not norm:
            raise ConfigError("cannot cache an empty prompt")
        if not isinstance(entries, Mapping) or not entries:
            raise ConfigError("entries must be a non-empty mapping generator -> (namespace, seeds, vectors)")
        prepared = []
        for gen, value in entries.items():
            if not isinstance(gen, str) or not gen:
                raise ConfigError(f"generator names must be non-empty strings, got {gen!r}")
            try:
                ns, seeds, vectors = value
            except (TypeError, ValueError):
                raise ConfigError(f"generator {gen!r}: entry must be (namespace digest, seeds, vectors)") from None
            if not isinstance(ns, str) or not _HEX64.match(ns):
                raise ConfigError(f"generator {gen!r}: namespace must be a 64-char hex digest, got {ns!r}")
            x = self._prepare_vectors(gen, vectors)
            seeds = [int(s) for s in seeds]
            if len(seeds) != x.shape[0]:
                raise ConfigError(f"generator {gen!r}: {len(seeds)} seeds for {x.shape[0]} vectors")
            prepared.append((gen, ns, seeds, x))
        return prompt, norm, prepared

    def _commit_batch(self, batch) -> None:
        touched: set[str] = set()

        def txn_fn(txn):
            db = self._db
            meta = db["meta"]
            next_rid = _U64.unpack(txn.get(b"next_record_id", db=meta))[0]
            next_pid = _U64.unpack(txn.get(b"next_prompt_id", db=meta))[0]
            stream_end = _U64.unpack(txn.get(b"vector_bytes", db=meta))[0]
            now = time.time()
            ns_stats: dict[str, dict] = {}
            touched.clear()
            for raw_prompt, norm, prepared in batch:
                ph = hashlib.sha256(norm.encode("utf-8")).digest()
                pid_raw = txn.get(ph, db=db["prompt_ids"])
                if pid_raw is None:
                    pid = next_pid
                    next_pid += 1
                    txn.put(ph, _U64.pack(pid), db=db["prompt_ids"])
                    _append(txn, _U64.pack(pid), msgpack.packb({"p": norm, "r": raw_prompt, "t": now}), db["prompts"])
                else:
                    pid = _U64.unpack(pid_raw)[0]
                for gen, ns, seeds, x in prepared:
                    key = prompt_key(ns, norm)
                    if txn.get(key, db=db["keys"]) is not None:
                        continue  # already cached: same namespace + prompt name the same vectors
                    st = ns_stats.get(ns)
                    if st is None:
                        raw = txn.get(ns.encode(), db=db["namespaces"])
                        st = msgpack.unpackb(raw) if raw else {"d": x.shape[1], "g": [], "r": 0, "v": 0, "last": 0}
                        ns_stats[ns] = st
                    if st["d"] != x.shape[1]:
                        raise ConfigError(
                            f"generator {gen!r}: vectors of dimension {x.shape[1]} in namespace {ns[:12]}… "
                            f"which holds dimension {st['d']}"
                        )
                    rid = next_rid
                    next_rid += 1
                    rk = _U64.pack(rid)
                    rec = {"p": norm, "pid": pid, "g": gen, "ns": ns, "s": seeds, "n": x.shape[0],
                           "d": x.shape[1], "dt": self._dt_bytes, "o": stream_end, "t": now}
                    _append(txn, rk, msgpack.packb(rec), db["records"])
                    stream_end = self._append_stream(txn, stream_end, self._encode_vectors(x))
                    txn.put(key, rk, db=db["keys"])
                    txn.put(bytes.fromhex(ns) + rk, b"", db=db["ns_records"])
                    if gen not in st["g"]:
                        st["g"].append(gen)
                    st["r"] += 1
                    st["v"] += x.shape[0]
                    st["last"] = rid
                    touched.add(ns)
            for ns, st in ns_stats.items():
                txn.put(ns.encode(), msgpack.packb(st), db=db["namespaces"])
            txn.put(b"next_record_id", _U64.pack(next_rid), db=meta)
            txn.put(b"next_prompt_id", _U64.pack(next_pid), db=meta)
            txn.put(b"vector_bytes", _U64.pack(stream_end), db=meta)

        with self._mutate:
            self._write(txn_fn)  # <- the commit point
            for ns in touched:
                self._catch_up_vec(ns, persist=True)
            if self.prompt_embedder is not None:
                self._catch_up_prompts(persist=True)

    # -- reads -----------------------------------------------------------------------------------------
    def _get_candidates(self, txn, ns: str, norm: str, gen: str) -> Candidates | None:
        rk = txn.get(prompt_key(ns, norm), db=self._db["keys"])
        if rk is None:
            return None
        rid = _U64.unpack(rk)[0]
        rec = msgpack.unpackb(txn.get(rk, db=self._db["records"]))
        return Candidates(self._read_vectors(txn, rid, rec), list(rec["s"]), rid, rec["p"], gen, ns)

    @staticmethod
    def _check_namespaces(namespaces: Mapping[str, str]) -> None:
        if not isinstance(namespaces, Mapping) or not namespaces:
            raise ConfigError("namespaces must be a non-empty mapping generator -> namespace digest")
        for gen, ns in namespaces.items():
            if not isinstance(ns, str) or not _HEX64.match(ns):
                raise ConfigError(f"generator {gen!r}: namespace must be a 64-char hex digest, got {ns!r}")

    def contains(self, prompt: str, namespaces: Mapping[str, str]) -> bool:
        """True when every generator has candidates for exactly this (normalized) prompt."""
        self._check_namespaces(namespaces)
        norm = normalize_prompt(prompt)
        keys = self._db["keys"]
        with self._read_txn() as txn:
            return all(txn.get(prompt_key(ns, norm), db=keys) is not None for ns in namespaces.values())

    def lookup(self, prompt: str, namespaces: Mapping[str, str]) -> CacheLookup:
        """Exact hit, near-duplicate reuse or miss (with the partial exact candidates); see :class:`CacheLookup`."""
        self._check_namespaces(namespaces)
        norm = normalize_prompt(prompt)
        with self._read_txn() as txn:
            found: dict[str, Candidates] = {}
            missing: list[str] = []
            for gen, ns in namespaces.items():
                c = self._get_candidates(txn, ns, norm, gen)
                if c is None:
                    missing.append(gen)
                else:
                    found[gen] = c
            if not missing:
                return CacheLookup("hit", norm, norm, 1.0, found, [])
        nearest = (None, None)
        if self.prompt_embedder is not None and norm:
            near, nearest = self._near(norm, namespaces)
            if near is not None:
                matched, sim, cands = near
                return CacheLookup("near", norm, matched, sim, cands, [], matched, sim)
        return CacheLookup("miss", norm, norm if found else None, 1.0 if found else None, found, missing,
                           nearest[0], nearest[1])

    def _embed_prompt(self, norm: str) -> np.ndarray:
        with self._embed_cache_lock:
            e = self._embed_cache.get(norm)
            if e is not None:
                self._embed_cache.move_to_end(norm)
                return e
        e = self.prompt_embedder.embed([norm])[0]
        with self._embed_cache_lock:
            self._embed_cache[norm] = e
            if len(self._embed_cache) > 4096:
                self._embed_cache.popitem(last=False)
        return e

    def _near(self, norm: str, namespaces: Mapping[str, str]):
        index = self._ensure_prompt_index()
        if index.ntotal == 0:
            return None, (None, None)
        q = self._embed_prompt(norm)[None, :]
        k = min(16, index.ntotal)
        sims, pids = index.search(q, k)
        nearest = (None, None)
        with self._read_txn() as txn:
            for sim, pid in zip(sims[0].tolist(), pids[0].tolist()):
                if pid < 0:
                    continue
                raw = txn.get(_U64.pack(pid), db=self._db["prompts"])
                if raw is None:
                    continue
                text = msgpack.unpackb(raw)["p"]
                if text == norm:
                    continue  # the exact prompt itself (incomplete, or it would have been a hit)
                if nearest[0] is None:
                    nearest = (text, float(sim))
                if sim < self.near_threshold:
                    break
                cands = {}
                for gen, ns in namespaces.items():
                    c = self._get_candidates(txn, ns, text, gen)
                    if c is None:
                        break
                    cands[gen] = c
                else:
                    return (text, float(min(sim, 1.0)), cands), nearest
        return None, nearest

    def knn(self, generator: str, namespace: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Unrestricted top-``k`` (inner product) over all cached candidates of ``namespace``.

        ``generator`` names the caller's generator (checked against the namespace's writers when known).
        Queries are L2-normalised here. Returns one list per query, best first (fewer than ``k`` when the
        namespace holds fewer vectors).
        """
        self._check_namespaces({generator: namespace})
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ConfigError(f"queries must be (n, d), got shape {q.shape}")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        q = np.ascontiguousarray(q / norms)
        index = self._ensure_vec_index(namespace)
        if index is None:
            return [[] for _ in range(len(q))]
        if q.shape[1] != index.dim:
            raise ConfigError(f"queries have dimension {q.shape[1]}, namespace holds {index.dim}")
        scores, fids = index.search(q, k)
        out: list[list[Neighbour]] = []
        records = self._db["records"]
        memo: dict[int, dict] = {}
        with self._read_txn() as txn:
            for srow, frow in zip(scores.tolist(), fids.tolist()):
                row = []
                for s, fid in zip(srow, frow):
                    if fid < 0:
                        continue
                    rid, pos = split_id(fid)
                    rec = memo.get(rid)
                    if rec is None:
                        rec = memo[rid] = msgpack.unpackb(txn.get(_U64.pack(rid), db=records))
                    row.append(Neighbour(float(s), rid, rec["p"], int(rec["s"][pos]), pos))
                out.append(row)
        return out

    # -- indexes ---------------------------------------------------------------------------------------
    def _faiss_dir(self) -> str:
        return os.path.join(self.path, "faiss")

    def _vec_dir(self, ns: str) -> str:
        return os.path.join(self._faiss_dir(), f"vec-{ns}")

    def _prompt_dir(self) -> str:
        return os.path.join(self._faiss_dir(), "prompts-" + _sanitise(self.prompt_embedder.id))

    def _save_index(self, idx: VectorIndex, directory: str) -> None:
        idx.save(directory)
        idx._saved_ntotal = idx.ntotal

    def _ns_stats(self, txn, ns: str) -> dict | None:
        raw = txn.get(ns.encode(), db=self._db["namespaces"])
        return msgpack.unpackb(raw) if raw else None

    def _open_all_indexes(self) -> None:
        with self._read_txn() as txn:
            namespaces = [k.decode() for k, _ in txn.cursor(db=self._db["namespaces"])]
        for ns in namespaces:
            self._ensure_vec_index(ns, persist=True)
        if self.prompt_embedder is not None:
            self._ensure_prompt_index(persist=True)

    def _ensure_vec_index(self, ns: str, persist: bool = False) -> VectorIndex | None:
        idx = self._indexes.get(ns)
        with self._read_txn() as txn:
            st = self._ns_stats(txn, ns)
        if st is None:
            return None
        if idx is not None and idx.last_id >= st["last"]:
            return idx  # fast path: nothing new
        return self._catch_up_vec(ns, persist=persist and not self.readonly)

    def _catch_up_vec(self, ns: str, persist: bool = False) -> VectorIndex | None:
        with self._mutate:
            with self._read_txn() as txn:
                st = self._ns_stats(txn, ns)
                if st is None:
                    return None
                idx = self._indexes.get(ns)
                if idx is None:
                    idx = VectorIndex.load(self._vec_dir(ns), st["d"], self.index_policy, max_last_id=st["last"])
                    if idx is not None:
                        idx._saved_ntotal = idx.ntotal
                elif self.readonly:
                    idx.load_if_newer(self._vec_dir(ns), st["last"])
                if idx is None:
                    idx = VectorIndex(st["d"], self.index_policy)
                if idx.last_id >= st["last"]:
                    self._indexes[ns] = idx
                    return idx
                pending = st["v"] - idx.ntotal
                rebuilt = idx.wants_rebuild(idx.ntotal + pending)
                if rebuilt:
                    ids, vecs = self._scan_ns(txn, ns, 0)
                    idx.rebuild(ids, vecs, st["last"])
                else:
                    ids, vecs = self._scan_ns(txn, ns, idx.last_id)
                    idx.add(ids, vecs, st["last"])
            self._indexes[ns] = idx
            if persist and not self.readonly:
                if rebuilt or idx.ntotal - getattr(idx, "_saved_ntotal", 0) >= self.index_persist_every:
                    self._save_index(idx, self._vec_dir(ns))
            return idx

    def _scan_ns(self, txn, ns: str, after: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS ids and vectors of all records of ``ns`` with id > ``after``."""
        prefix = bytes.fromhex(ns)
        cur = txn.cursor(db=self._db["ns_records"])
        records = self._db["records"]
        ids, vecs = [], []
        if cur.set_range(prefix + _U64.pack(after + 1)):
            for key in cur.iternext(keys=True, values=False):
                if key[:32] != prefix:
                    break
                rk = key[32:]
                rid = _U64.unpack(rk)[0]
                rec = msgpack.unpackb(txn.get(rk, db=records))
                x = self._read_vectors(txn, rid, rec)
                ids.append(vector_ids(rid, len(x)))
                vecs.append(x)
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
        return np.concatenate(ids), np.concatenate(vecs)

    def _ensure_prompt_index(self, persist: bool = False) -> VectorIndex:
        idx = self._prompt_index
        with self._read_txn() as txn:
            last = _U64.unpack(txn.get(b"next_prompt_id", db=self._db["meta"]))[0] - 1
        if idx is not None and idx.last_id >= last:
            return idx
        return self._catch_up_prompts(persist=persist and not self.readonly)

    def _catch_up_prompts(self, persist: bool = False) -> VectorIndex:
        emb = self.prompt_embedder
        policy = IndexPolicy(exact_max=max(self.index_policy.exact_max, 200_000),
                             memory_budget_bytes=self.index_policy.memory_budget_bytes,
                             target_recall=0.99, recall_k=1, use_gpu=self.index_policy.use_gpu)
        with self._mutate:
            with self._read_txn() as txn:
                last = _U64.unpack(txn.get(b"next_prompt_id", db=self._db["meta"]))[0] - 1
                idx = self._prompt_index
                if idx is None:
                    idx = VectorIndex.load(self._prompt_dir(), emb.dim, policy, max_last_id=last)
                    if idx is not None:
                        idx._saved_ntotal = idx.ntotal
                elif self.readonly:
                    idx.load_if_newer(self._prompt_dir(), last)
                if idx is None:
                    idx = VectorIndex(emb.dim, policy)
                if idx.last_id >= last:
                    self._prompt_index = idx
                    return idx
                rebuild = idx.wants_rebuild(last)
                start = 0 if rebuild else idx.last_id
                pids, texts = [], []
                cur = txn.cursor(db=self._db["prompts"])
                if cur.set_range(_U64.pack(start + 1)):
                    for k, v in cur:
                        pids.append(_U64.unpack(k)[0])
                        texts.append(msgpack.unpackb(v)["p"])
            vecs = emb.embed(texts) if texts else np.zeros((0, emb.dim), np.float32)
            if vecs.shape[1:] != (emb.dim,):
                raise RindexError(f"prompt embedder {emb.id} returned shape {vecs.shape}, expected (n, {emb.dim})")
            ids = np.asarray(pids, dtype=np.int64)
            if rebuild:
                idx.rebuild(ids, vecs, last)
            else:
                idx.add(ids, vecs, last)
            self._prompt_index = idx
            if persist and not self.readonly and idx.ntotal - getattr(idx, "_saved_ntotal", 0) >= self.index_persist_every:
                self._save_index(idx, self._prompt_dir())
            return idx

    def refresh(self) -> None:
        """Catch up every loaded index with records committed since (readers; cheap when nothing changed)."""
        self._check_usable()
        for ns in list(self._indexes):
            self._ensure_vec_index(ns)
        if self.prompt_embedder is not None and self._prompt_index is not None:
            self._ensure_prompt_index()

    def flush(self) -> None:
        """Writer: snapshot every index that changed since its last snapshot."""
        self._check_usable()
        if self.readonly:
            return
        with self._mutate:
            for ns, idx in self._indexes.items():
                if idx.ntotal != getattr(idx, "_saved_ntotal", -1):
                    self._save_index(idx, self._vec_dir(ns))
            if self._prompt_index is not None and self._prompt_index.ntotal != getattr(self._prompt_index, "_saved_ntotal", -1):
                self._save_index(self._prompt_index, self._prompt_dir())

    # -- introspection -----------------------------------------------------------------------------
    def namespaces(self) -> dict[str, dict]:
        """namespace -> {dim, generators, records, vectors, last_record_id}."""
        with self._read_txn() as txn:
            return {
                k.decode(): {"dim": st["d"], "generators": list(st["g"]), "records": st["r"], "vectors": st["v"],
                             "last_record_id": st["last"]}
                for k, v in txn.cursor(db=self._db["namespaces"])
                for st in [msgpack.unpackb(v)]
            }

    def info(self) -> dict:
        """Prompts, vectors per generator and namespace, disk bytes, index types, embedder, threshold."""
        with self._read_txn() as txn:
            stat = {name: txn.stat(self._db[name]) for name in _DBS}
            meta = self._db["meta"]
            next_rid = _U64.unpack(txn.get(b"next_record_id", db=meta))[0]
        nss = self.namespaces()
        per_gen: dict[str, int] = {}
        for ns, st in nss.items():
            idx = self._indexes.get(ns)
            st["index"] = idx.info if idx is not None else self._peek_snapshot(self._vec_dir(ns))
            for g in st["generators"]:
                per_gen[g] = per_gen.get(g, 0) + st["vectors"]
        lmdb_bytes = _disk_bytes(self.path, recursive=False)
        faiss_bytes = _disk_bytes(self._faiss_dir(), recursive=True)
        total_vectors = sum(st["vectors"] for st in nss.values())
        env_info = self._env.info()
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
            "lmdb_used_bytes": (env_info["last_pgno"] + 1) * self._env.stat()["psize"],
            "next_record_id": next_rid,
            "vector_dtype": self.vector_dtype,
            "prompt_embedder": self.prompt_embedder.id if self.prompt_embedder is not None else None,
            "prompt_index": self._prompt_index.info if self._prompt_index is not None else None,
            "near_threshold": self.near_threshold,
            "faiss_gpu": _faiss_gpus() > 0,
        }

    @staticmethod
    def _peek_snapshot(directory: str) -> dict | None:
        import json

        if not os.path.isdir(directory):
            return None
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        if not names:
            return None
        try:
            with open(os.path.join(directory, names[-1])) as fh:
                meta = json.load(fh)
            return {"type": "IDMap2," + meta["key"], "exact": meta["key"] == "Flat",
                    "measured_recall_at_10": meta.get("recall"), "persisted_last_record_id": int(names[-1][:20]),
                    "loaded": False}
        except Exception:
            return None

    def verify(self) -> dict:
        """Check that records, keys, vectors and every index agree; raises :class:`CacheCorruptError` if not.

        Returns counts. Used by the crash tests; cheap enough to run on a small cache at any time.
        """
        db = self._db
        problems: list[str] = []
        counts: dict[str, int] = {}
        with self._read_txn() as txn:
            next_rid = _U64.unpack(txn.get(b"next_record_id", db=db["meta"]))[0]
            per_ns: dict[str, int] = {}
            n_rec = 0
            for rk, raw in txn.cursor(db=db["records"]):
                rid = _U64.unpack(rk)[0]
                rec = msgpack.unpackb(raw)
                n_rec += 1
                if rid >= next_rid:
                    problems.append(f"record {rid} >= next_record_id {next_rid}")
                if txn.get(prompt_key(rec["ns"], rec["p"]), db=db["keys"]) != rk:
                    problems.append(f"record {rid} has no key")
                x = self._read_vectors(txn, rid, rec)
                if x.shape != (rec["n"], rec["d"]) or len(rec["s"]) != rec["n"]:
                    problems.append(f"record {rid} malformed")
                per_ns[rec["ns"]] = per_ns.get(rec["ns"], 0) + rec["n"]
            if txn.stat(db["keys"])["entries"] != n_rec:
                problems.append("keys and records differ in number")
            counts["records"] = n_rec
        for ns, st in self.namespaces().items():
            if per_ns.get(ns, 0) != st["vectors"]:
                problems.append(f"namespace {ns[:12]} counts {st['vectors']} vectors, records hold {per_ns.get(ns, 0)}")
            idx = self._ensure_vec_index(ns)
            if idx is not None and idx.ntotal != st["vectors"]:
                problems.append(f"index of namespace {ns[:12]} holds {idx.ntotal} vectors, records {st['vectors']}")
        if self.prompt_embedder is not None:
            pidx = self._ensure_prompt_index()
            with self._read_txn() as txn:
                n_prompts = txn.stat(db["prompts"])["entries"]
            if pidx.ntotal != n_prompts:
                problems.append(f"prompt index holds {pidx.ntotal} prompts, LMDB {n_prompts}")
        if problems:
            raise CacheCorruptError("; ".join(problems[:10]))
        counts["vectors"] = sum(per_ns.values())
        return counts


def _append(txn, key: bytes, value: bytes, db) -> None:
    # MDB_APPEND keeps pages full; py-lmdb returns False (no exception) when the key is not the largest.
    if not txn.put(key, value, db=db, append=True):
        raise CacheCorruptError(f"append of key {key.hex()} out of order: id counters disagree with the data")


def _faiss_gpus() -> int:
    try:
        return faiss.get_num_gpus()
    except AttributeError:
        return 0


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
