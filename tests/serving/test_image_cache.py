"""Image-level cache (exact pixels + pHash) and the builder's prompt queue: fast unit tests, no models."""

import io
import threading

import numpy as np
import pytest

pytest.importorskip("imagehash")

from PIL import Image, ImageFilter  # noqa: E402

from resynth_index.errors import ConfigError  # noqa: E402
from resynth_index.serving.image_cache import ImageCache, hamming, perceptual_hash  # noqa: E402
from resynth_index.images.decode import decode_image  # noqa: E402
from resynth_index.serving.build_queue import BuildQueue  # noqa: E402
from resynth_index.serving.errors import classify_image_error  # noqa: E402


def _photo(seed: int, size=(96, 96)) -> Image.Image:
    """A smooth random picture (low-frequency structure, like a photo; not white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_exact_then_perceptual_then_miss():
    cache = ImageCache(capacity=100, phash_distance=4)
    a = decode_image(_photo(1))
    cache.put(a.pixel_sha256, perceptual_hash(a.image), {"prediction": "g1"}, snapshot=3)
    hit = cache.get(a.pixel_sha256, perceptual_hash(a.image))
    assert (hit.kind, hit.value, hit.distance, hit.snapshot) == ("exact", {"prediction": "g1"}, 0, 3)

    for variant in (_jpeg(a.image, 75), a.image.resize((150, 150)), a.image.filter(ImageFilter.GaussianBlur(0.6))):
        v = decode_image(variant)
        assert v.pixel_sha256 != a.pixel_sha256
        hit = cache.get(v.pixel_sha256, perceptual_hash(v.image))
        assert hit is not None and hit.kind == "perceptual" and hit.distance <= 4

    other = decode_image(_photo(2))
    assert hamming(perceptual_hash(other.image), perceptual_hash(a.image)) > 4
    assert cache.get(other.pixel_sha256, perceptual_hash(other.image)) is None


def test_exact_only_and_lru_eviction():
    cache = ImageCache(capacity=3, phash_distance=-1)
    for i in range(5):
        cache.put(f"k{i}", i, i)
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4").value == 4
    assert cache.get("nope", 4) is None  # perceptual matching is off
    cache.get("k2")  # touch: k3 becomes the oldest
    cache.put("k5", 5, 5)
    assert cache.get("k3") is None and cache.get("k2").value == 2


def test_perceptual_slots_are_reused_after_eviction():
    cache = ImageCache(capacity=2, phash_distance=0)
    for i in range(50):
        cache.put(f"k{i}", 1 << (i % 64), i)
    assert len(cache) == 2
    assert cache.get("x", 1 << 49).value == 49 and cache.get("x", 1 << 10) is None


def test_provisional_entries_are_dropped_on_swap_and_late_ones_refused():
    cache = ImageCache(capacity=10, phash_distance=2)
    cache.put("old", 1, "miss-answer", snapshot=5, provisional=True)
    cache.put("firm", 2, "hit-answer", snapshot=5)
    assert cache.drop_provisional(older_than=6) == 1
    assert cache.get("old") is None and cache.get("firm").value == "hit-answer"
    cache.put("late", 3, "miss-answer", snapshot=5, provisional=True)  # batch begun before the swap
    assert cache.get("late") is None
    cache.put("new", 4, "miss-answer", snapshot=6, provisional=True)
    assert cache.get("new").provisional


def test_thread_safety_smoke():
    cache = ImageCache(capacity=64, phash_distance=3)

    def work(k):
        for i in range(300):
            cache.put(f"{k}-{i}", (k << 32) | i, i)
            cache.get(f"{k}-{i - 1}", (k << 32) | i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 64


def test_bad_settings_raise():
    with pytest.raises(ConfigError):
        ImageCache(capacity=0)
    with pytest.raises(ConfigError):
        ImageCache(phash_distance=65)


def test_build_queue_claim_done_and_orphans(tmp_path):
    q = BuildQueue(tmp_path)
    assert q.pending() == 0 and q.claim() == []
    q.put(["a cat", "a dog"])
    q.put(["a fox"])
    assert q.pending() == 3
    claims = q.claim()
    assert [p for _, p in claims] == [["a cat", "a dog", "a fox"]]
    q.put(["a bird"])  # arrives while the builder works: stays queued
    assert q.pending() == 4
    # a crashed builder never called done(): its claim is picked up again, oldest first
    again = q.claim()
    assert [p for _, p in again] == [["a cat", "a dog", "a fox"], ["a bird"]]
    for path, _ in again:
        q.done(path)
    assert q.pending() == 0


def test_classify_image_errors():
    from resynth_index.errors import ImageError

    png = io.BytesIO()
    _photo(3).save(png, format="PNG")
    for data, status in ((b"hello world", 415), (b"", 415), (png.getvalue()[:300], 422)):
        with pytest.raises(ImageError) as exc:
            decode_image(data, name="x")
        assert classify_image_error(exc.value)[0] == status
    big = io.BytesIO()
    Image.new("1", (5000, 5000)).save(big, format="PNG")
    with pytest.raises(ImageError) as exc:
        decode_image(big.getvalue(), max_pixels=1_000_000, name="bomb")
    assert classify_image_error(exc.value) == (413, "bomb")
