"""PDQ, Meta's perceptual hash (the one moderation hash-sharing uses), with its quality score.

The image-level cache of the serving layer uses the quality to refuse perceptual matches of low-information
images: a flat colour or a smooth gradient has almost no structure, so every such image lies within a few bits
of every other one under any perceptual hash (pHash included), and a cache that matched them would hand one
client's answer to another client's unrelated image. Each served result publishes its PDQ hash and quality so
that downstream systems can match it against hash banks.

The hash is computed with the ``pdqhash`` package (Meta's C++ reference through bindings) on the image shrunk
to at most :data:`PDQ_SIDE` pixels a side, as the reference implementation's own tools do for speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PDQ_SIDE = 512
#: Meta's recommended minimum: hashes of quality below this are not reliable enough to match on
PDQ_MIN_QUALITY = 50


@dataclass(frozen=True)
class PDQ:
    """A 256-bit PDQ hash (64 hex digits) and its quality (0..100)."""

    hash_hex: str
    quality: int

    @property
    def reliable(self) -> bool:
        return self.quality >= PDQ_MIN_QUALITY


def pdq_hash(image: Image.Image) -> PDQ:
    """The PDQ hash and quality of an RGB image."""
    import pdqhash

    if max(image.size) > PDQ_SIDE:
        image = image.copy()
        image.thumbnail((PDQ_SIDE, PDQ_SIDE), Image.Resampling.BILINEAR)
    bits, quality = pdqhash.compute(np.asarray(image.convert("RGB")))
    packed = np.packbits(np.asarray(bits, dtype=np.uint8))
    return PDQ(packed.tobytes().hex(), int(quality))


def pdq_distance(a: str, b: str) -> int:
    """Hamming distance of two PDQ hashes given in hex."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


__all__ = ["PDQ", "PDQ_MIN_QUALITY", "PDQ_SIDE", "pdq_distance", "pdq_hash"]
