"""The one batcher of the serving layer, behind both ``rindex serve`` and ``rindex query --stream``.

Flow of one decoded image::

    pixel hash + pHash -> image cache
        exact / perceptual hit -> the earlier answer at once (no inversion, no embedding)
        else -> queue -> [worker: coalesce up to max_batch images, waiting at most max_wait_ms]
             -> image cache again (an earlier batch may have answered the same pixels)
             -> dedupe identical pixels -> engine.attribute_decoded on the policy's engine
             -> the policy settles the answers -> image cache -> every waiting image

The image cache holds one value type: the answer as compact JSON (a ``str``, about 2 KB an entry), so that
100,000 entries cost a few hundred MB and a hit is a fresh copy nobody else holds.

What differs between the HTTP service and the stream is a :class:`BatchPolicy` (which engine a batch runs on,
whether misses resynthesize, which answers are provisional, what to do when idle) and how each front end
formats an :class:`Answer`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..provenance import DECIDERS, container_fingerprint
from ..images.pdq import PDQ, pdq_hash
from .errors import Overloaded, ServiceClosed
from .image_cache import ImageCache, ImageCacheHit, perceptual_hash

if TYPE_CHECKING:
    from ..images.decode import DecodedImage
    from .metrics import ServiceMetrics
    from .protocol import ServedResult, ServingEngine

log = logging.getLogger("resynth_index.serving.batcher")

T = TypeVar("T")

IDLE_SECONDS = 0.5
"""How long the worker waits for an image before it calls :meth:`BatchPolicy.idle`."""


def coalesce(q: queue.Queue[T | None], first: T, max_items: int, max_wait: float) -> tuple[list[T], bool]:
    """``first`` and whatever else arrives on ``q`` within ``max_wait`` seconds of it, up to ``max_items``;
    and whether the end marker (None) was taken from ``q``."""
    batch = [first]
    end = time.monotonic() + max_wait
    while len(batch) < max_items:
        try:
            item = q.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False


@dataclass(frozen=True)
class TimedImage:
    """A decoded image and the seconds its decoding took (reported as its ``decode`` timing)."""

    image: DecodedImage
    decode_seconds: float = 0.0


@dataclass
class Answer:
    """The batcher's answer for one submitted image; front ends format it.

    Attributes:
        name: the name the image was submitted under.
        result: the answer object (the JSONL contract object plus the policy's fields); the caller's own copy.
        image_cache: ``exact`` or ``perceptual`` when the image cache answered, ``none`` when computed.
        distance: the pHash Hamming distance of an image-cache hit (0 for exact), None when computed.
        shared: computed once for identical pixels submitted earlier in the same batch (``image_cache`` is
            ``none``; this image was not inverted or embedded itself).
        timings: seconds per stage for this image: ``decode``, ``image_cache``, ``queue_wait`` (when it was
            queued) and, when computed, the engine's stages.
    """

    name: str
    result: dict[str, Any]
    image_cache: str
    distance: int | None
    shared: bool
    timings: dict[str, float]


@dataclass(frozen=True)
class Settlement:
    """What the policy adds to one computed answer, and whether it is provisional (see the image cache)."""

    fields: dict[str, Any] = field(default_factory=dict)
    provisional: bool = False


class BatchPolicy(Protocol):
    """What a front end decides for the batcher."""

    def lease(self) -> AbstractContextManager[tuple[ServingEngine, int | None]]:
        """The engine one batch runs on and its snapshot id (None: not tracked), held for the batch."""
        ...

    def options(self, deadline: float | None) -> tuple[bool, float | None]:
        """``(resynthesize, resynthesis_budget)`` for a batch whose earliest deadline (``time.monotonic``) is
        ``deadline`` (None: no deadline)."""
        ...

    def settle(self, results: Sequence[ServedResult], snapshot: int | None) -> list[Settlement]:
        """One settlement per result, decided before anyone is answered."""
        ...

    def idle(self) -> None:
        """Called by the worker when no image arrived for :data:`IDLE_SECONDS`."""
        ...


class FixedEngine:
    """The simplest policy: every batch runs on one engine, misses resynthesize inline unless told not to,
    nothing is provisional and nothing is added to the answers (``rindex query --stream``)."""

    def __init__(self, engine: ServingEngine, *, resynthesize: bool = True):
        self.engine = engine
        self.resynthesize = resynthesize

    @contextmanager
    def lease(self) -> Iterator[tuple[ServingEngine, int | None]]:
        yield self.engine, None

    def options(self, deadline: float | None) -> tuple[bool, float | None]:
        return self.resynthesize, None

    def settle(self, results: Sequence[ServedResult], snapshot: int | None) -> list[Settlement]:
        return [Settlement() for _ in results]

    def idle(self) -> None:
        pass


def answer_key(d: DecodedImage) -> tuple[str, bool]:
    """The image-cache key of an image, and whether a perceptual match may answer it. Files whose container
    carries provenance (a C2PA manifest, XMP, generator claims, stated settings) key on their bytes too and are
    matched exactly only: the same pixels in another container may deserve another answer."""
    fingerprint = container_fingerprint(d.metadata, d.data)
    return (d.pixel_sha256, True) if fingerprint is None else (f"{d.pixel_sha256}:{fingerprint}", False)


@dataclass
class _Job:
    image: DecodedImage
    key: str  # see answer_key
    name: str
    phash: int | None
    deadline: float | None
    future: cf.Future
    timings: dict[str, float]
    enqueued: float = 0.0
    pdq: PDQ | None = None


class Batcher(Generic[T]):
    """Coalesce submitted images into batches for one worker thread (thread-safe). ``start()`` before use,
    ``close()`` after (or use it as a context manager).

    Args:
        policy: see :class:`BatchPolicy`.
        image_cache: the image-level cache it checks and fills.
        max_batch, max_wait_ms: a batch takes up to ``max_batch`` images, waiting at most ``max_wait_ms`` after
            its first one for more.
        max_pending: images that may wait for a batch; past it :meth:`submit` raises :class:`Overloaded`
            (None: no limit).
        top_k: evidence items per generator in each answer.
        present: turns an :class:`Answer` into what the futures resolve to (default: the Answer itself).
        metrics: counted when given (images by result, stage seconds, batch sizes).
    """

    def __init__(
        self,
        policy: BatchPolicy,
        image_cache: ImageCache[str],
        *,
        max_batch: int,
        max_wait_ms: float,
        max_pending: int | None = None,
        top_k: int = 3,
        present: Callable[[Answer], T] | None = None,
        metrics: ServiceMetrics | None = None,
    ):
        self.policy = policy
        self.image_cache = image_cache
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.max_pending = max_pending
        self.top_k = top_k
        self.present: Callable[[Answer], Any] = present or (lambda a: a)
        self.metrics = metrics
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Images waiting for a batch."""
        return self._pending

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Batcher[T]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="rindex-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 60.0) -> None:
        """Finish the batch in progress, fail what is still queued with :class:`ServiceClosed`. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def __enter__(self) -> Batcher[T]:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- submitting ---------------------------------------------------------------------------------
    def submit(self, images: Sequence[TimedImage], names: Sequence[str], *,
               deadline: float | None = None) -> list[cf.Future]:
        """One future per image (resolving to ``present(answer)``); image-cache hits resolve at once.

        ``deadline`` (``time.monotonic``): an image still queued then fails with ``TimeoutError``.
        """
        if self._closing.is_set() or self._thread is None:
            raise ServiceClosed("the batcher is not running")
        futures, jobs = [], []
        for item, name in zip(images, names):
            t0 = time.perf_counter()
            d = item.image
            key, perceptual = answer_key(d)
            pdq = image_pdq(d.image)
            # a low-information image (flat, a gradient) never matches perceptually: it would match them all
            ph = (perceptual_hash(d.image) if self.image_cache.perceptual and perceptual and pdq_reliable(pdq)
                  else None)
            hit = self.image_cache.get(key, ph)
            job = _Job(d, key, name, ph, deadline, cf.Future(),
                       {"decode": item.decode_seconds, "image_cache": time.perf_counter() - t0}, pdq=pdq)
            futures.append(job.future)
            if hit is not None:
                self._answer_hit(job, hit)
            else:
                jobs.append(job)
        if jobs:
            with self._lock:
                if self.max_pending is not None and self._pending + len(jobs) > self.max_pending:
                    raise Overloaded(f"{self._pending} images are waiting for a batch (max_pending "
                                     f"{self.max_pending}); retry later")
                self._pending += len(jobs)
            now = time.perf_counter()
            for job in jobs:
                job.enqueued = now
                self._jobs.put(job)
        return futures

    # -- the worker ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                first = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if not self._closing.is_set():
                    try:
                        self.policy.idle()
                    except Exception:  # noqa: BLE001 - idle work never stops the worker
                        log.exception("idle work failed")
                continue
            if first is None:
                break
            batch, stop = coalesce(self._jobs, first, self.max_batch, self.max_wait)
            with self._lock:
                self._pending -= len(batch)
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - fail this batch's images, keep serving
                log.exception("batch failed")
                for job in batch:
                    _resolve(job.future, exc=exc)
            if stop:
                break
        while True:  # fail whatever is still queued
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _resolve(job.future, exc=ServiceClosed("the service is shutting down"))

    def _run(self, batch: list[_Job]) -> None:
        now_mono, now = time.monotonic(), time.perf_counter()
        groups: dict[str, list[_Job]] = {}  # answer key -> its images in this batch, first one computed
        for job in batch:
            if job.future.cancelled():
                continue
            if job.deadline is not None and now_mono >= job.deadline:
                _resolve(job.future, exc=TimeoutError("request timed out while queued"))
                continue
            job.timings["queue_wait"] = now - job.enqueued
            hit = self.image_cache.get(job.key, job.phash)  # filled by an earlier batch?
            if hit is not None:
                self._answer_hit(job, hit)
                continue
            groups.setdefault(job.key, []).append(job)
        if not groups:
            return
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(groups))
        deadlines = [j.deadline for g in groups.values() for j in g if j.deadline is not None]
        resynthesize, budget = self.policy.options(min(deadlines) if deadlines else None)
        firsts = [g[0] for g in groups.values()]
        with self.policy.lease() as (engine, snapshot):
            results = engine.attribute_decoded(
                [j.image for j in firsts], names=[j.name for j in firsts], resynthesize=resynthesize,
                resynthesis_budget=budget, top_k=self.top_k,
            )
        settlements = self.policy.settle(results, snapshot)
        for res, group, settled in zip(results, groups.values(), settlements):
            answer = res.to_dict()
            answer.update(settled.fields)
            # an answer decided by the pixels' provenance (a watermark, say) is not lent to look-alikes
            phash = None if answer.get("decided_by") in DECIDERS else group[0].phash
            self.image_cache.put(group[0].key, phash,
                                 json.dumps(answer, ensure_ascii=False, separators=(",", ":")),
                                 snapshot=snapshot, provisional=settled.provisional)
            if self.metrics is not None:
                self.metrics.observe_engine(res.timings)
            for k, job in enumerate(group):
                if self.metrics is not None:
                    self.metrics.images.labels(res.cache or "miss").inc()
                    self.metrics.observe_front(job.timings)
                self._finish(job, Answer(job.name, dict(answer), "none", None, k > 0,
                                         {**job.timings, **res.timings}))

    def _answer_hit(self, job: _Job, hit: ImageCacheHit[str]) -> None:
        if self.metrics is not None:
            self.metrics.images.labels(f"image_{hit.kind}").inc()
            self.metrics.observe_front(job.timings)
        self._finish(job, Answer(job.name, json.loads(hit.value), hit.kind, hit.distance, False, dict(job.timings)))

    def _finish(self, job: _Job, answer: Answer) -> None:
        if job.pdq is not None and "error" not in answer.result:  # this image's own hash, also on a cache hit
            answer.result.update(pdq=job.pdq.hash_hex, pdq_quality=job.pdq.quality)
        try:
            value = self.present(answer)
        except Exception as exc:  # noqa: BLE001 - a formatting failure fails this image only
            _resolve(job.future, exc=exc)
        else:
            _resolve(job.future, value)


def image_pdq(image) -> PDQ | None:
    """The image's PDQ hash, or None where the ``pdqhash`` package (the ``[serve]`` extra) is missing."""
    try:
        return pdq_hash(image)
    except ImportError:
        return None


def pdq_reliable(pdq: PDQ | None) -> bool:
    """Whether perceptual matching may use this image: PDQ quality at least the minimum (no PDQ: not gated)."""
    return pdq is None or pdq.reliable


def _resolve(fut: cf.Future, value: Any = None, exc: BaseException | None = None) -> None:
    """Set a job's outcome unless its caller gave up (cancelled on timeout) in the meantime."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except cf.InvalidStateError:
        pass


__all__ = ["Answer", "BatchPolicy", "Batcher", "FixedEngine", "Settlement", "TimedImage"]
