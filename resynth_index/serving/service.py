"""The serving core behind ``rindex serve``: image-level cache, dynamic batching, miss policy, snapshot swap.

Flow of one image (the HTTP layer in :mod:`resynth_index.serving.http` only parses, limits and formats)::

    bytes -> decode/guard (max_pixels) -> pixel hash + pHash -> image cache
        exact / perceptual hit -> the earlier answer (no inversion, no embedding)
        else -> batcher queue -> [worker: coalesce up to max_batch images or max_wait_ms]
             -> dedupe identical pixels -> Attributor.attribute_decoded on the current snapshot
             -> miss policy -> image cache -> answer

Build -> distribute -> swap
---------------------------
* **One builder writes.** With ``serve.miss_policy = "queue"`` (the default) serving processes open the index
  read-only and never generate: a miss is answered at once from cached evidence (unrestricted kNN over every
  stored candidate, and whatever the prompt already has) and its prompt is appended to the index's build queue
  (``INDEX/build-queue.jsonl``, appends under an flock on ``INDEX/build-queue.lock``). The builder,
  ``rindex serve --builder`` (:func:`run_builder`), holds the cache's writer lock, claims the queue by renaming
  it to ``build-queue.<ns>.work``, builds those prompts (each batch commits atomically) and deletes the claim;
  claims a crashed builder left behind are built by the next one.
* **Serving processes swap snapshots.** A *snapshot* is one read-only engine (:meth:`Attributor.reopen`: the
  loaded models are shared, the cache and its FAISS indexes are its own); its id is the highest committed
  record id when it was opened. Every ``refresh_interval`` seconds (and on ``POST /v1/index/refresh``) the
  service compares the index's id with the served one; when the builder committed more, it opens a new
  snapshot *off the request path*, loads and catches up its indexes, then swaps the reference. Batches that
  started on the old snapshot finish on it; it is closed when the last of them releases it. No request waits
  for the swap or is dropped by it. Provisional image-cache entries (misses answered while their prompt was
  queued) are forgotten at each swap so that reposts get the resynthesized answer.
* **Inline policy.** ``miss_policy = "inline"``: the serving process is the writer (so it is the one builder;
  run one such process per index). A batch resynthesizes its missed prompts inline as long as the measured
  cost per prompt fits the request's budget (``min(resynthesis_budget, time left before request_timeout)``);
  the rest are answered as in queue mode and their prompts are built by the worker when it is idle.
* **fork().** Nothing here opens LMDB before :meth:`AttributionService.start`, which the server calls in its
  lifespan (after any worker fork).
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..config import Config, load_config
from ..errors import ConfigError, ImageError, RindexError
from .image_cache import MAX_PHASH_DISTANCE, ImageCache, perceptual_hash
from ..images.decode import DecodedImage, decode_image
from ..store.keys import normalize_prompt

log = logging.getLogger("resynth_index.serving.service")

QUEUE_FILE = "build-queue.jsonl"
QUEUE_LOCK = "build-queue.lock"
TOP_K = 3
STAGES = ("decode", "image_cache", "queue_wait", "invert", "embed", "lookup", "resynthesize", "score")


class Overloaded(RindexError):
    """Too many images are waiting for a batch (HTTP 503)."""


class ServiceClosed(RindexError):
    """The service is not running (HTTP 503)."""


# ----------------------------------------------------------------------------------------------- build queue


class BuildQueue:
    """The prompts serving processes want built: an append-only JSONL spool inside the index directory."""

    def __init__(self, index_dir: str | os.PathLike):
        self.dir = Path(index_dir)
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
        if not prompts:
            return
        lines = "".join(json.dumps({"prompt": p, "t": round(time.time(), 3)}, ensure_ascii=False) + "\n" for p in prompts)
        fd = self._locked()
        try:
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
        """Prompts queued or claimed but not yet built (lines, duplicates included)."""
        n = 0
        for p in [self.path, *self.claims()]:
            try:
                with open(p, "rb") as fh:
                    n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
            except FileNotFoundError:
                pass
        return n


def run_builder(
    config: Any = None,
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


# ----------------------------------------------------------------------------------------------- metrics


class ServiceMetrics:
    """Prometheus metrics of one service (its own registry, so several services can live in one process)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = registry or CollectorRegistry()
        lat = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.http_requests = Counter("rindex_http_requests", "HTTP requests by endpoint and status code",
                                     ["endpoint", "code"], registry=r)
        self.http_seconds = Histogram("rindex_http_request_seconds", "HTTP request latency", ["endpoint"],
                                      buckets=lat, registry=r)
        self.images = Counter("rindex_images", "Images answered, by how: image_exact and image_perceptual "
                              "(image-level cache), else the candidate cache's hit, near or miss",
                              ["result"], registry=r)
        self.rejected = Counter("rindex_images_rejected", "Images refused (bomb, not_image, bad_image)",
                                ["reason"], registry=r)
        self.stage_seconds = Histogram("rindex_stage_seconds", "Seconds per image per stage", ["stage"],
                                       buckets=lat, registry=r)
        self.batch_size = Histogram("rindex_batch_size", "Images per inversion/embedding batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("rindex_queue_depth", "Images waiting for a batch", registry=r)
        self.build_queue = Gauge("rindex_build_queue_prompts", "Prompts waiting for the builder", registry=r)
        self.prompts_queued = Counter("rindex_prompts_queued", "Missed prompts queued for the builder", registry=r)
        self.snapshot = Gauge("rindex_snapshot_id", "Id (highest record id) of the served index snapshot", registry=r)
        self.swaps = Counter("rindex_snapshot_swaps", "Hot swaps to a newer index snapshot", registry=r)
        self.timeouts = Counter("rindex_request_timeouts", "Requests that ran past request_timeout", registry=r)


# ----------------------------------------------------------------------------------------------- snapshots


def snapshot_id(engine) -> int:
    """The highest committed record id of the engine's index (0 when empty)."""
    return max((st["last_record_id"] for st in engine.cache.namespaces().values()), default=0)


class Snapshot:
    """One engine serving one snapshot of the index; closed once retired and released by its last batch."""

    def __init__(self, engine, sid: int):
        self.engine, self.id, self.opened_at = engine, sid, time.time()
        self._lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self.closed = False

    def acquire(self) -> "Snapshot":
        with self._lock:
            self._inflight += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            close = self._retired and self._inflight == 0
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._inflight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.close()


# ----------------------------------------------------------------------------------------------- service


@dataclass
class _Job:
    image: DecodedImage
    name: str
    phash: int | None
    deadline: float
    future: cf.Future
    timings: dict[str, float] = field(default_factory=dict)
    enqueued: float = 0.0


def classify_image_error(exc: Exception) -> tuple[int, str]:
    """HTTP status and reason for a refused image: 413 ``bomb``, 415 ``not_image``, 422 ``bad_image``."""
    msg = str(exc)
    if "decompression bomb" in msg or "above the limit of" in msg:
        return 413, "bomb"
    if "not a recognised image format" in msg or "empty file" in msg:
        return 415, "not_image"
    return 422, "bad_image"


class AttributionService:
    """Attribute images for many concurrent callers (thread-safe). ``start()`` before use, ``close()`` after.

    Args:
        config: as for :class:`~resynth_index.Attributor`; its ``[serve]`` table sets the policy and limits.
        index, device: as for the Attributor.
        overrides: ``[serve]`` keys to override (e.g. ``{"miss_policy": "inline"}``).
    """

    def __init__(self, config: Any = None, *, index: str | os.PathLike | None = None, device: str | None = None,
                 overrides: Mapping[str, Any] | None = None):
        import dataclasses

        self.config: Config = load_config(config)
        if overrides:
            self.config = dataclasses.replace(self.config, serve=dataclasses.replace(self.config.serve, **overrides))
        sc = self.serve = self.config.serve
        _validate_serve(sc)
        self.index = index
        self.device = device
        self.inline = sc.miss_policy == "inline"
        self.metrics = ServiceMetrics()
        self.image_cache = ImageCache(sc.image_cache_size, sc.phash_distance)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._snap_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queued_prompts: set[str] = set()
        self._deferred: deque[str] = deque()  # inline policy: prompts to build when idle
        self.build_queue: BuildQueue | None = None
        self.started_at: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "AttributionService":
        """Open the index (read-only under the queue policy), load the models, start the worker threads."""
        from ..attribution.engine import Attributor

        if self.started_at is not None:
            return self
        engine = Attributor(self.config, index=self.index, device=self.device, readonly=not self.inline)
        try:
            self._warm(engine)
            sid = snapshot_id(engine)
        except BaseException:
            engine.close()
            raise
        self._snapshot = Snapshot(engine, sid)
        self.build_queue = BuildQueue(engine.index_dir)
        self.metrics.snapshot.set(sid)
        self.metrics.build_queue.set_function(self._build_queue_depth)
        self.metrics.queue_depth.set_function(lambda: self._pending)
        self.started_at = time.time()
        worker = threading.Thread(target=self._worker, name="rindex-batcher", daemon=True)
        worker.start()
        self._threads.append(worker)
        if not self.inline and self.serve.refresh_interval > 0:
            watcher = threading.Thread(target=self._watch, name="rindex-snapshots", daemon=True)
            watcher.start()
            self._threads.append(watcher)
        return self

    def close(self) -> None:
        """Finish queued work, stop the threads, close the snapshot. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=60)
        with self._snap_lock:
            snap, self._snapshot = self._snapshot, None
        if snap is not None:
            snap.retire()

    def __enter__(self) -> "AttributionService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        return self.started_at is not None and not self._stop.is_set()

    def _warm(self, engine) -> None:
        """Load models and every index of the engine's namespaces, so that no request pays for it."""
        engine.inverter, engine.embedder  # noqa: B018 - lazy loads
        namespaces = engine.namespaces
        stored = engine.cache.namespaces()
        for g, ns in namespaces.items():
            if ns in stored:
                engine.cache.knn(g, ns, np.ones((1, stored[ns]["dim"]), np.float32), 1)
        engine.cache.lookup("rindex warm-up probe", namespaces)

    # -- snapshots ----------------------------------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise ServiceClosed("the service is not running")
        return snap

    def _acquire(self) -> Snapshot:
        with self._snap_lock:
            if self._snapshot is None:
                raise ServiceClosed("the service is not running")
            return self._snapshot.acquire()

    def refresh(self) -> int:
        """Swap to a newer index snapshot if the builder committed more; returns the served snapshot id."""
        with self._swap_lock:
            current = self._acquire()
            try:
                latest = snapshot_id(current.engine)
                if latest <= current.id:
                    return current.id
                if self.inline:  # the writer: its engine is always current
                    current.id = latest
                    self.metrics.snapshot.set(latest)
                    return latest
                t0 = time.perf_counter()
                engine = current.engine.reopen()
            finally:
                current.release()
            try:
                sid = snapshot_id(engine)
                self._warm(engine)
            except BaseException:
                engine.close()
                raise
            new = Snapshot(engine, sid)
            with self._snap_lock:
                old, self._snapshot = self._snapshot, new
            if old is not None:
                old.retire()
            dropped = self.image_cache.drop_provisional(older_than=sid)
            with self._pending_lock:
                self._queued_prompts.clear()
            self.metrics.snapshot.set(sid)
            self.metrics.swaps.inc()
            log.info("swapped to snapshot %d in %.2fs (%d provisional answers dropped)", sid,
                     time.perf_counter() - t0, dropped)
            return sid

    def _watch(self) -> None:
        while not self._stop.wait(self.serve.refresh_interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep serving the current snapshot
                log.exception("snapshot refresh failed; still serving the current one")

    def _build_queue_depth(self) -> float:
        if self.inline:
            return len(self._deferred)
        return self.build_queue.pending() if self.build_queue is not None else 0

    # -- requests -----------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str) -> DecodedImage:
        """Decode one upload under the pixel limit; raises :class:`ImageError` (and counts the refusal)."""
        t0 = time.perf_counter()
        try:
            d = decode_image(data, max_pixels=self.serve.max_pixels, name=name)
        except ImageError as exc:
            self.metrics.rejected.labels(classify_image_error(exc)[1]).inc()
            raise
        except Exception as exc:  # noqa: BLE001
            self.metrics.rejected.labels("bad_image").inc()
            raise ImageError(f"{name}: cannot decode image: {type(exc).__name__}: {exc}") from exc
        d.path = None
        d._decode_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
        return d

    def submit(self, images: list[DecodedImage], names: list[str], *, timeout: float | None = None) -> list[cf.Future]:
        """One future per image, resolving to its result dict. Image-cache hits resolve at once."""
        if not self.ready:
            raise ServiceClosed("the service is not running")
        timeout = self.serve.request_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        futures, jobs = [], []
        for d, name in zip(images, names):
            t0 = time.perf_counter()
            ph = perceptual_hash(d.image) if self.image_cache.perceptual else None
            hit = self.image_cache.get(d.pixel_sha256, ph)
            timings = {"decode": getattr(d, "_decode_seconds", 0.0), "image_cache": time.perf_counter() - t0}
            fut: cf.Future = cf.Future()
            futures.append(fut)
            if hit is not None:
                self._observe(timings)
                self.metrics.images.labels(f"image_{hit.kind}").inc()
                out = json.loads(hit.value)  # stored as compact JSON: ~2 KB an entry
                out.update(path=name, image_cache=hit.kind, image_distance=hit.distance, timings=_round(timings))
                fut.set_result(out)
            else:
                jobs.append(_Job(d, name, ph, deadline, fut, timings))
        if jobs:
            with self._pending_lock:
                if self._pending + len(jobs) > self.serve.max_pending:
                    raise Overloaded(f"{self._pending} images are waiting for a batch (max_pending "
                                     f"{self.serve.max_pending}); retry later")
                self._pending += len(jobs)
            now = time.perf_counter()
            for job in jobs:
                job.enqueued = now
                self._jobs.put(job)
        return futures

    def attribute(self, images: list[DecodedImage], names: list[str], *, timeout: float | None = None) -> list[dict]:
        """Blocking convenience over :meth:`submit` (raises ``TimeoutError`` past the timeout)."""
        timeout = self.serve.request_timeout if timeout is None else timeout
        futures = self.submit(images, names, timeout=timeout)
        done, not_done = cf.wait(futures, timeout=timeout)
        if not_done:
            for f in not_done:
                f.cancel()
            self.metrics.timeouts.inc()
            raise TimeoutError(f"no answer within {timeout:g}s")
        return [f.result() for f in futures]

    def info(self) -> dict:
        snap = self._acquire()
        try:
            info = snap.engine.info()
        finally:
            snap.release()
        info.update(
            snapshot={"id": snap.id, "opened_at": snap.opened_at},
            miss_policy=self.serve.miss_policy,
            build_queue_pending=int(self._build_queue_depth()),
            image_cache_entries=len(self.image_cache),
        )
        return info

    # -- the batch worker ---------------------------------------------------------------------------
    def _worker(self) -> None:
        max_wait = self.serve.max_wait_ms / 1000.0
        while True:
            try:
                first = self._jobs.get(timeout=0.5)
            except queue.Empty:
                if self.inline and self._deferred and not self._stop.is_set():
                    self._build_deferred()
                continue
            if first is None:
                break
            batch = [first]
            end = time.monotonic() + max_wait
            stop = False
            while len(batch) < self.serve.max_batch:
                left = end - time.monotonic()
                try:
                    job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            with self._pending_lock:
                self._pending -= len(batch)
            try:
                self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - fail this batch's requests, keep serving
                log.exception("batch failed")
                for job in batch:
                    _resolve(job.future, exc=exc)
            if stop:
                break
        # fail whatever is still queued
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _resolve(job.future, exc=ServiceClosed("the service is shutting down"))

    def _run_batch(self, batch: list[_Job]) -> None:
        now_mono, now = time.monotonic(), time.perf_counter()
        groups: dict[str, list[_Job]] = {}
        for job in batch:
            if job.future.cancelled():
                continue
            if now_mono >= job.deadline:
                _resolve(job.future, exc=TimeoutError("request timed out while queued"))
                continue
            job.timings["queue_wait"] = now - job.enqueued
            hit = self.image_cache.get(job.image.pixel_sha256, job.phash)  # filled by an earlier batch?
            if hit is not None:
                self.metrics.images.labels(f"image_{hit.kind}").inc()
                self._observe(job.timings)
                out = json.loads(hit.value)
                out.update(path=job.name, image_cache=hit.kind, image_distance=hit.distance,
                           timings=_round(job.timings))
                _resolve(job.future, out)
                continue
            groups.setdefault(job.image.pixel_sha256, []).append(job)
        if not groups:
            return
        self.metrics.batch_size.observe(len(groups))
        budget = None
        if self.inline:
            left = min(j.deadline for g in groups.values() for j in g) - time.monotonic()
            budget = max(0.0, min(self.serve.resynthesis_budget, left - 0.5))
        snap = self._acquire()
        try:
            firsts = [g[0] for g in groups.values()]
            results = snap.engine.attribute_decoded(
                [j.image for j in firsts], names=[j.name for j in firsts], resynthesize=self.inline,
                resynthesis_budget=budget, top_k=TOP_K,
            )
        finally:
            snap.release()
        provisionals = [res.ok and res.cache == "miss" and "resynthesize" not in res.timings for res in results]
        deferred = [res.prompt for res, p in zip(results, provisionals) if p and res.prompt]
        if deferred:
            self._defer(deferred)  # queued before anyone is answered "queued": true
        for res, group, provisional in zip(results, groups.values(), provisionals):
            d = res.to_dict()
            d.update(queued=provisional, snapshot=snap.id)
            self.image_cache.put(group[0].image.pixel_sha256, group[0].phash,
                                 json.dumps(d, ensure_ascii=False, separators=(",", ":")), snapshot=snap.id,
                                 provisional=provisional)
            for stage in ("invert", "embed", "lookup", "resynthesize", "score"):
                if stage in res.timings:
                    self.metrics.stage_seconds.labels(stage).observe(res.timings[stage])
            for job in group:
                self.metrics.images.labels(res.cache or "miss").inc()
                self._observe(job.timings)
                out = dict(d)
                out.update(path=job.name, image_cache="none", image_distance=None,
                           timings=_round({**job.timings, **res.timings}))
                _resolve(job.future, out)

    def _observe(self, timings: Mapping[str, float]) -> None:
        for stage in ("decode", "image_cache", "queue_wait"):
            if stage in timings:
                self.metrics.stage_seconds.labels(stage).observe(timings[stage])

    def _defer(self, prompts: list[str]) -> None:
        fresh = []
        with self._pending_lock:
            for p in prompts:
                norm = normalize_prompt(p)
                if norm and norm not in self._queued_prompts:
                    if len(self._queued_prompts) > 100_000:
                        self._queued_prompts.clear()
                    self._queued_prompts.add(norm)
                    fresh.append(p)
        if not fresh:
            return
        self.metrics.prompts_queued.inc(len(fresh))
        if self.inline:
            self._deferred.extend(fresh)
        else:
            self.build_queue.put(fresh)

    def _build_deferred(self) -> None:
        """Inline policy, idle worker: build a few deferred prompts (this process is the writer)."""
        chunk = [self._deferred.popleft() for _ in range(min(len(self._deferred), self.config.build.batch_size))]
        snap = self._acquire()
        try:
            snap.engine.build(chunk, progress=False)
        except Exception:  # noqa: BLE001
            log.exception("building deferred prompts failed")
        finally:
            snap.release()
        with self._pending_lock:
            for p in chunk:
                self._queued_prompts.discard(normalize_prompt(p))
        self.refresh()
        self.image_cache.drop_provisional()


def _resolve(fut: cf.Future, value: Any = None, exc: BaseException | None = None) -> None:
    """Set a job's outcome unless its caller gave up (cancelled on timeout) in the meantime."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except cf.InvalidStateError:
        pass


def _round(timings: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timings.items()}


def _validate_serve(sc) -> None:
    if not 0 <= sc.port <= 65535:
        raise ConfigError(f"serve.port must be 0..65535, got {sc.port}")
    for key in ("resynthesis_budget", "max_wait_ms", "refresh_interval"):
        if getattr(sc, key) < 0:
            raise ConfigError(f"serve.{key} must not be negative, got {getattr(sc, key)}")
    if not -1 <= sc.phash_distance <= MAX_PHASH_DISTANCE:
        raise ConfigError(f"serve.phash_distance must be -1 (off) or 0..{MAX_PHASH_DISTANCE}, got {sc.phash_distance}")


__all__ = [
    "AttributionService", "BuildQueue", "Overloaded", "ServiceClosed", "ServiceMetrics", "Snapshot",
    "classify_image_error", "run_builder", "snapshot_id",
]
