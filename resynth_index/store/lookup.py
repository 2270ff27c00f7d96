"""Reads of the candidate cache: exact lookup, near-duplicate prompt reuse, and kNN over a namespace.

**Exact lookup** reads the keys of (namespace, normalized prompt) for every requested generator in one read
transaction: all present is a ``"hit"``.

**Near-duplicate reuse.** With a prompt embedder, a lookup that finds no complete exact hit searches the
prompt-embedding index for the 16 nearest stored prompts; the most similar one at cosine >= ``near_threshold``
that is complete for every requested generator is reused (status ``"near"``, with ``matched_prompt`` and
``similarity``). The nearest other prompt is reported on a miss too (``nearest_prompt``), below the threshold
or not. :data:`DEFAULT_NEAR_THRESHOLD` was calibrated for MiniLM on ``resynth_index/data/paraphrases.tsv``
with ``tools/calibrate_near_threshold.py`` (see that script's output for the distributions).

**kNN** searches a namespace's FAISS index. Stored vectors are unit length and the indexes are built from the
same decoded values, so a score is the cosine similarity and equals the dot product with
``Candidates.vectors``. Both searches catch their index up with LMDB first (cheap when nothing changed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..models.prompt_embedders import PromptEmbedder
from .indexes import DerivedIndexes
from .keys import is_namespace_digest, normalize_prompt
from .records import Candidates, RecordStore
from .vector_index import split_id

#: Cosine similarity (MiniLM prompt embeddings) at or above which a stored prompt's candidates are reused.
#: Calibrated by ``tools/calibrate_near_threshold.py`` on ``resynth_index/data/paraphrases.tsv`` (45 paraphrase
#: and 45 near-miss pairs): the smallest 0.01 step with at most 2.5% false reuse. At 0.95, 64% of paraphrases
#: are reused and 1 near miss of 45 is (a word-order swap, 0.99, that MiniLM cannot see); 0.94 would
#: let 7% through, 0.90 16%. Re-calibrate for a CLIP text tower.
DEFAULT_NEAR_THRESHOLD = 0.95

_EMBED_MEMO = 4096  # prompt embeddings kept for repeated near-duplicate searches


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


def check_namespaces(namespaces: Mapping[str, str]) -> None:
    if not isinstance(namespaces, Mapping) or not namespaces:
        raise ConfigError("namespaces must be a non-empty mapping generator -> namespace digest")
    for gen, ns in namespaces.items():
        if not is_namespace_digest(ns):
            raise ConfigError(f"generator {gen!r}: namespace must be a 64-char hex digest, got {ns!r}")


class Lookups:
    """The read side of one cache (see the module docstring)."""

    def __init__(self, records: RecordStore, indexes: DerivedIndexes, *,
                 prompt_embedder: PromptEmbedder | None, near_threshold: float):
        self.records = records
        self.indexes = indexes
        self.prompt_embedder = prompt_embedder
        self.near_threshold = near_threshold
        self._embed_memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._embed_memo_lock = threading.Lock()

    def contains(self, prompt: str, namespaces: Mapping[str, str]) -> bool:
        check_namespaces(namespaces)
        norm = normalize_prompt(prompt)
        with self.records.env.read() as txn:
            return all(self.records.has(txn, ns, norm) for ns in namespaces.values())

    def lookup(self, prompt: str, namespaces: Mapping[str, str]) -> CacheLookup:
        check_namespaces(namespaces)
        norm = normalize_prompt(prompt)
        with self.records.env.read() as txn:
            found: dict[str, Candidates] = {}
            missing: list[str] = []
            for gen, ns in namespaces.items():
                c = self.records.candidates(txn, ns, norm, gen)
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
        with self._embed_memo_lock:
            e = self._embed_memo.get(norm)
            if e is not None:
                self._embed_memo.move_to_end(norm)
                return e
        e = self.prompt_embedder.embed([norm])[0]
        with self._embed_memo_lock:
            self._embed_memo[norm] = e
            if len(self._embed_memo) > _EMBED_MEMO:
                self._embed_memo.popitem(last=False)
        return e

    def _near(self, norm: str, namespaces: Mapping[str, str]):
        """((matched prompt, similarity, candidates) or None, (nearest other prompt, its similarity))."""
        index = self.indexes.prompt_index()
        if index.ntotal == 0:
            return None, (None, None)
        q = self._embed_prompt(norm)[None, :]
        k = min(16, index.ntotal)
        sims, pids = index.search(q, k)
        nearest = (None, None)
        with self.records.env.read() as txn:
            for sim, pid in zip(sims[0].tolist(), pids[0].tolist()):
                if pid < 0:
                    continue
                text = self.records.prompt_text(txn, pid)
                if text is None:
                    continue
                if text == norm:
                    continue  # the exact prompt itself (incomplete, or it would have been a hit)
                if nearest[0] is None:
                    nearest = (text, float(sim))
                if sim < self.near_threshold:
                    break
                cands = {}
                for gen, ns in namespaces.items():
                    c = self.records.candidates(txn, ns, text, gen)
                    if c is None:
                        break
                    cands[gen] = c
                else:
                    return (text, float(min(sim, 1.0)), cands), nearest
        return None, nearest

    def knn(self, generator: str, namespace: str, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        check_namespaces({generator: namespace})
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
        index = self.indexes.namespace_index(namespace)
        if index is None:
            return [[] for _ in range(len(q))]
        if q.shape[1] != index.dim:
            raise ConfigError(f"queries have dimension {q.shape[1]}, namespace holds {index.dim}")
        scores, fids = index.search(q, k)
        out: list[list[Neighbour]] = []
        memo: dict[int, dict] = {}
        with self.records.env.read() as txn:
            for srow, frow in zip(scores.tolist(), fids.tolist()):
                row = []
                for s, fid in zip(srow, frow):
                    if fid < 0:
                        continue
                    rid, pos = split_id(fid)
                    rec = memo.get(rid)
                    if rec is None:
                        rec = memo[rid] = self.records.record(txn, rid)
                    row.append(Neighbour(float(s), rid, rec["p"], int(rec["s"][pos]), pos))
                out.append(row)
        return out

    def sample(self, namespace: str, limit: int, seed: int = 0) -> list[StoredCandidate]:
        """Up to ``limit`` stored candidates of ``namespace``, drawn without replacement (fixed ``seed``), with
        their vectors: the cache read as a labelled gallery (open-set calibration)."""
        with self.records.env.read() as txn:
            fids, vectors = self.records.scan_namespace(txn, namespace, 0)
            if not len(fids):
                return []
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(len(fids), size=min(limit, len(fids)), replace=False))
            out = []
            for j in chosen.tolist():
                rid, pos = split_id(int(fids[j]))
                rec = self.records.record(txn, rid)
                out.append(StoredCandidate(rid, pos, rec["p"], np.asarray(vectors[j], np.float32)))
        return out


@dataclass(frozen=True)
class StoredCandidate:
    record_id: int
    position: int  # index of the candidate within its record
    prompt: str  # normalized
    vector: np.ndarray


__all__ = ["DEFAULT_NEAR_THRESHOLD", "StoredCandidate", "CacheLookup", "Lookups", "Neighbour", "check_namespaces"]
