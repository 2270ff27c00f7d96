"""FAISS side of the candidate cache: one derived, persisted, self-tuning inner-product index per namespace.

The index is *derived*: every vector in it also lives in LMDB (:mod:`resynth_index.store.records`), which is the
source of truth. An index snapshot therefore only needs to say which records it covers; the cache catches
it up with "all record ids greater than the snapshot's" on open, or rebuilds it from LMDB when the snapshot
is missing or unreadable (:mod:`resynth_index.store.indexes`). The same class also serves the prompt-embedding
index, whose ids are prompt ids.

**Ids.** A FAISS id is ``record_id << 12 | j``: record ``record_id`` holds the γ candidates of one prompt for
one generator, and ``j`` (at most :data:`MAX_VECTORS_PER_RECORD`, 4,095) is the candidate's position (its seed
is ``seeds[j]``).

**Index choice by size and memory** (:func:`choose_index_key`, autofaiss-style rules, thresholds measured on
the 2-core reference machine, see ``benchmarks/cache.py``):

* ``n < exact_max`` (default 50,000): ``IDMap2,Flat`` exact inner product. A batched flat search costs
  about ``6e7 / n`` queries per second here (≈ 60 q/s at 10^6 × 512-d), so 50k is where exact search drops
  to ~1,000 q/s.
* beyond: ``IVF{nlist},PQ{d/8}x4fs`` (4-bit fast-scan PQ, 4 bits per dimension / 8) with an exact re-rank of
  the ``k_factor · k`` best from float16 copies (``Refine(SQfp16)``: the cache stores float16 vectors, so
  this re-rank is exact with respect to what is stored, at half the memory and disk of ``RFlat``) when
  ``n·d·2`` bytes fit the memory budget, and no re-rank otherwise. ``nlist`` is the power of two nearest to
  ``sqrt(n)`` (autofaiss uses 4–16·sqrt(n); k-means at 512-d dominates the build on 2 cores, and measured
  recall at 10^6 was limited by the PQ codes, not by the coarse quantizer). Dimensions that PQ cannot split
  use ``SQ8`` codes instead. HNSW was measured and rejected: ``HNSW32`` took 25 s for 10^5 × 512-d here
  (superlinear, so several minutes per 10^6) against ~30-40 s for a whole 10^6 IVF-PQ build, and it cannot
  remove ids. ``IVF,SQ8`` without re-rank was measured at 10^6: 1,350 q/s at recall@10 0.92 (nprobe 8),
  too slow and too inexact; fast-scan PQ with re-rank reached 0.95 at 3,500-5,500 q/s.
* an approximate index is rebuilt (from LMDB) when it has grown 4× since it was trained.

**Recall is measured, not assumed** (:meth:`VectorIndex.rebuild`): after each approximate build, 256 stored
vectors perturbed with Gaussian noise (cosine ≈ 0.9 to their source) are searched exactly and
approximately; the cheapest ``(nprobe, k_factor)`` from a grid reaching ``target_recall`` (0.95 recall@10)
is kept, and the measured recall is reported by :attr:`VectorIndex.info`. When no setting reaches the
target (uniform random data: recall@10 ≈ 0.21 at nprobe 256 for 10^6 × 512-d), the most exhaustive one is
kept, ``meets_target_recall`` is False and a ``RuntimeWarning`` says so; exact search stays available by
raising ``IndexPolicy.exact_max``.

**Persistence** (this module owns the file names): ``DIR/<last_id:020d>.faiss`` is written to a temporary
``DIR/tmp*.tmp``, fsync'ed and ``os.replace``d into place (atomic); the covered id is in the file name, so the
index and its coverage can never disagree. The ``DIR/<last_id:020d>.json`` beside it (key, ``built_n``,
measured recall, build seconds, dim) is written just before the rename and is informational only
(:meth:`VectorIndex.peek` reads it; :meth:`VectorIndex.load` falls back to defaults without it). Older
snapshots are deleted after the new one is in place and the directory is fsync'ed. A crash while saving
leaves the previous snapshot plus a ``.tmp`` (deleted by the next writer, :func:`remove_stale_temporaries`)
and perhaps a ``.json`` without its ``.faiss`` (ignored by :meth:`VectorIndex.load`). An index knows what its
newest snapshot holds (:attr:`VectorIndex.saved_ntotal`, :attr:`VectorIndex.dirty`), so the cache decides
when to save without keeping state of its own.

**Threads**: searches take a shared lock, mutations an exclusive one (FAISS CPU searches are thread-safe
only while nothing mutates). **GPU**: when ``faiss.get_num_gpus() > 0`` (the ``faiss-gpu`` build), exact
indexes are searched through a GPU copy made with ``index_cpu_to_gpu``; the CPU index stays the master that
is mutated and persisted, so there is one code path.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

import faiss
import numpy as np

ID_SHIFT = 12
_POSITION_MASK = (1 << ID_SHIFT) - 1
#: The most candidate vectors one record may hold: positions must fit the low ``ID_SHIFT`` bits of a FAISS id
#: (the store's own limit; how many candidates attribution generates per prompt is the engine's setting).
MAX_VECTORS_PER_RECORD = _POSITION_MASK
_SNAP = re.compile(r"^(\d{20})\.faiss$")
_SNAP_META = re.compile(r"^(\d{20})\.json$")


def vector_ids(record_id: int, count: int) -> np.ndarray:
    """FAISS ids of the ``count`` candidates of record ``record_id``."""
    return (np.int64(record_id) << ID_SHIFT) + np.arange(count, dtype=np.int64)


def split_id(fid: int) -> tuple[int, int]:
    """(record_id, position) of a FAISS id."""
    return int(fid) >> ID_SHIFT, int(fid) & _POSITION_MASK


@dataclass(frozen=True)
class IndexPolicy:
    """How a namespace index is chosen and tuned (see the module docstring)."""

    exact_max: int = 50_000
    memory_budget_bytes: int = 8 << 30
    target_recall: float = 0.95
    recall_k: int = 10
    rebuild_growth: float = 4.0
    use_gpu: bool | None = None  # None: when faiss sees a GPU


def _pow2_near(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def choose_index_key(n: int, d: int, policy: IndexPolicy = IndexPolicy()) -> str:
    """The FAISS factory string for ``n`` vectors of dimension ``d`` (without the ``IDMap2`` wrapper)."""
    if n < policy.exact_max:
        return "Flat"
    nlist = min(65536, max(64, _pow2_near(math.sqrt(n))))
    nlist = min(nlist, max(64, _pow2_near(n / 39)))  # at least ~39 training points per list
    m = d // 8
    codes = f"PQ{m}x4fs" if d % 8 == 0 and m % 2 == 0 else "SQ8"
    if n * d * 2 <= policy.memory_budget_bytes:
        refine = ",Refine(SQfp16)"  # the cache stores float16: a float16 re-rank is exact w.r.t. what is stored
    else:
        refine = ""
    return f"IVF{nlist},{codes}{refine}"


class _RWLock:
    """Many concurrent searches or one mutation."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


