import json
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

import _cache_workers as W
from resynth_index.store.cache import (
    DEFAULT_NEAR_THRESHOLD,
    CacheLockedError,
    CandidateCache,
)
from resynth_index.errors import ConfigError, RindexError
from resynth_index.store.keys import namespace_digest
from resynth_index.store.vector_index import IndexPolicy


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


NS = W.namespaces()


class FakeEmbedder:
    """Prompt embedder with chosen similarities: vectors are looked up in a table (unknown texts: random)."""

    id = "fake:test"
    dim = 8

    def __init__(self, table):
        self.table = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in table.items()}

    def embed(self, texts):
        out = []
        for t in texts:
            v = self.table.get(t)
            if v is None:
                v = np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim).astype(np.float32)
                v[0] = -10.0  # far from every table vector
                v /= np.linalg.norm(v)
            out.append(v)
        return np.stack(out)


def at_cosine(c):
    """An 8-d unit vector with cosine c to e0."""
    return [c, float(np.sqrt(max(0.0, 1 - c * c)))] + [0.0] * 6


@pytest.fixture(scope="module")
def minilm():
    from resynth_index.models.prompt_embedders import load_prompt_embedder

    return load_prompt_embedder("minilm")


def test_put_lookup_persist_across_reopen(tmp_path):
    with CandidateCache(tmp_path / "c") as c:
        c.put("A photo of a cat .", W.entries(1))
        c.put("a dog", W.entries(2))
        assert c.contains("a photo of a cat", NS)
    with CandidateCache(tmp_path / "c") as c:
        r = c.lookup("  a PHOTO of a cat", NS)
        assert r.status == "hit" and r.similarity == 1.0 and r.matched_prompt == "a photo of a cat"
        assert r.missing == [] and set(r.candidates) == set(W.GENERATORS)
        for g in W.GENERATORS:
            cand = r.candidates[g]
            assert cand.vectors.dtype == np.float32 and cand.vectors.shape == (W.GAMMA, W.DIM)
            np.testing.assert_allclose(cand.vectors, W.vectors(1, g), atol=2e-3)  # float16 storage
            assert cand.seeds == list(range(100, 104))
        # knn after reopen: the index was persisted and reloaded, scores are dot products with the vectors
        q = r.candidates["gen-b"].vectors[2]
        nb = c.knn("gen-b", NS["gen-b"], q[None], k=3)[0]
        assert nb[0].record_id == r.candidates["gen-b"].record_id and nb[0].seed == 102 and nb[0].position == 2
        assert nb[0].prompt == "a photo of a cat" and abs(nb[0].score - float(np.linalg.norm(q))) < 1e-5  # knn normalises queries
        assert len(nb) == 3 and nb[0].score >= nb[1].score >= nb[2].score
        info = c.info()
        assert info["prompts"] == 2 and info["vectors"] == 2 * 3 * W.GAMMA
        assert info["vectors_per_generator"] == {g: 2 * W.GAMMA for g in W.GENERATORS}
        assert info["disk_bytes"] > 0 and info["near_threshold"] == DEFAULT_NEAR_THRESHOLD
        assert all(ns["index"]["type"] == "IDMap2,Flat" for ns in info["namespaces"].values())
        json.dumps(info)
        assert c.verify()["records"] == 6


def test_float32_storage_is_exact(tmp_path):
    with CandidateCache(tmp_path / "c", vector_dtype="float32") as c:
        c.put("x", W.entries(5))
        r = c.lookup("x", NS)
        np.testing.assert_allclose(r.candidates["gen-a"].vectors, W.vectors(5, "gen-a"), atol=1e-6)


