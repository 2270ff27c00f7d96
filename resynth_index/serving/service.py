"""The serving core behind ``rindex serve``: miss policy and snapshot swap around the one batcher.

Flow of one image (the HTTP layer in :mod:`resynth_index.serving.http` only parses, limits and formats)::

    bytes -> decode/guard (max_pixels) -> batcher (:mod:`resynth_index.serving.batcher`: image cache,
        coalescing, pixel dedupe, Attributor.attribute_decoded on the current snapshot) -> miss policy -> answer

Build -> distribute -> swap
---------------------------
* **One builder writes.** With ``serve.miss_policy = "queue"`` (the default) serving processes open the index
  read-only and never generate: a miss is answered at once from cached evidence (unrestricted kNN over every
  stored candidate, and whatever the prompt already has) and its prompt is appended to the index's build queue
  (:mod:`resynth_index.serving.build_queue`), which the one builder, ``rindex serve --builder``, drains.
* **Serving processes swap snapshots** (:mod:`resynth_index.serving.snapshots`). Every ``refresh_interval``
  seconds (and on ``POST /v1/index/refresh``) the service compares the index's id with the served one; when the
  builder committed more, it opens a new snapshot *off the request path*, loads and catches up its indexes,
  then swaps the reference. Batches that started on the old snapshot finish on it. No request waits for the
  swap or is dropped by it. Provisional image-cache entries (misses answered while their prompt was queued)
  are forgotten at each swap so that reposts get the resynthesized answer.
* **Inline policy.** ``miss_policy = "inline"``: the serving process is the writer (so it is the one builder;
  run one such process per index). A batch resynthesizes its missed prompts inline as long as the measured
  cost per prompt fits the request's budget (``min(resynthesis_budget, time left before request_timeout)``);
  the rest are answered as in queue mode and their prompts are built by the worker when it is idle.
* **fork().** Nothing here opens LMDB before :meth:`AttributionService.start`, which the server calls in its
  lifespan (after any worker fork).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import Config, ServeConfig, load_config
from ..errors import ConfigError, CorruptImage, ImageError
from ..images.decode import DecodedImage, decode_image
from ..store.keys import normalize_prompt
from .batcher import Answer, Batcher, Settlement, TimedImage
from .build_queue import BuildQueue, QueueFull
from .errors import ServiceClosed, classify_image_error
from .image_cache import MAX_PHASH_DISTANCE, ImageCache
from .metrics import ServiceMetrics
from .protocol import ServedResult, ServingEngine
from .snapshots import Snapshot, newest_snapshot, snapshot_id, snapshot_set, warm

log = logging.getLogger("resynth_index.serving.service")

TOP_K = 3


class AttributionService:
    """Attribute images for many concurrent callers (thread-safe). ``start()`` before use, ``close()`` after.

    The service is the :class:`~resynth_index.serving.batcher.BatchPolicy` of its batcher: batches run on the
    current snapshot, and misses follow ``serve.miss_policy``.

    Args:
        config: as for :class:`~resynth_index.Attributor`; its ``[serve]`` table sets the policy and limits.
        index, device: as for the Attributor.
        overrides: ``[serve]`` keys to override (e.g. ``{"miss_policy": "inline"}``).
    """

    def __init__(self, config: str | os.PathLike | Mapping[str, Any] | Config | None = None, *,
                 index: str | os.PathLike | None = None, device: str | None = None,
                 overrides: Mapping[str, Any] | None = None):
        self.config: Config = load_config(config)
        if overrides:
            self.config = dataclasses.replace(self.config, serve=dataclasses.replace(self.config.serve, **overrides))
        sc = self.serve = self.config.serve
        _validate_serve(sc)
        self.index = index
        self.device = device
        self.inline = sc.miss_policy == "inline"
        self.metrics = ServiceMetrics()
        self.image_cache: ImageCache[str] = ImageCache(sc.image_cache_size, sc.phash_distance)
        self.batcher: Batcher[dict] = Batcher(
            self, self.image_cache, max_batch=sc.max_batch, max_wait_ms=sc.max_wait_ms,
            max_pending=sc.max_pending, top_k=TOP_K, present=_present, metrics=self.metrics,
        )
        self._prompts_lock = threading.Lock()
        self._snap_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._set: Path | None = None  # a directory of exported snapshots being served
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._queued_prompts: set[str] = set()
        self._deferred: deque[str] = deque()  # inline policy: prompts to build when idle
        self.build_queue: BuildQueue | None = None
        self.started_at: float | None = None
        #: why the last build-queue append failed (a full disk, a full queue); None once one succeeds
        self.queue_problem: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> AttributionService:
        """Open the index (read-only under the queue policy), load the models, start the worker threads."""
        from ..attribution.engine import Attributor

        if self.started_at is not None:
            return self
        index = self.index
        self._set = snapshot_set(index) if index is not None else None
        if self._set is not None:  # a directory of exported snapshots: serve the newest, swap to newer ones
            if self.inline:
                raise ConfigError(f"{index} holds exported (read-only) snapshots: serve it with miss_policy 'queue'")
            index = newest_snapshot(self._set)
        engine: ServingEngine = Attributor(self.config, index=index, device=self.device,
                                           readonly=not self.inline)
        try:
            warm(engine)
            sid = snapshot_id(engine)
        except BaseException:
            engine.close()
            raise
        self._snapshot = Snapshot(engine, sid)
        self.build_queue = BuildQueue(self._set or engine.index_dir,  # a set's queue outlives its swaps
                                      max_bytes=self.serve.max_queue_bytes)
        self.metrics.snapshot.set(sid)
        self.metrics.build_queue.set_function(self._build_queue_depth)
        self.metrics.queue_depth.set_function(lambda: self.batcher.pending)
        self.started_at = time.time()
        self.batcher.start()
        if not self.inline and self.serve.refresh_interval > 0:
            self._watcher = threading.Thread(target=self._watch, name="rindex-snapshots", daemon=True)
            self._watcher.start()
        return self

    def close(self) -> None:
        """Finish queued work, stop the threads, close the snapshot. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.batcher.close()
        if self._watcher is not None:
            self._watcher.join(timeout=60)
        with self._snap_lock:
            snap, self._snapshot = self._snapshot, None
        if snap is not None:
            snap.retire()

    def __enter__(self) -> AttributionService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        return self.started_at is not None and not self._stop.is_set()

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
        """Swap to a newer index snapshot if the builder committed more (or, serving a set of exported snapshots,
        when a newer complete one appeared); returns the served snapshot id."""
        with self._swap_lock:
            current = self._acquire()
            try:
                if self._set is not None:
                    newest = newest_snapshot(self._set)
                    if newest is None or newest == Path(current.engine.index_dir):
                        return current.id
                else:
                    newest = None
                    latest = snapshot_id(current.engine)
                    if latest <= current.id:
                        return current.id
                    if self.inline:  # the writer: its engine is always current
                        current.id = latest
                        self.metrics.snapshot.set(latest)
                        return latest
                t0 = time.perf_counter()
                engine = current.engine.reopen(index=newest)
            finally:
                current.release()
            try:
                sid = snapshot_id(engine)
                warm(engine)
            except BaseException:
                engine.close()
                raise
            new = Snapshot(engine, sid)
            with self._snap_lock:
                old, self._snapshot = self._snapshot, new
            if old is not None:
                old.retire()
            dropped = self.image_cache.drop_provisional(older_than=sid)
            with self._prompts_lock:
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
    @property
    def problem(self) -> str | None:
        """Why the service cannot serve as it should (health reports it), or None."""
        if not self.ready:
            return "not ready"
        if not self.inline and self.queue_problem:
            return f"misses cannot be queued for the builder: {self.queue_problem}"
        return None

    def decode(self, data: bytes, name: str, *, max_pixels: int | None = None) -> TimedImage:
        """Decode one upload under the pixel limit (``max_pixels``: what is left of the request's budget, when
        less than ``serve.max_pixels``) and the aspect-ratio limit; raises :class:`ImageError` (and counts the
        refusal)."""
        t0 = time.perf_counter()
        limit = self.serve.max_pixels if max_pixels is None else max(1, min(max_pixels, self.serve.max_pixels))
        try:
            d = decode_image(data, max_pixels=limit, name=name, max_aspect=self.serve.max_aspect)
        except ImageError as exc:
            self.metrics.rejected.labels(classify_image_error(exc)[1]).inc()
            raise
        except Exception as exc:  # noqa: BLE001
            self.metrics.rejected.labels("bad_image").inc()
            raise CorruptImage(f"{name}: cannot decode image: {type(exc).__name__}: {exc}") from exc
        return TimedImage(d, time.perf_counter() - t0)

    def submit(self, images: Sequence[TimedImage | DecodedImage], names: Sequence[str], *,
               timeout: float | None = None) -> list[cf.Future]:
        """One future per image, resolving to its result dict. Image-cache hits resolve at once.

        ``images`` come from :meth:`decode` (a plain :class:`DecodedImage` reports no decode time)."""
        if not self.ready:
            raise ServiceClosed("the service is not running")
        timeout = self.serve.request_timeout if timeout is None else timeout
        items = [im if isinstance(im, TimedImage) else TimedImage(im) for im in images]
        return self.batcher.submit(items, names, deadline=time.monotonic() + timeout)

    def attribute(self, images: Sequence[TimedImage | DecodedImage], names: Sequence[str], *,
                  timeout: float | None = None) -> list[dict]:
        """Blocking convenience over :meth:`submit` (raises ``TimeoutError`` past the timeout)."""
        timeout = self.serve.request_timeout if timeout is None else timeout
        futures = self.submit(images, names, timeout=timeout)
        _, not_done = cf.wait(futures, timeout=timeout)
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
        info = relative_paths(info)
        info.update(
            snapshot={"id": snap.id, "opened_at": snap.opened_at},
            miss_policy=self.serve.miss_policy,
            build_queue_pending=int(self._build_queue_depth()),
            image_cache_entries=len(self.image_cache),
        )
        return info

    # -- the batcher's policy -----------------------------------------------------------------------
    @contextmanager
    def lease(self) -> Iterator[tuple[ServingEngine, int | None]]:
        """A batch runs on the current snapshot, which stays open until the batch is done with it."""
        snap = self._acquire()
        try:
            yield snap.engine, snap.id
        finally:
            snap.release()

    def options(self, deadline: float | None) -> tuple[bool, float | None]:
        """Inline policy: resynthesize within ``min(resynthesis_budget, time left)``; queue policy: never."""
        if not self.inline:
            return False, None
        if deadline is None:
            return True, self.serve.resynthesis_budget
        return True, max(0.0, min(self.serve.resynthesis_budget, deadline - time.monotonic() - 0.5))

    def settle(self, results: Sequence[ServedResult], snapshot: int | None) -> list[Settlement]:
        """A miss answered without resynthesis is provisional and its prompt is queued for building, before
        anyone is answered ``"queued": true``."""
        provisional = [res.ok and res.cache == "miss" and "resynthesize" not in res.timings for res in results]
        deferred = [res.prompt for res, p in zip(results, provisional) if p and res.prompt]
        queued = True
        if deferred:
            queued = self._defer(deferred)
        return [Settlement({"queued": p and queued, "snapshot": snapshot}, p) for p in provisional]

    def idle(self) -> None:
        """Inline policy, idle worker: build a few deferred prompts (this process is the writer)."""
        if self.inline and self._deferred and not self._stop.is_set():
            self._build_deferred()

    def _defer(self, prompts: list[str]) -> bool:
        """Queue ``prompts`` for building; False when the build queue refused them (full, or its disk). The
        answers are given all the same, marked not queued, and health reports the problem."""
        fresh = []
        with self._prompts_lock:
            for p in prompts:
                norm = normalize_prompt(p)
                if norm and norm not in self._queued_prompts:
                    if len(self._queued_prompts) > 100_000:
                        self._queued_prompts.clear()
                    self._queued_prompts.add(norm)
                    fresh.append(p)
        if not fresh:
            return True
        if self.inline:
            self._deferred.extend(fresh)
        elif self.build_queue is not None:
            try:
                self.build_queue.put(fresh)
            except (OSError, QueueFull) as exc:
                from ..store.index_dir import describe_os_error

                self.queue_problem = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
                log.warning("build queue: %s", self.queue_problem)
                with self._prompts_lock:
                    self._queued_prompts.difference_update(normalize_prompt(p) for p in fresh)
                return False
            self.queue_problem = None
        self.metrics.prompts_queued.inc(len(fresh))
        return True

    def _build_deferred(self) -> None:
        chunk = [self._deferred.popleft() for _ in range(min(len(self._deferred), self.config.build.batch_size))]
        try:
            with self.lease() as (engine, _):
                engine.build(chunk, progress=False)
        except Exception:  # noqa: BLE001
            log.exception("building deferred prompts failed")
        with self._prompts_lock:
            for p in chunk:
                self._queued_prompts.discard(normalize_prompt(p))
        self.refresh()
        self.image_cache.drop_provisional()


