"""Image-level cache in front of inversion: reposts and re-encodes are answered at the cost of a lookup.

Two keys per answered image:

* **exact**: :attr:`~resynth_index.images.decode.DecodedImage.pixel_sha256`, the hash of the decoded pixels, so the
  same picture in another container (PNG re-saved, metadata stripped) still matches;
* **perceptual**: the 64-bit pHash of the image (:func:`imagehash.phash`: DCT of the 32×32 greyscale image,
  the 8×8 low frequencies against their median). A query whose pHash lies within ``phash_distance`` bits
  (Hamming) of a stored one gets that image's answer: JPEG re-encodes, resizes and light recompression.

``phash_distance`` was measured with ``benchmarks/image_hash.py`` (the README's *Serving* section has the
figures): distinct images meeting within the distance are false matches, re-encodes beyond it are misses.

Each entry remembers the index snapshot it was computed on and whether it is *provisional* (a miss answered
from cached evidence while its prompt waits for the builder): :meth:`ImageCache.drop_provisional` forgets
those once a newer snapshot is served, so the next repost gets the resynthesized answer. Thread-safe; LRU
eviction at ``capacity`` entries; perceptual search is a vectorised XOR + popcount over all stored hashes
(about 1 ms per 100,000 entries on one core).

Example::

    >>> from PIL import Image
    >>> cache = ImageCache(capacity=10, phash_distance=4)
    >>> img = Image.new("RGB", (32, 32), (200, 10, 10))
    >>> cache.put("ab" * 32, perceptual_hash(img), {"prediction": "x"}, snapshot=1)
    >>> cache.get("ab" * 32, perceptual_hash(img)).kind
    'exact'
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from PIL import Image

from ..errors import ConfigError

V = TypeVar("V")

MAX_PHASH_DISTANCE = 32
#: Default Hamming distance for a perceptual match (64-bit pHash); see the module docstring.
DEFAULT_PHASH_DISTANCE = 4


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit pHash of ``image`` as an unsigned integer (imagehash's ``phash``, hash_size 8)."""
    import imagehash

    bits = imagehash.phash(image).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def hamming(a: int, b: int) -> int:
    return int((a ^ b).bit_count())


@dataclass(frozen=True)
class ImageCacheHit(Generic[V]):
    kind: str  # "exact" | "perceptual"
    value: V
    distance: int  # Hamming distance of the pHashes (0 for exact)
    snapshot: int | None
    provisional: bool


@dataclass
class _Entry(Generic[V]):
    value: V
    phash: int | None
    slot: int
    snapshot: int | None
    provisional: bool


class ImageCache(Generic[V]):
    """Pixel hash / pHash -> an earlier answer of type ``V`` (the serving batcher stores compact JSON).
    ``phash_distance=-1`` disables perceptual matching."""

    def __init__(self, capacity: int = 100_000, phash_distance: int = DEFAULT_PHASH_DISTANCE):
        if int(capacity) < 1:
            raise ConfigError(f"image cache capacity must be positive, got {capacity!r}")
        if not -1 <= int(phash_distance) <= MAX_PHASH_DISTANCE:
            raise ConfigError(f"phash_distance must be -1 (off) or 0..{MAX_PHASH_DISTANCE}, got {phash_distance!r}")
        self.capacity = int(capacity)
        self.phash_distance = int(phash_distance)
        self._lock = threading.Lock()
        self._floor: int | None = None  # provisional answers of snapshots below this are not stored
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._codes = np.zeros(min(self.capacity, 1024), dtype=np.uint64)
        self._owners: list[str | None] = [None] * len(self._codes)
        self._valid = np.zeros(len(self._codes), dtype=bool)
        self._free: list[int] = list(range(len(self._codes) - 1, -1, -1))

    @property
    def perceptual(self) -> bool:
        return self.phash_distance >= 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pixel_sha256: str, phash: int | None = None) -> ImageCacheHit[V] | None:
        """The entry of these exact pixels, else the nearest pHash within the distance, else None."""
        with self._lock:
            e = self._entries.get(pixel_sha256)
            if e is not None:
                self._entries.move_to_end(pixel_sha256)
                return ImageCacheHit("exact", e.value, 0, e.snapshot, e.provisional)
            if phash is None or not self.perceptual or not self._valid.any():
                return None
            dist = _popcount(self._codes ^ np.uint64(phash)).astype(np.int16)
            dist[~self._valid] = 99
            slot = int(np.argmin(dist))
            d = int(dist[slot])
            if d > self.phash_distance:
                return None
            key = self._owners[slot]
            e = self._entries[key]
            self._entries.move_to_end(key)
            return ImageCacheHit("perceptual", e.value, d, e.snapshot, e.provisional)

    def put(self, pixel_sha256: str, phash: int | None, value: V, *, snapshot: int | None = None,
            provisional: bool = False) -> None:
        """Store (or replace) the answer for these pixels."""
        with self._lock:
            if provisional and self._floor is not None and snapshot is not None and snapshot < self._floor:
                return  # computed on a snapshot that has since been replaced
            old = self._entries.pop(pixel_sha256, None)
            if old is not None:
                self._release(old)
            while len(self._entries) >= self.capacity:
                _, victim = self._entries.popitem(last=False)
                self._release(victim)
            slot = -1
            if phash is not None and self.perceptual:
                slot = self._alloc()
                self._codes[slot] = np.uint64(phash)
                self._owners[slot] = pixel_sha256
                self._valid[slot] = True
            self._entries[pixel_sha256] = _Entry(value, phash, slot, snapshot, bool(provisional))

    def drop_provisional(self, older_than: int | None = None) -> int:
        """Forget provisional entries (a newer index snapshot may answer them better); returns how many.

        With ``older_than`` (a snapshot id), only those computed on an older snapshot go, and from then on
        :meth:`put` ignores provisional answers of older snapshots (a batch that started before the swap).
        """
        with self._lock:
            if older_than is not None:
                self._floor = older_than if self._floor is None else max(self._floor, older_than)
            stale = [k for k, e in self._entries.items()
                     if e.provisional and (older_than is None or e.snapshot is None or e.snapshot < older_than)]
            for k in stale:
                self._release(self._entries.pop(k))
            return len(stale)

    def clear(self) -> None:
        with self._lock:
            for e in self._entries.values():
                self._release(e)
            self._entries.clear()

    # -- slots of the perceptual array -----------------------------------------------------------
    def _alloc(self) -> int:
        if not self._free:
            n = len(self._codes)
            grow = min(max(n, 1024), self.capacity + 1 - n) if n < self.capacity + 1 else n
            self._codes = np.concatenate([self._codes, np.zeros(grow, np.uint64)])
            self._valid = np.concatenate([self._valid, np.zeros(grow, bool)])
            self._owners.extend([None] * grow)
            self._free.extend(range(n + grow - 1, n - 1, -1))
        return self._free.pop()

    def _release(self, e: _Entry[V]) -> None:
        if e.slot >= 0:
            self._valid[e.slot] = False
            self._owners[e.slot] = None
            self._free.append(e.slot)


__all__ = ["DEFAULT_PHASH_DISTANCE", "ImageCache", "ImageCacheHit", "hamming", "perceptual_hash"]