def test_namespace_isolation(tmp_path):
    with CandidateCache(tmp_path / "c") as c:
        c.put("a cat", W.entries(1))
        other = {g: namespace_digest({"generator": g, "steps": 11, "seeds": list(range(W.GAMMA))}) for g in W.GENERATORS}
        r = c.lookup("a cat", other)
        assert r.status == "miss" and r.candidates == {} and sorted(r.missing) == sorted(W.GENERATORS)
        assert not c.contains("a cat", other)
        # one generator's settings changed: only that one is missing, the rest are returned as partial
        mixed = {**NS, "gen-c": other["gen-c"]}
        r = c.lookup("a cat", mixed)
        assert r.status == "miss" and r.missing == ["gen-c"] and set(r.candidates) == {"gen-a", "gen-b"}
        # the new namespace's vectors are separate; the old are untouched
        e = W.entries(9)
        c.put("a cat", {"gen-c": (other["gen-c"], e["gen-c"][1], e["gen-c"][2])})
        assert c.lookup("a cat", mixed).status == "hit"
        np.testing.assert_allclose(c.lookup("a cat", NS).candidates["gen-c"].vectors, W.vectors(1, "gen-c"), atol=2e-3)
        np.testing.assert_allclose(c.lookup("a cat", mixed).candidates["gen-c"].vectors, W.vectors(9, "gen-c"), atol=2e-3)
        assert c.knn("gen-c", other["gen-c"], W.vectors(9, "gen-c")[:1], 50)[0].__len__() == W.GAMMA


def test_put_is_idempotent_and_validates(tmp_path):
    with CandidateCache(tmp_path / "c") as c:
        c.put("a cat", W.entries(1))
        c.put("A cat.", W.entries(2))  # same key: first write wins (a key names deterministic vectors)
        np.testing.assert_allclose(c.lookup("a cat", NS).candidates["gen-a"].vectors, W.vectors(1, "gen-a"), atol=2e-3)
        assert c.info()["records"] == 3
        ns = NS["gen-a"]
        with pytest.raises(ConfigError):
            c.put("y", {"gen-a": (ns, [0, 1], W.vectors(1, "gen-a"))})  # seeds/vectors mismatch
        with pytest.raises(ConfigError):
            c.put("y", {"gen-a": (ns, [0, 1, 2, 3], np.zeros((4, W.DIM)))})
        with pytest.raises(ConfigError):
            c.put("y", {"gen-a": (ns, [0, 1, 2, 3], np.ones((4, 16)))})  # dimension differs from the namespace
        with pytest.raises(ConfigError):
            c.put("y", {"gen-a": ("nothex", [0], np.ones((1, W.DIM)))})
        with pytest.raises(ConfigError):
            c.put("   ", W.entries(3))
        assert c.verify()["records"] == 3  # failed puts left nothing behind


def test_put_many_and_unnormalised_input(tmp_path):
    with CandidateCache(tmp_path / "c") as c:
        c.put_many(((W.prompt_text(i), W.entries(i)) for i in range(40)), batch_prompts=16)
        e = W.entries(100)
        e = {g: (ns, s, 3.0 * v) for g, (ns, s, v) in e.items()}
        c.put("scaled", e)
        v = c.lookup("scaled", NS).candidates["gen-a"].vectors
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=2e-3)
        assert c.info()["prompts"] == 41 and c.verify()["vectors"] == 41 * 3 * W.GAMMA


def test_second_writer_is_refused_readers_are_not(tmp_path):
    with CandidateCache(tmp_path / "c") as c:
        c.put("a cat", W.entries(1))
        with pytest.raises(CacheLockedError):
            CandidateCache(tmp_path / "c")
        with pytest.raises(CacheLockedError):
            CandidateCache(tmp_path / "c", lock_timeout=0.2)
        with pytest.raises(RindexError):
            CandidateCache(tmp_path / "c", readonly=True).put("b", W.entries(2))
        with CandidateCache(tmp_path / "c", readonly=True) as r:
            assert r.lookup("a cat", NS).status == "hit"
    with CandidateCache(tmp_path / "c") as c:  # the lock is released at close
        assert c.lookup("a cat", NS).status == "hit"
    with pytest.raises(RindexError):
        CandidateCache(tmp_path / "missing", readonly=True)


