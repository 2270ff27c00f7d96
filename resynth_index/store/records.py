"""The candidate cache's records in LMDB: the source of truth every derived index is rebuilt from.

Sub-databases of ``DIR/data.mdb`` (integers big-endian, so that keys sort by id)::

    meta        schema_version (msgpack), next_record_id, next_prompt_id (u64), vector_bytes (u64, the
                stream's length), created (msgpack time)
    prompts     prompt id (u64) -> msgpack {p: normalized prompt, r: first raw prompt, t: time}
    prompt_ids  sha256(normalized prompt) -> prompt id
    records     record id (u64) -> msgpack {p: prompt, pid, g: generator, ns, s: seeds, n: γ, d: dim,
                dt: bytes per component (2 = float16, 4 = float32), o: stream offset, t: time}
    vectors     chunk number (u64) -> 2,016 bytes of one append-only byte stream
    keys        prompt_key(namespace, prompt) (32 bytes, :func:`~resynth_index.store.keys.prompt_key`) -> record id
    ns_records  namespace (32 raw bytes) + record id -> empty (per-namespace scans for catch-up)
    namespaces  namespace hex -> msgpack {d: dim, g: [generators], r: records, v: vectors, last: id}

**The vector stream.** Every record's packed little-endian vectors lie back to back in one byte stream cut
into 2,016-byte chunks (a record names its offset ``o``; the last chunk is topped up by the next write).
Chunks stay inside B-tree leaf pages (two per 4 KiB page) and are appended in key order (``MDB_APPEND``), so
pages fill completely: no overflow-page waste, which per-record values of 1-8 KiB would cost (up to 1.5-2x).
Prompts and records are appended the same way (their ids only grow).

**One write** (:meth:`RecordStore.commit`) is one LMDB transaction for a batch of whole prompts: per prompt a
prompt id (new prompts only), and per generator a record id from ``next_record_id``, the record, its vector
chunks, its key, its ``ns_records`` entry and the namespace's statistics. A key already present is left alone
(a key names deterministic vectors: same namespace, same prompt, same seeds), so writes are idempotent. The
commit is atomic: a crash before it leaves nothing of the batch, after it all of it; readers see whole
prompts only (MVCC snapshots).

Vectors are L2-normalised before they are stored, as float16 by default (``float32`` keeps full precision).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from ..errors import ConfigError, RindexError
from .environment import Environment
from .keys import SCHEMA_VERSION, is_namespace_digest, normalize_prompt, prompt_key
from .vector_index import MAX_VECTORS_PER_RECORD, vector_ids

CHUNK_BYTES = 2016  # two chunks (+ 8-byte keys, node headers) fill one 4 KiB leaf page; never an overflow page
DB_NAMES = ("meta", "prompts", "prompt_ids", "records", "vectors", "keys", "ns_records", "namespaces")
U64 = struct.Struct(">Q")

#: one prompt ready to write: (raw prompt, normalized prompt, [(generator, namespace, seeds, unit vectors)])
PreparedPrompt = tuple[str, str, list[tuple[str, str, list[int], np.ndarray]]]


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


# ------------------------------------------------------------------------------------------ validation
def _prepare_vectors(name: str, vectors) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ConfigError(f"generator {name!r}: vectors must be a non-empty (γ, d) array, got shape {x.shape}")
    if x.shape[0] > MAX_VECTORS_PER_RECORD:
        raise ConfigError(f"generator {name!r}: at most {MAX_VECTORS_PER_RECORD} candidates per prompt, got {x.shape[0]}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"generator {name!r}: vectors contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigError(f"generator {name!r}: a candidate vector is all zeros")
    return x / norms


def prepare_prompt(prompt: str, entries: Mapping[str, tuple[str, Sequence[int], np.ndarray]]) -> PreparedPrompt:
    """Validate one ``put`` entry and normalise its prompt and vectors (:class:`ConfigError` when invalid)."""
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
        if not is_namespace_digest(ns):
            raise ConfigError(f"generator {gen!r}: namespace must be a 64-char hex digest, got {ns!r}")
        x = _prepare_vectors(gen, vectors)
        seeds = [int(s) for s in seeds]
        if len(seeds) != x.shape[0]:
            raise ConfigError(f"generator {gen!r}: {len(seeds)} seeds for {x.shape[0]} vectors")
        prepared.append((gen, ns, seeds, x))
    return prompt, norm, prepared


def _append(txn, key: bytes, value: bytes, db) -> None:
    # MDB_APPEND keeps pages full; py-lmdb returns False (no exception) when the key is not the largest.
    if not txn.put(key, value, db=db, append=True):
        raise CacheCorruptError(f"append of key {key.hex()} out of order: id counters disagree with the data")


# ------------------------------------------------------------------------------------------ the store
class RecordStore:
    """Reads and writes of the cache's sub-databases (see the module docstring) in one environment."""

    def __init__(self, env: Environment, *, vector_dtype: str = "float16"):
        self.env = env
        self.db = env.dbs
        self.dt_bytes = 2 if vector_dtype == "float16" else 4

    def init_meta(self, path: str) -> None:
        """Writer: initialise ``meta`` of a new cache. Both: check the schema version."""
        def init(txn):
            meta = self.db["meta"]
            if txn.get(b"schema_version", db=meta) is None:
                txn.put(b"schema_version", msgpack.packb(SCHEMA_VERSION), db=meta)
                txn.put(b"next_record_id", U64.pack(1), db=meta)
                txn.put(b"next_prompt_id", U64.pack(1), db=meta)
                txn.put(b"vector_bytes", U64.pack(0), db=meta)
                txn.put(b"created", msgpack.packb(time.time()), db=meta)

        if not self.env.readonly:
            self.env.write(init)
        with self.env.read() as txn:
            raw = txn.get(b"schema_version", db=self.db["meta"])
        if raw is None or msgpack.unpackb(raw) != SCHEMA_VERSION:
            found = None if raw is None else msgpack.unpackb(raw)
            raise CacheCorruptError(f"cache {path} has schema version {found}, this code reads {SCHEMA_VERSION}")

    # -- the vector stream --------------------------------------------------------------------------------
    def _encode_vectors(self, vectors: np.ndarray) -> bytes:
        dt = "<f2" if self.dt_bytes == 2 else "<f4"
        return np.ascontiguousarray(vectors, dtype=dt).tobytes()

    def read_vectors(self, txn, rid: int, rec: dict) -> np.ndarray:
        """The (γ, d) float32 vectors of record ``rid`` (``rec`` its decoded record)."""
        n, d, dt, off = rec["n"], rec["d"], rec["dt"], rec["o"]
        nbytes = n * d * dt
        vdb = self.db["vectors"]
        c0, c1 = off // CHUNK_BYTES, (off + nbytes - 1) // CHUNK_BYTES
        start = off - c0 * CHUNK_BYTES
        if c0 == c1:
            raw = txn.get(U64.pack(c0), db=vdb)
        else:
            raw = b"".join([txn.get(U64.pack(c), db=vdb) for c in range(c0, c1 + 1)])
        if raw is None or len(raw) < start + nbytes:
            raise CacheCorruptError(f"record {rid}: vector bytes missing")
        return np.frombuffer(raw, dtype="<f2" if dt == 2 else "<f4", count=n * d, offset=start).reshape(n, d).astype(np.float32)

    def _append_stream(self, txn, end: int, blob: bytes) -> int:
        """Append ``blob`` to the vector byte stream ending at ``end``; return the new end."""
        vdb = self.db["vectors"]
        c, used = divmod(end, CHUNK_BYTES)
        pos = 0
        if used:  # top up the partial last chunk (rewritten in place, in this transaction)
            last = txn.get(U64.pack(c), db=vdb)
            if last is None or len(last) != used:
                raise CacheCorruptError(f"vector stream chunk {c} has {None if last is None else len(last)} bytes, expected {used}")
            pos = CHUNK_BYTES - used
            txn.put(U64.pack(c), last + blob[:pos], db=vdb)
            c += 1
        while pos < len(blob):
            _append(txn, U64.pack(c), blob[pos : pos + CHUNK_BYTES], vdb)
            pos += CHUNK_BYTES
            c += 1
        return end + len(blob)

    # -- writes --------------------------------------------------------------------------------------------
    def commit(self, batch: Sequence[PreparedPrompt]) -> set[str]:
        """Write whole prompts in one transaction (the commit point); returns the namespaces that got records."""
        touched: set[str] = set()

        def txn_fn(txn):
            db = self.db
            meta = db["meta"]
            next_rid = U64.unpack(txn.get(b"next_record_id", db=meta))[0]
            next_pid = U64.unpack(txn.get(b"next_prompt_id", db=meta))[0]
            stream_end = U64.unpack(txn.get(b"vector_bytes", db=meta))[0]
            now = time.time()
            ns_stats: dict[str, dict] = {}
            touched.clear()  # the transaction may run again after the map grew
            for raw_prompt, norm, prepared in batch:
                ph = hashlib.sha256(norm.encode("utf-8")).digest()
                pid_raw = txn.get(ph, db=db["prompt_ids"])
                if pid_raw is None:
                    pid = next_pid
                    next_pid += 1
                    txn.put(ph, U64.pack(pid), db=db["prompt_ids"])
                    _append(txn, U64.pack(pid), msgpack.packb({"p": norm, "r": raw_prompt, "t": now}), db["prompts"])
                else:
                    pid = U64.unpack(pid_raw)[0]
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
                    rk = U64.pack(rid)
                    rec = {"p": norm, "pid": pid, "g": gen, "ns": ns, "s": seeds, "n": x.shape[0],
                           "d": x.shape[1], "dt": self.dt_bytes, "o": stream_end, "t": now}
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
            txn.put(b"next_record_id", U64.pack(next_rid), db=meta)
            txn.put(b"next_prompt_id", U64.pack(next_pid), db=meta)
            txn.put(b"vector_bytes", U64.pack(stream_end), db=meta)

        self.env.write(txn_fn)
        return touched

    # -- reads ---------------------------------------------------------------------------------------------
    def has(self, txn, ns: str, norm: str) -> bool:
        return txn.get(prompt_key(ns, norm), db=self.db["keys"]) is not None

    def candidates(self, txn, ns: str, norm: str, gen: str) -> Candidates | None:
        """The candidates stored under exactly (``ns``, ``norm``), or None."""
        rk = txn.get(prompt_key(ns, norm), db=self.db["keys"])
        if rk is None:
            return None
        rid = U64.unpack(rk)[0]
        rec = msgpack.unpackb(txn.get(rk, db=self.db["records"]))
        return Candidates(self.read_vectors(txn, rid, rec), list(rec["s"]), rid, rec["p"], gen, ns)

    def record(self, txn, rid: int) -> dict:
        return msgpack.unpackb(txn.get(U64.pack(rid), db=self.db["records"]))

    def prompt_text(self, txn, pid: int) -> str | None:
        raw = txn.get(U64.pack(pid), db=self.db["prompts"])
        return None if raw is None else msgpack.unpackb(raw)["p"]

    def last_prompt_id(self, txn) -> int:
        return U64.unpack(txn.get(b"next_prompt_id", db=self.db["meta"]))[0] - 1

    def next_record_id(self, txn) -> int:
        return U64.unpack(txn.get(b"next_record_id", db=self.db["meta"]))[0]

    def ns_stats(self, txn, ns: str) -> dict | None:
        """The statistics of namespace ``ns`` (``d``, ``g``, ``r``, ``v``, ``last``), or None when it has none."""
        raw = txn.get(ns.encode(), db=self.db["namespaces"])
        return msgpack.unpackb(raw) if raw else None

    def all_ns_stats(self, txn) -> dict[str, dict]:
        return {k.decode(): msgpack.unpackb(v) for k, v in txn.cursor(db=self.db["namespaces"])}

    def scan_namespace(self, txn, ns: str, after: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS ids and vectors of all records of ``ns`` with id > ``after``."""
        prefix = bytes.fromhex(ns)
        cur = txn.cursor(db=self.db["ns_records"])
        records = self.db["records"]
        ids, vecs = [], []
        if cur.set_range(prefix + U64.pack(after + 1)):
            for key in cur.iternext(keys=True, values=False):
                if key[:32] != prefix:
                    break
                rk = key[32:]
                rid = U64.unpack(rk)[0]
                rec = msgpack.unpackb(txn.get(rk, db=records))
                x = self.read_vectors(txn, rid, rec)
                ids.append(vector_ids(rid, len(x)))
                vecs.append(x)
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
        return np.concatenate(ids), np.concatenate(vecs)

    def scan_prompts(self, txn, after: int) -> tuple[list[int], list[str]]:
        """Prompt ids and normalized texts of all prompts with id > ``after``."""
        pids, texts = [], []
        cur = txn.cursor(db=self.db["prompts"])
        if cur.set_range(U64.pack(after + 1)):
            for k, v in cur:
                pids.append(U64.unpack(k)[0])
                texts.append(msgpack.unpackb(v)["p"])
        return pids, texts

    def check(self) -> tuple[list[str], int, dict[str, int]]:
        """(problems, number of records, vectors per namespace): every record has its key and whole vectors,
        ids stay below the counter, and the namespaces' statistics agree with the records."""
        db = self.db
        problems: list[str] = []
        per_ns: dict[str, int] = {}
        n_rec = 0
        with self.env.read() as txn:
            next_rid = self.next_record_id(txn)
            for rk, raw in txn.cursor(db=db["records"]):
                rid = U64.unpack(rk)[0]
                rec = msgpack.unpackb(raw)
                n_rec += 1
                if rid >= next_rid:
                    problems.append(f"record {rid} >= next_record_id {next_rid}")
                if txn.get(prompt_key(rec["ns"], rec["p"]), db=db["keys"]) != rk:
                    problems.append(f"record {rid} has no key")
                x = self.read_vectors(txn, rid, rec)
                if x.shape != (rec["n"], rec["d"]) or len(rec["s"]) != rec["n"]:
                    problems.append(f"record {rid} malformed")
                per_ns[rec["ns"]] = per_ns.get(rec["ns"], 0) + rec["n"]
            if txn.stat(db["keys"])["entries"] != n_rec:
                problems.append("keys and records differ in number")
            for ns, st in self.all_ns_stats(txn).items():
                if per_ns.get(ns, 0) != st["v"]:
                    problems.append(f"namespace {ns[:12]} counts {st['v']} vectors, records hold {per_ns.get(ns, 0)}")
        return problems, n_rec, per_ns


__all__ = ["CHUNK_BYTES", "DB_NAMES", "CacheCorruptError", "Candidates", "RecordStore", "prepare_prompt"]
