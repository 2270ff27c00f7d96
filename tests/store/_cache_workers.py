"""Writer processes for the cache's crash and cross-process tests (run in a forkserver child)."""

from __future__ import annotations

import os

import numpy as np

GENERATORS = ("gen-a", "gen-b", "gen-c")
DIM = 32
GAMMA = 4


def namespaces() -> dict[str, str]:
    from resynth_index.store.keys import namespace_digest

    return {g: namespace_digest({"generator": g, "steps": 10, "seeds": list(range(GAMMA))}) for g in GENERATORS}


def prompt_text(i: int) -> str:
    return f"test prompt number {i} with some words"


def vectors(i: int, generator: str) -> np.ndarray:
    rng = np.random.default_rng([i, GENERATORS.index(generator)])
    x = rng.standard_normal((GAMMA, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def entries(i: int) -> dict:
    ns = namespaces()
    return {g: (ns[g], list(range(100 * i, 100 * i + GAMMA)), vectors(i, g)) for g in GENERATORS}


def writer_loop(path: str, side_file: str, start: int, stop: int, persist_every: int, map_size: int,
                ready_file: str | None = None) -> None:
    """Put prompts start..stop-1 one by one; append each index to side_file (fsync'ed) after put() returns."""
    from resynth_index.store.cache import CandidateCache

    cache = CandidateCache(path, map_size=map_size, index_persist_every=persist_every, faiss_threads=1)
    if ready_file:
        with open(ready_file, "w") as fh:
            fh.write("ready")
    fd = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(start, stop):
            cache.put(prompt_text(i), entries(i))
            os.write(fd, f"{i}\n".encode())
            os.fsync(fd)
    finally:
        os.close(fd)
        cache.close()