def test_near_duplicate_both_sides_of_threshold(tmp_path):
    table = {"stored prompt": at_cosine(1.0), "just above": at_cosine(0.951), "just below": at_cosine(0.949),
             "incomplete twin": at_cosine(0.99)}
    emb = FakeEmbedder(table)
    with CandidateCache(tmp_path / "c", prompt_embedder=emb, near_threshold=0.95) as c:
        c.put("stored prompt", W.entries(1))
        r = c.lookup("just above", NS)
        assert r.status == "near" and r.matched_prompt == "stored prompt" and r.normalized_prompt == "just above"
        assert abs(r.similarity - 0.951) < 1e-4 and r.missing == [] and set(r.candidates) == set(W.GENERATORS)
        np.testing.assert_allclose(r.candidates["gen-a"].vectors, W.vectors(1, "gen-a"), atol=2e-3)
        r = c.lookup("just below", NS)
        assert r.status == "miss" and r.candidates == {} and r.matched_prompt is None
        assert r.nearest_prompt == "stored prompt" and abs(r.nearest_similarity - 0.949) < 1e-4
        # a similar prompt that is not complete for every generator is not reused
        c.put("incomplete twin", {"gen-a": W.entries(2)["gen-a"]})
        r = c.lookup("just above", NS)
        assert r.status == "near" and r.matched_prompt == "stored prompt"
        # the exact key wins when complete; partial exact + complete near -> near
        r = c.lookup("incomplete twin", NS)
        assert r.status == "near" and r.matched_prompt == "stored prompt" and abs(r.similarity - 0.99) < 1e-4
    # reopen: the prompt index is persisted and caught up, a reader sees the same
    with CandidateCache(tmp_path / "c", prompt_embedder=emb, near_threshold=0.95, readonly=True) as c:
        assert c.lookup("just above", NS).status == "near"
        assert c.lookup("just below", NS).status == "miss"
    with CandidateCache(tmp_path / "c", prompt_embedder=emb, near_threshold=0.948, readonly=True) as c:
        assert c.lookup("just below", NS).status == "near"


def test_near_duplicate_with_minilm(tmp_path, minilm):
    with CandidateCache(tmp_path / "c", prompt_embedder=minilm) as c:
        c.put("a photo of a cat sitting on a mat", W.entries(1))
        c.put("a red sports car parked on a city street", W.entries(2))
        r = c.lookup("a photograph of a cat sitting on a mat", NS)
        assert r.status == "near" and r.matched_prompt == "a photo of a cat sitting on a mat"
        assert DEFAULT_NEAR_THRESHOLD <= r.similarity < 1.0
        r = c.lookup("a photo of a dog sitting on a mat", NS)
        assert r.status == "miss" and r.nearest_prompt == "a photo of a cat sitting on a mat"
        assert r.nearest_similarity < DEFAULT_NEAR_THRESHOLD
        assert c.lookup("a blue sports car parked on a city street", NS).status == "miss"
        assert c.info()["prompt_embedder"] == minilm.id


def test_map_grows_past_initial_size(tmp_path):
    with CandidateCache(tmp_path / "c", map_size=1 << 20, vector_dtype="float32") as c:
        c.put_many(((W.prompt_text(i), W.entries(i)) for i in range(800)), batch_prompts=100)
        for i in range(800, 900):
            c.put(W.prompt_text(i), W.entries(i))
        info = c.info()
        assert info["lmdb_map_size"] > 1 << 20 and info["lmdb_used_bytes"] > 1 << 20
    with CandidateCache(tmp_path / "c", map_size=1 << 20, readonly=True) as c:
        for i in (0, 450, 899):
            assert c.lookup(W.prompt_text(i), NS).status == "hit"
        assert c.verify()["records"] == 900 * 3


def test_approximate_index_beyond_exact_size(tmp_path):
    policy = IndexPolicy(exact_max=3000)
    rng = np.random.default_rng(0)
    ns = namespace_digest({"g": "big"})
    centres = unit(rng, 60, 64)
    with CandidateCache(tmp_path / "c", index_policy=policy, vector_dtype="float32") as c:
        items = []
        for i in range(1000):
            x = centres[i % 60] + 0.3 * unit(rng, 4, 64)
            items.append((f"p{i}", {"big": (ns, [0, 1, 2, 3], x)}))
        c.put_many(items[:600])
        assert c.info()["namespaces"][ns]["index"]["type"] == "IDMap2,Flat"  # 2,400 vectors: exact
        c.put_many(items[600:])
        ix = c.info()["namespaces"][ns]["index"]
        assert ix["type"].startswith("IDMap2,IVF") and not ix["exact"]
        assert ix["ntotal"] == 4000 and ix["measured_recall_at_10"] >= 0.9
        v = c.lookup("p123", {"big": ns}).candidates["big"]
        nb = c.knn("big", ns, v.vectors, k=10)
        assert all(row[0].record_id == v.record_id for row in nb)
    with CandidateCache(tmp_path / "c", index_policy=policy, readonly=True) as c:
        nb = c.knn("big", ns, v.vectors[:1], k=10)
        assert nb[0][0].record_id == v.record_id
        assert c.info()["namespaces"][ns]["index"]["type"].startswith("IDMap2,IVF")