def relative_paths(value: Any) -> Any:
    """``value`` with every absolute path string replaced by its last component: a service must not reveal
    where its index or its references live on the server's disk."""
    if isinstance(value, dict):
        return {k: relative_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/")) or "."
    return value


def _present(answer: Answer) -> dict:
    """The HTTP result object: the answer plus ``image_cache``, ``image_distance`` and this image's timings;
    evidence names references by file name only."""
    out = answer.result
    for items in (out.get("evidence") or {}).values():
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("reference"), str):
                item["reference"] = relative_paths(item["reference"])
    out.update(path=answer.name, image_cache=answer.image_cache, image_distance=answer.distance,
               timings=_round(answer.timings))
    return out


def _round(timings: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timings.items()}


def _validate_serve(sc: ServeConfig) -> None:
    if not 0 <= sc.port <= 65535:
        raise ConfigError(f"serve.port must be 0..65535, got {sc.port}")
    for key in ("resynthesis_budget", "max_wait_ms", "refresh_interval"):
        if getattr(sc, key) < 0:
            raise ConfigError(f"serve.{key} must not be negative, got {getattr(sc, key)}")
    if not -1 <= sc.phash_distance <= MAX_PHASH_DISTANCE:
        raise ConfigError(f"serve.phash_distance must be -1 (off) or 0..{MAX_PHASH_DISTANCE}, got {sc.phash_distance}")


__all__ = ["TOP_K", "AttributionService"]
