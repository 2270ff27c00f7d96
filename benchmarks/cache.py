#!/usr/bin/env python
"""Benchmark of the candidate cache (resynth_index.store.cache) on this machine.

Prints one table:
  * exact-hit lookups per second (3 generators x γ=4 x 512-d per prompt, float16 storage);
  * insert throughput: single ``put()`` (one fsync'ed commit per prompt) and batched ``put_many()``
    (including the FAISS catch-up and the index rebuilds it triggers);
  * batched per-generator kNN (k=10) over N cached 512-d vectors (default 10^6) in one namespace, with
    recall@10 against exact flat search on a query sample, for *clustered* data (candidates cluster by prompt
    and topic, as real candidate embeddings do) and for the *uniform random* worst case; the index is the one
    the cache chooses by size (see resynth_index.store.vector_index), built from LMDB, build time reported;
  * bytes on disk per cached vector (LMDB records + vectors + FAISS snapshot).

    python benchmarks/cache.py              # full run (~6-9 minutes, < 12 GiB)
    python benchmarks/cache.py --n 200000   # smaller
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import resynth_index  # noqa: E402,F401
from resynth_index.store.cache import CandidateCache  # noqa: E402
from resynth_index.store.keys import namespace_digest  # noqa: E402
from resynth_index.store.vector_index import IndexPolicy, VectorIndex, exact_topk, recall_at_k  # noqa: E402

TARGET_LOOKUPS = 20_000
TARGET_QPS = 1_000
TARGET_RECALL = 0.95


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class Clustered:
    """Topics -> prompts -> γ candidates: candidate = unit(prompt centre + noise), centre = topic + noise."""

    def __init__(self, n_prompts: int, d: int, gamma: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.gamma, self.d = gamma, d
        n_topics = max(1, n_prompts // 50)
        topics = rng.standard_normal((n_topics, d), dtype=np.float32)
        self.centres = np.empty((n_prompts, d), np.float32)
        for s in range(0, n_prompts, 50_000):
            e = min(n_prompts, s + 50_000)
            self.centres[s:e] = topics[rng.integers(0, n_topics, e - s)] + 0.8 * rng.standard_normal((e - s, d), dtype=np.float32)
        self.rng = rng

    def candidates(self, p0: int, p1: int) -> np.ndarray:
        c = np.repeat(self.centres[p0:p1], self.gamma, axis=0)
        c += 0.5 * self.rng.standard_normal(c.shape, dtype=np.float32)
        return unit(c)

    def queries(self, nq: int) -> np.ndarray:
        """Fresh candidates (not stored) of stored prompts: what a query image of a cached prompt looks like."""
        p = self.rng.integers(0, len(self.centres), nq)
        return unit(self.centres[p] + 0.5 * self.rng.standard_normal((nq, self.d), dtype=np.float32))


def bench_lookups(tmp: str, d: int, seconds: float = 3.0) -> tuple[float, float]:
    gens = ["sd15", "sdxl", "flux"]
    ns = {g: namespace_digest({"generator": g, "steps": 30}) for g in gens}
    rng = np.random.default_rng(1)
    n_prompts = 2000
    with CandidateCache(os.path.join(tmp, "lookup")) as c:
        t = time.perf_counter()
        for i in range(200):
            c.put(f"a prompt number {i}", {g: (ns[g], [0, 1, 2, 3], unit(rng.standard_normal((4, d), dtype=np.float32))) for g in gens})
        single_put = 200 / (time.perf_counter() - t)
        c.put_many(((f"a prompt number {i}", {g: (ns[g], [0, 1, 2, 3], unit(rng.standard_normal((4, d), dtype=np.float32))) for g in gens})
                    for i in range(200, n_prompts)))
        prompts = [f"a prompt number {i}" for i in rng.integers(0, n_prompts, 50_000)]
        for p in prompts[:1000]:
            c.lookup(p, ns)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            for p in prompts[n % 40_000 : n % 40_000 + 1000]:
                r = c.lookup(p, ns)
            n += 1000
        assert r.status == "hit"
        return n / (time.perf_counter() - t), single_put


def bench_knn_cache(tmp: str, n: int, d: int, gamma: int, nq: int) -> dict:
    n_prompts = n // gamma
    data = Clustered(n_prompts, d, gamma)
    ns = namespace_digest({"generator": "bench", "d": d})
    path = os.path.join(tmp, "knn")
    x = np.empty((n_prompts * gamma, d), np.float32)
    t_insert = time.perf_counter()
    with CandidateCache(path, faiss_threads=os.cpu_count(), index_persist_every=10**9) as c:
        step = 2048
        for p0 in range(0, n_prompts, step):
            p1 = min(n_prompts, p0 + step)
            v = data.candidates(p0, p1)
            x[p0 * gamma : p1 * gamma] = v
            c.put_many(((f"bench prompt {p}", {"bench": (ns, list(range(gamma)), v[(p - p0) * gamma : (p - p0 + 1) * gamma])})
                        for p in range(p0, p1)), batch_prompts=512)
        t_insert = time.perf_counter() - t_insert
        t = time.perf_counter()
    # the writer snapshotted the index at close; drop it and time the rebuild from LMDB on reopen
    t_close = time.perf_counter() - t
    shutil.rmtree(os.path.join(path, "faiss"))
    t = time.perf_counter()
    with CandidateCache(path, faiss_threads=os.cpu_count()) as c:
        t_rebuild = time.perf_counter() - t
        info = c.info()
        idx = c._indexes.loaded_namespace_index(ns)
        xs = x.astype(np.float16).astype(np.float32)  # the cache stores float16: exact search over the same
        unit(xs)
        q = data.queries(nq)
        t = time.perf_counter()
        truth_pos = exact_topk(xs, q, 10)
        t_exact = time.perf_counter() - t
        rid = np.arange(1, n_prompts + 1, dtype=np.int64)
        truth = ((np.repeat(rid, gamma) << 12) + np.tile(np.arange(gamma), n_prompts))[truth_pos]
        idx.search(q[:50], 10)
        t = time.perf_counter()
        _, found = idx.search(q, 10)
        t_raw = time.perf_counter() - t
        t = time.perf_counter()
        nb = c.knn("bench", ns, q, 10)
        t_knn = time.perf_counter() - t
        rec = recall_at_k(found, truth)
        assert len(nb) == nq
        ix = info["namespaces"][ns]["index"]
    disk = info["disk_bytes"]
    with CandidateCache(path, readonly=True) as c:
        info2 = c.info()
    return {
        "n": n_prompts * gamma, "insert_s": t_insert, "insert_vps": n_prompts * gamma / t_insert,
        "insert_pps": n_prompts / t_insert, "rebuild_s": t_rebuild, "close_s": t_close,
        "exact_qps": nq / t_exact, "raw_qps": nq / t_raw, "knn_qps": nq / t_knn, "recall": rec,
        "index": ix, "bytes_per_vector": info2["bytes_per_vector"], "lmdb_bytes": info2["disk_bytes_lmdb"],
        "faiss_bytes": info2["disk_bytes_faiss"], "disk": disk,
    }


def bench_uniform(n: int, d: int, nq: int) -> dict:
    rng = np.random.default_rng(7)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        x[s : s + 100_000] = unit(rng.standard_normal((min(n, s + 100_000) - s, d), dtype=np.float32))
    ids = np.arange(n, dtype=np.int64)
    idx = VectorIndex(d, IndexPolicy())
    t = time.perf_counter()
    idx.rebuild(ids, x, n)
    t_build = time.perf_counter() - t
    q = unit(rng.standard_normal((nq, d), dtype=np.float32))
    truth = exact_topk(x, q, 10)
    idx.search(q[:50], 10)
    t = time.perf_counter()
    _, found = idx.search(q, 10)
    t_raw = time.perf_counter() - t
    return {"n": n, "build_s": t_build, "raw_qps": nq / t_raw, "recall": recall_at_k(found, truth), "index": idx.info}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="cached vectors for the kNN figures")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--skip-uniform", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="rindex-bench-", dir=args.dir)
    t0 = time.perf_counter()
    try:
        lookups, single_put = bench_lookups(tmp, args.dim)
        print(f"[lookups done, {time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
        k = bench_knn_cache(tmp, args.n, args.dim, args.gamma, args.queries)
        print(f"[clustered kNN done, {time.perf_counter() - t0:.0f}s]", file=sys.stderr, flush=True)
        u = None if args.skip_uniform else bench_uniform(args.n, args.dim, args.queries)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ok = lambda b: "MET" if b else "NOT MET"  # noqa: E731
    ix = k["index"]
    rows = [
        ("exact-hit lookups/s (3 gen x 4 x 512-d)", f"{lookups:,.0f}", f">= {TARGET_LOOKUPS:,}: {ok(lookups >= TARGET_LOOKUPS)}"),
        ("put() prompts/s (3 gen, 1 fsync'ed txn each)", f"{single_put:,.0f}", ""),
        (f"put_many() insert, clustered, {k['n']:,} vectors", f"{k['insert_vps']:,.0f} vec/s",
         f"{k['insert_pps']:,.0f} prompts/s; {k['insert_s']:.0f}s incl. index upkeep"),
        ("index rebuild from LMDB on open", f"{k['rebuild_s']:.1f} s", f"{ix['type']}, nprobe={ix['nprobe']}, k_factor={ix['k_factor']}"),
        (f"kNN k=10 clustered, {k['n']:,} x {args.dim}-d, raw index q/s", f"{k['raw_qps']:,.0f}",
         f">= {TARGET_QPS:,}: {ok(k['raw_qps'] >= TARGET_QPS)}"),
        ("kNN k=10 clustered, cache.knn() q/s (with Neighbours)", f"{k['knn_qps']:,.0f}", f">= {TARGET_QPS:,}: {ok(k['knn_qps'] >= TARGET_QPS)}"),
        ("  recall@10 vs exact flat (clustered)", f"{k['recall']:.3f}",
         f">= {TARGET_RECALL}: {ok(k['recall'] >= TARGET_RECALL)} (tuned on build: {ix['measured_recall_at_10']})"),
        ("  exact flat search q/s (for comparison)", f"{k['exact_qps']:,.0f}", ""),
    ]
    if u is not None:
        ui = u["index"]
        rows += [
            ("kNN k=10 uniform random (worst case), raw q/s", f"{u['raw_qps']:,.0f}",
             f"{ui['type']}, nprobe={ui['nprobe']}, k_factor={ui['k_factor']}, build {u['build_s']:.0f}s"),
            ("  recall@10 vs exact flat (uniform)", f"{u['recall']:.3f}", f">= {TARGET_RECALL}: {ok(u['recall'] >= TARGET_RECALL)}"),
        ]
    rows += [
        ("bytes on disk per cached vector (total)", f"{k['bytes_per_vector']:,.0f}",
         f"LMDB {k['lmdb_bytes'] / k['n']:,.0f} (float16 {args.dim}-d = {2 * args.dim:,} raw) + FAISS {k['faiss_bytes'] / k['n']:,.0f}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"resynth-index cache benchmark: {os.cpu_count()} cores, faiss threads = all, data: clustered candidates "
          f"(topics -> prompts -> {args.gamma} candidates each; queries are fresh candidates of cached prompts) "
          f"and uniform random unit vectors")
    print(f"{'measure':<{w0}}  {'value':>{w1}}  target / notes")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")
    print(f"total benchmark time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