def test_corrupt_or_missing_snapshot_is_rebuilt(tmp_path):
    path = tmp_path / "c"
    with CandidateCache(path) as c:
        for i in range(5):
            c.put(W.prompt_text(i), W.entries(i))
    snaps = [os.path.join(dp, f) for dp, _, fs in os.walk(path / "faiss") for f in fs if f.endswith(".faiss")]
    assert len(snaps) == 3
    with open(snaps[0], "wb") as fh:
        fh.write(b"garbage")
    os.unlink(snaps[1])
    with CandidateCache(path, readonly=True) as c:
        assert c.verify()["vectors"] == 5 * 3 * W.GAMMA
        for g in W.GENERATORS:
            assert c.knn(g, NS[g], W.vectors(3, g)[:1], 1)[0][0].prompt == W.prompt_text(3)


def _reader_sees_only_whole_prompts(path: str, n: int, ready_file: str, stop_file: str, out_file: str) -> None:
    """Runs in another process: poll lookups/knn while the writer writes."""
    from resynth_index.store.cache import CandidateCache

    seen_hits, polls, partial = set(), 0, []
    with CandidateCache(path, readonly=True) as c:
        open(ready_file, "w").close()
        done = False
        while not done:
            done = os.path.exists(stop_file)
            c.refresh()
            for i in range(0, n, 7):
                r = c.lookup(W.prompt_text(i), NS)
                if r.status == "hit":
                    seen_hits.add(i)
                    for g in W.GENERATORS:
                        if not np.allclose(r.candidates[g].vectors, W.vectors(i, g), atol=2e-3):
                            partial.append(f"wrong vectors {i} {g}")
                elif r.candidates:
                    partial.append(f"partial prompt {i}: {sorted(r.candidates)}")
                elif i in seen_hits:
                    partial.append(f"prompt {i} disappeared")
            nb = c.knn("gen-a", NS["gen-a"], W.vectors(0, "gen-a")[:1], 4)
            if nb[0][0].prompt != W.prompt_text(0):
                partial.append("knn disagrees")
            polls += 1
        map_size = c.info()["lmdb_map_size"]
    with open(out_file, "w") as fh:
        json.dump({"hits": len(seen_hits), "polls": polls, "problems": partial[:20], "map_size": map_size}, fh)


def test_reader_in_other_process_sees_only_committed_prompts(tmp_path):
    path, n = str(tmp_path / "c"), 1500
    with CandidateCache(path, map_size=1 << 20) as c:
        c.put(W.prompt_text(0), W.entries(0))
    ctx = mp.get_context("spawn")
    ready, stop, out = str(tmp_path / "ready"), str(tmp_path / "stop"), str(tmp_path / "out.json")
    reader = ctx.Process(target=_reader_sees_only_whole_prompts, args=(path, n, ready, stop, out))
    reader.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.02)
    # the writer (this process) starts at 1 MiB, so the map grows while the reader is reading
    t0 = time.monotonic()
    W.writer_loop(path, str(tmp_path / "side"), 1, n, persist_every=300, map_size=1 << 20)
    writing = time.monotonic() - t0
    time.sleep(0.3)
    open(stop, "w").close()
    reader.join(120)
    assert reader.exitcode == 0
    res = json.load(open(out))
    assert res["problems"] == []
    assert res["hits"] == len(range(0, n, 7)) and res["polls"] >= 3, (res, writing)
    assert res["map_size"] > 1 << 20  # the reader adopted the grown map