def _gpu_available(policy: IndexPolicy) -> bool:
    return policy.use_gpu is not False and faiss_gpu_count() > 0


def _ivf_and_refine(index: faiss.Index):
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    refine = inner if isinstance(inner, faiss.IndexRefine) else None
    try:
        ivf = faiss.extract_index_ivf(inner)
    except RuntimeError:
        ivf = None
    return ivf, refine


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions (into ``base``) of the exact inner-product top-``k`` of each query."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k present in the found top-k (recall@k)."""
    k = truth.shape[1]
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


class VectorIndex:
    """A persisted inner-product index over the candidate vectors of one namespace."""

    def __init__(self, dim: int, policy: IndexPolicy = IndexPolicy()):
        self.dim = int(dim)
        self.policy = policy
        self._index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self.key = "Flat"
        self.last_id = 0  # highest record id covered (0: none; record ids start at 1)
        self.built_n = 0  # ntotal when the current approximate index was trained
        self.recall: float | None = 1.0  # measured recall@k of the current index (1.0 for exact)
        self.build_seconds: float | None = None
        #: what the newest snapshot on disk holds (None: nothing saved or loaded yet); see :attr:`dirty`
        self.saved_ntotal: int | None = None
        self.saved_last_id = 0
        self._lock = _RWLock()
        self._gpu_index = None
        self._gpu_dirty = True

    # -- state ---------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def info(self) -> dict:
        ivf, refine = _ivf_and_refine(self._index)
        return {
            "type": "IDMap2," + self.key,
            "exact": self.key == "Flat",
            "ntotal": self.ntotal,
            "last_record_id": self.last_id,
            "nprobe": int(ivf.nprobe) if ivf is not None else None,
            "k_factor": float(refine.k_factor) if refine is not None else None,
            "measured_recall_at_10": self.recall,
            "meets_target_recall": None if self.recall is None else self.recall >= self.policy.target_recall,
            "build_seconds": self.build_seconds,
            "gpu": _gpu_available(self.policy),
        }

    @property
    def dirty(self) -> bool:
        """True when the index differs from its newest snapshot (or has none): :meth:`save` would write one."""
        return self.saved_ntotal is None or self.ntotal != self.saved_ntotal

    @property
    def unsaved(self) -> int:
        """Vectors added since the newest snapshot (all of them when there is none)."""
        return self.ntotal - (self.saved_ntotal or 0)

    def mark_saved(self) -> None:
        """Record that the index as it is now is what its newest snapshot holds (after save or load)."""
        self.saved_ntotal, self.saved_last_id = self.ntotal, self.last_id

    def wants_rebuild(self, n_after: int) -> bool:
        """True when the index type chosen for ``n_after`` vectors differs in kind from the current one."""
        if self.key == "Flat":
            return n_after >= self.policy.exact_max
        return n_after >= self.policy.rebuild_growth * max(1, self.built_n)

    # -- mutation ------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray, last_id: int) -> None:
        """Append vectors (already unit length) with their FAISS ids, covering records up to ``last_id``."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._lock.acquire_write()
        try:
            if len(ids):
                self._index.add_with_ids(vectors, ids)
                self._gpu_dirty = True
            self.last_id = max(self.last_id, int(last_id))
        finally:
            self._lock.release_write()

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray, last_id: int, *, seed: int = 0) -> None:
        """Replace the index by the one :func:`choose_index_key` picks for these vectors; tune and measure it."""
        t0 = time.perf_counter()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n = len(ids)
        key = choose_index_key(n, self.dim, self.policy)
        if key == "Flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            if n:
                index.add_with_ids(vectors, ids)
            recall = 1.0
        else:
            rng = np.random.default_rng(seed)
            inner = faiss.index_factory(self.dim, key, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(inner)
            ntrain = min(n, 64 * ivf.nlist)
            sample = vectors[np.sort(rng.choice(n, ntrain, replace=False))] if ntrain < n else vectors
            inner.train(sample)
            index = faiss.IndexIDMap2(inner)
            index.add_with_ids(vectors, ids)
            recall = self._tune(index, vectors, ids, rng)
            if recall < self.policy.target_recall:
                warnings.warn(
                    f"approximate index {key} over {n} vectors reaches only recall@{self.policy.recall_k} "
                    f"{recall:.3f} < {self.policy.target_recall} at its most exhaustive setting (data without "
                    "cluster structure); raise IndexPolicy.exact_max to keep exact search",
                    RuntimeWarning, stacklevel=2,
                )
        with_lock = self._lock
        with_lock.acquire_write()
        try:
            self._index = index
            self.key = key
            self.built_n = n
            self.recall = recall
            self.last_id = int(last_id)
            self.build_seconds = round(time.perf_counter() - t0, 3)
            self._gpu_index = None
            self._gpu_dirty = True
        finally:
            with_lock.release_write()

    def _tune(self, index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> float:
        k = self.policy.recall_k
        nq = min(256, len(vectors))
        src = vectors[rng.choice(len(vectors), nq, replace=False)]
        noise = rng.standard_normal(src.shape, dtype=np.float32)
        noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)
        queries = src + noise
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = ids[exact_topk(vectors, queries, k)]
        ivf, refine = _ivf_and_refine(index)
        best = None  # (meets, -seconds or recall, nprobe, kf, recall)
        kfs = [1.0] if refine is None else [4.0, 8.0, 16.0, 32.0, 64.0]
        for nprobe in (8, 16, 32, 64, 128, 256):
            if nprobe > ivf.nlist:
                break
            ivf.nprobe = nprobe
            for kf in kfs:
                if refine is not None:
                    refine.k_factor = kf
                index.search(queries[:16], k)  # warm
                t = time.perf_counter()
                found = index.search(queries, k)[1]
                secs = time.perf_counter() - t
                r = recall_at_k(found, truth)
                meets = r >= self.policy.target_recall
                score = (meets, -secs if meets else r)
                if best is None or score > best[0]:
                    best = (score, nprobe, kf, r)
                if meets:
                    break  # a larger k_factor only costs more at this nprobe
        _, nprobe, kf, r = best
        ivf.nprobe = nprobe
        if refine is not None:
            refine.k_factor = kf
        return round(float(r), 4)

    # -- search --------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        self._lock.acquire_read()
        try:
            index = self._search_index()
            return index.search(queries, k)
        finally:
            self._lock.release_read()

    def _search_index(self) -> faiss.Index:
        if self.key != "Flat" or not _gpu_available(self.policy):
            return self._index
        if self._gpu_dirty or self._gpu_index is None:  # benign race: two readers may both copy
            try:
                if not hasattr(self, "_gpu_res"):
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
                self._gpu_dirty = False
            except Exception:  # pragma: no cover - GPU build only
                return self._index
        return self._gpu_index

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str) -> str:
        """Write an atomic snapshot ``<last_id>.faiss`` into ``directory``; delete older ones."""
        os.makedirs(directory, exist_ok=True)
        self._lock.acquire_read()
        try:
            last_id = self.last_id
            final = os.path.join(directory, f"{last_id:020d}.faiss")
            meta = {"key": self.key, "built_n": self.built_n, "recall": self.recall,
                    "build_seconds": self.build_seconds, "dim": self.dim}
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; readers may run as other users
            try:
                faiss.write_index(self._index, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                with open(final[: -len(".faiss")] + ".json", "w") as fh:
                    json.dump(meta, fh)
                os.replace(tmp, final)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            saved_ntotal = int(self._index.ntotal)
        finally:
            self._lock.release_read()
        _fsync_dir(directory)
        for name in os.listdir(directory):
            m = _SNAP.match(name)
            if m and int(m.group(1)) != last_id:
                for p in (name, name[: -len(".faiss")] + ".json"):
                    try:
                        os.unlink(os.path.join(directory, p))
                    except FileNotFoundError:
                        pass
        self.saved_ntotal, self.saved_last_id = saved_ntotal, last_id
        return final

    @classmethod
    def load(cls, directory: str, dim: int, policy: IndexPolicy = IndexPolicy(),
             max_last_id: int | None = None) -> VectorIndex | None:
        """The newest readable snapshot in ``directory`` covering no more than ``max_last_id``, or None."""
        for last_id, name in reversed(_snapshots(directory)):
            if max_last_id is not None and last_id > max_last_id:
                continue  # covers records that LMDB does not have: never trust it
            try:
                index = faiss.read_index(os.path.join(directory, name))
            except Exception:
                continue
            if index.d != dim or not isinstance(index, faiss.IndexIDMap):
                continue
            self = cls(dim, policy)
            self._index = index
            self.last_id = last_id
            self.mark_saved()
            try:
                with open(os.path.join(directory, name[: -len(".faiss")] + ".json")) as fh:
                    meta = json.load(fh)
                self.key, self.built_n = meta["key"], int(meta["built_n"])
                self.recall, self.build_seconds = meta.get("recall"), meta.get("build_seconds")
            except Exception:
                ivf, _ = _ivf_and_refine(index)
                self.key = "Flat" if ivf is None else "IVF(unknown)"
                self.built_n = index.ntotal
                self.recall = 1.0 if ivf is None else None
            return self
        return None

    def load_if_newer(self, directory: str, max_last_id: int) -> bool:
        """Readers: swap in a snapshot the writer saved since, when it covers more than this one."""
        newest = max((s for s, _ in _snapshots(directory) if s <= max_last_id), default=0)
        if newest <= self.last_id:
            return False
        other = VectorIndex.load(directory, self.dim, self.policy, max_last_id)
        if other is None or other.last_id <= self.last_id:
            return False
        self._lock.acquire_write()
        try:
            self._index, self.key, self.built_n = other._index, other.key, other.built_n
            self.recall, self.build_seconds = other.recall, other.build_seconds
            self.last_id = other.last_id
            self.mark_saved()
            self._gpu_index, self._gpu_dirty = None, True
        finally:
            self._lock.release_write()
        return True

    @staticmethod
    def peek(directory: str) -> dict | None:
        """What the newest snapshot in ``directory`` is, from its ``.json`` alone (the index is not read): the
        keys of :attr:`info` that are known without loading, plus ``persisted_last_record_id`` and
        ``loaded: False``. None when there is no snapshot or its description is unreadable."""
        if not os.path.isdir(directory):
            return None
        metas = sorted((int(m.group(1)), n) for n in os.listdir(directory) if (m := _SNAP_META.match(n)))
        if not metas:
            return None
        last_id, name = metas[-1]
        try:
            with open(os.path.join(directory, name)) as fh:
                meta = json.load(fh)
            return {"type": "IDMap2," + meta["key"], "exact": meta["key"] == "Flat",
                    "measured_recall_at_10": meta.get("recall"), "persisted_last_record_id": last_id,
                    "loaded": False}
        except Exception:
            return None


def _snapshots(directory: str) -> list[tuple[int, str]]:
    """(covered id, file name) of every snapshot in ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(m.group(1)), n) for n in os.listdir(directory) if (m := _SNAP.match(n)))


def faiss_gpu_count() -> int:
    """GPUs this FAISS build can use (0 for the CPU build)."""
    try:
        return faiss.get_num_gpus()
    except AttributeError:
        return 0


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str) -> None:
    """Delete ``*.tmp`` left by a writer killed while saving (writer only)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


__all__ = [
    "MAX_VECTORS_PER_RECORD",
    "IndexPolicy",
    "VectorIndex",
    "choose_index_key",
    "exact_topk",
    "faiss_gpu_count",
    "recall_at_k",
    "remove_stale_temporaries",
    "split_id",
    "vector_ids",
]
