"""Calibrate the image cache's perceptual threshold (``serve.phash_distance``, 64-bit pHash Hamming distance).

* **False matches** (a new image answered as a repost of another): the share of pairs of *distinct* images whose
  pHashes lie within the distance. Sets: zoo generator outputs (``--zoo`` prompts × the 4 zoo generators, one
  seed each: what the offline default serves) and scikit-image's sample photos.
* **Repost recall** (a re-encode found): the share of edited copies within the distance, for JPEG quality
  50/70/90, WebP 80, resize ×0.5/×0.8/×1.5, Gaussian blur 1 px, brightness +10%, and a 5% crop.

Usage: python benchmarks/image_hash.py [--zoo 40]
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index.serving.image_cache import hamming, perceptual_hash  # noqa: E402


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


EDITS = {
    "jpeg50": lambda im: _save(im, "JPEG", quality=50),
    "jpeg70": lambda im: _save(im, "JPEG", quality=70),
    "jpeg90": lambda im: _save(im, "JPEG", quality=90),
    "webp80": lambda im: _save(im, "WEBP", quality=80),
    "resize0.5": lambda im: im.resize((max(8, im.width // 2), max(8, im.height // 2)), Image.BICUBIC),
    "resize0.8": lambda im: im.resize((int(im.width * 0.8), int(im.height * 0.8)), Image.BICUBIC),
    "resize1.5": lambda im: im.resize((int(im.width * 1.5), int(im.height * 1.5)), Image.BICUBIC),
    "blur1": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
    "bright+10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "crop5%": lambda im: im.crop((im.width // 40, im.height // 40, im.width - im.width // 40, im.height - im.height // 40)),
}


def skimage_photos() -> list[Image.Image]:
    from skimage import data

    names = ["astronaut", "camera", "chelsea", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
             "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle_left", "page", "retina", "rocket",
             "text", "brick", "checkerboard", "clock", "logo"]  # no "cat": it is "chelsea" again
    out = []
    for n in names:
        try:
            a = getattr(data, n)()
        except Exception:  # noqa: BLE001 - optional downloads or missing names
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        out.append(Image.fromarray(np.asarray(a)).convert("RGB"))
    return out


def zoo_images(n_prompts: int) -> list[Image.Image]:
    import torch

    from resynth_index import Attributor
    from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file

    torch.set_num_threads(1)
    prompts = read_prompt_file(PACKAGED_PROMPTS)[:n_prompts]
    engine = Attributor(None, index="/nonexistent-unused", device="cpu")
    out = []
    for gi, g in enumerate(engine.config.generators):
        out += engine.generator(g.name).generate(prompts, [30_000_000 + gi * 1000 + i for i in range(len(prompts))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=int, default=40, help="prompts per zoo generator")
    args = ap.parse_args()
    t0 = time.perf_counter()
    sets = {"zoo": zoo_images(args.zoo), "photos": skimage_photos()}
    thresholds = [0, 2, 4, 6, 8, 10, 12]
    print(f"{'set':<8} {'images':>6} {'pairs':>7}  " + "  ".join(f"FM@{t:<3}" for t in thresholds) + "  min distance")
    for name, images in sets.items():
        hashes = [perceptual_hash(im) for im in images]
        d = np.array([hamming(a, b) for a, b in itertools.combinations(hashes, 2)])
        rates = "  ".join(f"{(d <= t).mean():6.4f}" for t in thresholds)
        print(f"{name:<8} {len(images):>6} {len(d):>7}  {rates}  {d.min()}")
    print("\nrepost recall (share of edited copies within the distance):")
    print(f"{'edit':<11} " + "  ".join(f"@{t:<5}" for t in thresholds))
    allimgs = sets["zoo"] + sets["photos"]
    for edit, fn in EDITS.items():
        d = np.array([hamming(perceptual_hash(im), perceptual_hash(fn(im))) for im in allimgs])
        print(f"{edit:<11} " + "  ".join(f"{(d <= t).mean():6.3f}" for t in thresholds))
    print(f"\n({len(sets['zoo'])} zoo images at 64x64, {len(sets['photos'])} scikit-image photos; "
          f"{time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
