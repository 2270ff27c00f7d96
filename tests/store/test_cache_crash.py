"""SIGKILL a writer at random points, many times, on one cache directory; every reopen must be consistent."""

import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest

import _cache_workers as W
from resynth_index.store.cache import CandidateCache

KILLS = 24


@pytest.fixture(scope="module")
def forkserver():
    # Writers start from a forkserver that has the package imported (no LMDB environment is ever open in it),
    # so each of the many writers starts in milliseconds instead of re-importing torch.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["resynth_index.store.cache", "_cache_workers"])
    return ctx


def recorded(side_file: str) -> list[int]:
    if not os.path.exists(side_file):
        return []
    with open(side_file) as fh:
        return [int(line) for line in fh.read().split("\n") if line.strip()]  # a torn last line cannot parse: skip


def check_consistent(path: str, committed: list[int], readonly: bool) -> int:
    if not committed:
        readonly = False  # killed before anything was committed, perhaps before the cache was initialised
    with CandidateCache(path, readonly=readonly) as c:
        counts = c.verify()  # keys, records, vectors, namespace counts and every FAISS index agree
        horizon = max(committed, default=-1) + 40
        present = 0
        for i in range(horizon):
            r = c.lookup(W.prompt_text(i), W.namespaces())
            if r.status == "hit":
                present += 1
                for g in W.GENERATORS:
                    np.testing.assert_allclose(r.candidates[g].vectors, W.vectors(i, g), atol=2e-3)
                    assert r.candidates[g].seeds == list(range(100 * i, 100 * i + W.GAMMA))
            else:
                assert r.candidates == {}, f"prompt {i} is visible half-written: {sorted(r.candidates)}"
                assert i not in committed, f"committed prompt {i} is missing"
        assert counts["records"] == 3 * present  # nothing outside the prompts we know
        for i in random.Random(len(committed)).sample(committed, min(10, len(committed))):
            for g in W.GENERATORS:
                rid = c.lookup(W.prompt_text(i), W.namespaces()).candidates[g].record_id
                top = c.knn(g, W.namespaces()[g], W.vectors(i, g), 1)
                assert all(row[0].record_id == rid for row in top), "index disagrees with the records"
        return present


def test_sigkill_writer_repeatedly(tmp_path, forkserver):
    path, side = str(tmp_path / "cache"), str(tmp_path / "committed.txt")
    rng = random.Random(1234)
    kills, t_start = 0, time.monotonic()
    for round_ in range(KILLS):
        start = len(recorded(side))
        ready = str(tmp_path / f"ready{round_}")
        proc = forkserver.Process(
            target=W.writer_loop,
            args=(path, side, start, start + 100_000, rng.choice([1, 7, 50]), 1 << 20, ready),
        )
        proc.start()
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 0.05))  # sometimes during open: catch-up, snapshot, meta init
        else:
            while not os.path.exists(ready) and proc.is_alive():
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL, "the writer ended before it was killed"
        kills += 1
        committed = recorded(side)
        present = check_consistent(path, committed, readonly=(round_ % 4 != 3))
        assert present >= len(set(committed))
    assert kills >= 20
    committed = recorded(side)
    assert len(committed) > 40, "the writers committed too little for the test to mean much"
    # a final clean writer reopens, flushes snapshots, and a reader agrees
    check_consistent(path, committed, readonly=False)
    check_consistent(path, committed, readonly=True)
    assert time.monotonic() - t_start < 90
