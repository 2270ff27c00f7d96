"""PDQ beside pHash for the image cache: false matches, repost recall, and poisoning by low-information images.

* **Low-information images** (flat colours, linear and radial gradients, 2-colour halves): how many distinct
  ones lie within the perceptual distance of an earlier, unrelated one (each would receive that image's answer
  and prompt), with pHash at ``serve.phash_distance`` 4, with PDQ at Meta's suggested 31 of 256 bits, and with
  the cache's rule (PDQ quality >= 50, then pHash).
* **Distinct photos** (scikit-image's samples) and **reposts** (the edits of ``benchmarks/image_hash.py``) under
  both hashes.

Usage: python benchmarks/pdq_vs_phash.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from image_hash import EDITS, skimage_photos  # noqa: E402

from resynth_index.images.pdq import PDQ_MIN_QUALITY, pdq_distance, pdq_hash  # noqa: E402
from resynth_index.serving.image_cache import hamming, perceptual_hash  # noqa: E402

PHASH_D, PDQ_D = 4, 31


def low_information(n: int = 60, size: int = 256) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    ramp = np.linspace(0, 1, size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        kind = k % 4
        if kind == 0:
            arr = np.broadcast_to(a, (size, size, 3))
        elif kind == 1:
            t = ramp[None, :, None] if k % 8 == 1 else ramp[:, None, None]
            arr = a * (1 - t) + b * t
        elif kind == 2:
            t = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[..., None] / 0.71
            arr = a * (1 - t) + b * t
        else:
            arr = np.where((xx < 0.5)[..., None], a, b)
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def main() -> None:
    flat = low_information()
    ph = [perceptual_hash(im) for im in flat]
    pq = [pdq_hash(im) for im in flat]
    poisoned_phash = sum(any(hamming(ph[i], ph[j]) <= PHASH_D for j in range(i)) for i in range(len(flat)))
    poisoned_pdq = sum(any(pdq_distance(pq[i].hash_hex, pq[j].hash_hex) <= PDQ_D for j in range(i))
                       for i in range(len(flat)))
    gated = sum(pq[i].quality >= PDQ_MIN_QUALITY and any(hamming(ph[i], ph[j]) <= PHASH_D for j in range(i)
                                                         if pq[j].quality >= PDQ_MIN_QUALITY)
                for i in range(len(flat)))
    print(f"low-information images: {len(flat)}; PDQ quality max {max(p.quality for p in pq)}, "
          f"median {int(np.median([p.quality for p in pq]))}")
    print("| hash | low-information images matching an earlier unrelated one |")
    print("|---|---|")
    print(f"| pHash <= {PHASH_D} | {poisoned_phash} of {len(flat)} |")
    print(f"| PDQ <= {PDQ_D} | {poisoned_pdq} of {len(flat)} |")
    print(f"| the cache's rule (PDQ quality >= {PDQ_MIN_QUALITY}, then pHash <= {PHASH_D}) | {gated} of {len(flat)} |")

    photos = skimage_photos()
    pph = [perceptual_hash(im) for im in photos]
    ppq = [pdq_hash(im) for im in photos]
    pairs = list(itertools.combinations(range(len(photos)), 2))
    fm_ph = sum(hamming(pph[i], pph[j]) <= PHASH_D for i, j in pairs)
    fm_pq = sum(pdq_distance(ppq[i].hash_hex, ppq[j].hash_hex) <= PDQ_D for i, j in pairs)
    low_q = sum(p.quality < PDQ_MIN_QUALITY for p in ppq)
    print(f"\nphotos: {len(photos)} ({low_q} below PDQ quality {PDQ_MIN_QUALITY}); false matches among "
          f"{len(pairs)} distinct pairs: pHash {fm_ph}, PDQ {fm_pq}")
    print("\n| edit | pHash <= 4 recall | PDQ <= 31 recall |")
    print("|---|---|---|")
    for name, edit in EDITS.items():
        ok_ph = ok_pq = 0
        for im, h1, q1 in zip(photos, pph, ppq):
            e = edit(im)
            ok_ph += hamming(h1, perceptual_hash(e)) <= PHASH_D
            ok_pq += pdq_distance(q1.hash_hex, pdq_hash(e).hash_hex) <= PDQ_D
        print(f"| {name} | {ok_ph / len(photos):.2f} | {ok_pq / len(photos):.2f} |")


if __name__ == "__main__":
    main()
