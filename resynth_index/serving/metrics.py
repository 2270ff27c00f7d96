"""Prometheus metrics of the serving layer (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: per-image stages the batcher times before the engine runs (the engine's own stages follow)
FRONT_STAGES = ("decode", "image_cache", "queue_wait")
ENGINE_STAGES = ("invert", "embed", "lookup", "resynthesize", "score")


class ServiceMetrics:
    """Prometheus metrics of one service (its own registry, so several services can live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
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

    def observe_front(self, timings: Mapping[str, float]) -> None:
        """One image's decode, image-cache and queue-wait seconds (those it went through)."""
        for stage in FRONT_STAGES:
            if stage in timings:
                self.stage_seconds.labels(stage).observe(timings[stage])

    def observe_engine(self, timings: Mapping[str, float]) -> None:
        """The engine's seconds per stage for one computed image (once per distinct image of a batch)."""
        for stage in ENGINE_STAGES:
            if stage in timings:
                self.stage_seconds.labels(stage).observe(timings[stage])


__all__ = ["ENGINE_STAGES", "FRONT_STAGES", "ServiceMetrics"]
