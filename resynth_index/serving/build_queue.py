"""The build queue: serving processes append the prompts they missed; the one builder builds them.

With ``serve.miss_policy = "queue"`` serving processes open the index read-only and never generate. A miss's
prompt is appended to ``INDEX/build-queue.jsonl`` (appends under an flock on ``INDEX/build-queue.lock``). The
builder, ``rindex serve --builder`` (:func:`run_builder`), holds the cache's writer lock, claims the queue by
renaming it to ``build-queue.<ns>.work``, builds those prompts (each batch commits atomically) and deletes the
claim; claims a crashed builder left behind are built by the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RindexError

if TYPE_CHECKING:
    from ..config import Config

QUEUE_FILE = "build-queue.jsonl"
QUEUE_LOCK = "build-queue.lock"
PENDING_SAMPLE_BYTES = 1 << 20


class QueueFull(RindexError):
    """The build queue file reached its size limit (``serve.max_queue_bytes``)."""


class BuildQueue:
    """The prompts serving processes want built: an append-only JSONL spool inside the index directory."""

    def __init__(self, index_dir: str | os.PathLike, *, max_bytes: int | None = None):
        self.dir = Path(index_dir)
        self.max_bytes = max_bytes  # past it, put() refuses (QueueFull): the builder is not keeping up
        self.path = self.dir / QUEUE_FILE
        self._lock_path = self.dir / QUEUE_LOCK

    def _locked(self):
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @staticmethod
    def _unlock(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def put(self, prompts: list[str]) -> None:
        """Append ``prompts``; :class:`QueueFull` when the file would pass ``max_bytes``, ``OSError`` when the
        disk refuses (full, read-only)."""
        if not prompts:
            return
        lines = "".join(json.dumps({"prompt": p, "t": round(time.time(), 3)}, ensure_ascii=False) + "\n" for p in prompts)
        fd = self._locked()
        try:
            if self.max_bytes is not None:
                size = self.path.stat().st_size if self.path.exists() else 0
                if size + len(lines.encode()) > self.max_bytes:
                    raise QueueFull(f"build queue {self.path} is full ({size:,} bytes, limit {self.max_bytes:,}); "
                                    "is the builder running?")
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(lines)
        finally:
            self._unlock(fd)

    def claims(self) -> list[Path]:
        return sorted(self.dir.glob("build-queue.*.work"))

    def claim(self) -> list[tuple[Path, list[str]]]:
        """Move the queue aside (one claim file) and return every claim with its prompts, oldest first.

        Only the builder calls this, and it holds the cache's writer lock, so any other claim file is one a
        crashed builder left behind.
        """
        fd = self._locked()
        try:
            if self.path.exists() and self.path.stat().st_size > 0:
                os.replace(self.path, self.dir / f"build-queue.{time.time_ns():020d}.work")
        finally:
            self._unlock(fd)
        out = []
        for claim in self.claims():
            prompts = []
            for line in claim.read_text(encoding="utf-8").splitlines():
                try:
                    prompts.append(json.loads(line)["prompt"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of a crashed writer
            out.append((claim, prompts))
        return out

    @staticmethod
    def done(claim: Path) -> None:
        claim.unlink(missing_ok=True)

    def pending(self) -> int:
        """Prompts queued or claimed but not yet built (lines, duplicates included): counted in the first
        :data:`PENDING_SAMPLE_BYTES` of each file and extrapolated by size beyond, so that a metrics scrape
        never reads a large queue whole."""
        n = 0
        for p in [self.path, *self.claims()]:
            try:
                with open(p, "rb") as fh:
                    head = fh.read(PENDING_SAMPLE_BYTES)
                    size = os.fstat(fh.fileno()).st_size
            except FileNotFoundError:
                continue
            lines = head.count(b"\n")
            n += lines if size <= len(head) or not lines else round(lines * size / len(head))
        return n


def run_builder(
    config: str | os.PathLike | Mapping[str, Any] | Config | None = None,
    *,
    index: str | os.PathLike | None = None,
    device: str | None = None,
    once: bool = False,
    interval: float = 2.0,
    flush_every: float = 60.0,
    echo: Callable[[str], None] = lambda s: None,
    stop: threading.Event | None = None,
) -> int:
    """The one writer: build the prompts serving processes queued. Returns the number of prompts built.

    ``once``: drain the queue until it is empty, then return; otherwise poll every ``interval`` seconds until
    ``stop`` is set (or the process is interrupted). FAISS snapshots are persisted at most every
    ``flush_every`` seconds (and at exit) so that a swapping reader loads most of an index instead of
    rebuilding it from LMDB.
    """
    from ..attribution.engine import Attributor

    stop = stop or threading.Event()
    built = 0
    with Attributor(config, index=index, device=device) as engine:
        engine.lock_for_writing()  # before any model loads and before the queue is claimed (renamed)
        bq = BuildQueue(engine.index_dir)
        last_flush = time.monotonic()
        while not stop.is_set():
            claims = bq.claim()
            for path, prompts in claims:
                if prompts:
                    report = engine.build(prompts, progress=False)
                    built += report.built
                    echo(f"builder: {path.name}: built {report.built}, already cached {report.skipped} "
                         f"({report.seconds:.1f}s)")
                bq.done(path)
            if claims and time.monotonic() - last_flush >= flush_every:
                engine.cache.flush()
                last_flush = time.monotonic()
            if once and not claims:
                break
            if not claims:
                stop.wait(interval)
    return built


__all__ = ["QUEUE_FILE", "QUEUE_LOCK", "BuildQueue", "QueueFull", "run_builder"]
