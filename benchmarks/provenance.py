"""Provenance benchmark (CPU): what the provenance stage costs when a file carries nothing, how the invisible
watermark detector fares, and what a replay costs. Each section prints a short table; ratios are measured within
this one run (the machine is shared and noisy).

1. added time per hit query, provenance on (the default) against every switch off, on the same warm index:
   64x64 zoo samples (too small for a watermark: only the container checks run) and 512x384 photos (the
   watermark decoder runs); target below 5% of a hit query;
2. watermark detection rate (decisive, the right message) on ``--photos`` crops of scikit-image's photos
   watermarked with each message by invisible-watermark's encoder, after JPEG 90/75/50 (4:2:0 and 4:4:4
   chroma) and resize x0.5;
3. false positives (any message decisive, and the verdict counts) on ``--negatives`` unwatermarked images:
   photo crops at several sizes, flipped, JPEG re-encoded, and zoo samples enlarged to 256 px;
4. replay of zoo samples written with ``--with-parameters``: accuracy and seconds per replay (every generator).

Usage: python benchmarks/provenance.py [--photos 60 --negatives 1000 --replay 3 --threads 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index import Attributor  # noqa: E402
from resynth_index.evaluation.samples import read_benchmark, write_samples  # noqa: E402
from resynth_index.provenance.watermark import MESSAGES, detect  # noqa: E402

OFF = {"provenance": {"c2pa": False, "watermark": False, "claims": False, "replay": False}}
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
               "immunohistochemistry", "colorwheel", "retina", "page", "camera", "moon", "text", "clock", "coins",
               "grass", "gravel", "brick", "cell")


def photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTO_NAMES:
        try:
            img = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a sample that needs a download (pooch) is skipped
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(1e-9, float(img.max() - img.min()))).astype(np.uint8)
        if min(img.shape[:2]) >= 256:
            out.append(np.ascontiguousarray(img))
    return out


def crops(images, n, rng, sizes=((256, 256), (384, 384), (512, 384))):
    out = []
    while len(out) < n:
        img = images[len(out) % len(images)]
        h, w = sizes[len(out) % len(sizes)]
        h, w = min(h, img.shape[0]), min(w, img.shape[1])
        y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
        out.append(np.ascontiguousarray(img[y : y + h, x : x + w]))
    return out


def jpeg(rgb, quality, subsampling=2):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buf).convert("RGB"))


def half(rgb):
    return np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2), Image.Resampling.BICUBIC))


def embed(rgb, bits):
    from imwatermark import WatermarkEncoder

    enc = WatermarkEncoder()
    enc.set_watermark("bits", list(bits))
    return np.ascontiguousarray(enc.encode(np.ascontiguousarray(rgb[:, :, ::-1]), "dwtDct")[:, :, ::-1])


def timed_hits(engine, paths, repeats):
    engine.attribute(paths[:2])  # warm
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:  # one at a time, as a stream
            engine.attribute([p])
        best.append((time.perf_counter() - t0) / len(paths))
    return min(best)


def section_overhead(tmp: Path, repeats: int) -> None:
    print("\n## 1. added time per hit query when the file carries nothing (ms per image, best of", repeats, "passes)")
    index = tmp / "index"
    zoo_dir = tmp / "zoo"
    photo_dir = tmp / "photos"
    photo_dir.mkdir()
    with Attributor(None, index=index) as engine:
        write_samples(engine, zoo_dir, per_generator=3)
        for k, img in enumerate(crops(photos(), 12, np.random.default_rng(1), sizes=((384, 512),))):
            Image.fromarray(img).save(photo_dir / f"photo{k}.png")
        sets = {"zoo 64x64": sorted(zoo_dir.glob("*.png")), "photos 384x512": sorted(photo_dir.glob("*.png"))}
        for paths in sets.values():  # misses resynthesize and write through: the timed passes hit
            engine.attribute(paths)
    print("| images | provenance off | provenance on | added | added / hit query |\n|---|---|---|---|---|")
    for label, paths in sets.items():
        times = {}
        for mode, cfg in (("off", OFF), ("on", None)):
            with Attributor(cfg, index=index, readonly=True) as engine:
                assert all(r.cache == "hit" for r in engine.attribute(paths)), "expected hits"
                times[mode] = timed_hits(engine, paths, repeats)
        added = times["on"] - times["off"]
        print(f"| {label} | {1000 * times['off']:.2f} | {1000 * times['on']:.2f} | {1000 * added:.2f} | "
              f"{100 * added / times['off']:.1f}% |")


def section_watermark(n: int) -> None:
    print(f"\n## 2. watermark detection rate ({n} photo crops per message, decisive and the right message)")
    base = crops(photos(), n, np.random.default_rng(2))
    transforms = {"none": lambda x: x, "jpeg 90 (4:2:0)": lambda x: jpeg(x, 90), "jpeg 75 (4:2:0)": lambda x: jpeg(x, 75),
                  "jpeg 50 (4:2:0)": lambda x: jpeg(x, 50), "jpeg 90 (4:4:4)": lambda x: jpeg(x, 90, 0),
                  "jpeg 75 (4:4:4)": lambda x: jpeg(x, 75, 0), "jpeg 50 (4:4:4)": lambda x: jpeg(x, 50, 0),
                  "resize x0.5": half}
    print("| transform | " + " | ".join(MESSAGES) + " |\n|---|" + "---|" * len(MESSAGES))
    marked = {m: [embed(x, bits) for x in base] for m, bits in MESSAGES.items()}
    for label, fn in transforms.items():
        row = []
        for m in MESSAGES:
            hits = 0
            for x in marked[m]:
                found = detect(fn(x), min_agreement=0.75)
                hits += found is not None and found.decisive and found.message == m
            row.append(f"{100 * hits / n:.0f}%")
        print(f"| {label} | " + " | ".join(row) + " |")


def section_false_positives(n: int, tmp: Path) -> None:
    print(f"\n## 3. false positives on {n} unwatermarked images")
    rng = np.random.default_rng(3)
    with Attributor(None, index=tmp / "fp-index") as engine:
        write_samples(engine, tmp / "fp-zoo", per_generator=12)
    zoo = [np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.Resampling.NEAREST))
           for p in sorted((tmp / "fp-zoo").glob("*.png"))]
    pool = crops(photos(), n - len(zoo), rng)
    variants = []
    for k, x in enumerate(pool):
        x = x[:, ::-1] if k % 2 else x
        variants.append(jpeg(x, (95, 85, 75, 60)[k % 4]) if k % 3 else np.ascontiguousarray(x))
    images = variants + zoo
    verdicts, decisive = Counter(), Counter()
    t0 = time.perf_counter()
    for x in images:
        found = detect(np.ascontiguousarray(x), min_agreement=0.75)
        verdicts[found.verdict] += 1
        if found.decisive:
            decisive[found.message] += 1
    seconds = (time.perf_counter() - t0) / len(images)
    print(f"images: {len(images)} ({len(zoo)} enlarged zoo samples); decisive: {sum(decisive.values())} "
          f"({dict(decisive)}); verdicts: {dict(verdicts)}; {1000 * seconds:.2f} ms per image")


def section_replay(per_generator: int, tmp: Path) -> None:
    print(f"\n## 4. replay of zoo samples with parameters ({per_generator} per generator)")
    with Attributor(None, index=tmp / "replay-index") as engine:
        manifest = write_samples(engine, tmp / "replay", per_generator=per_generator, with_parameters=True)
        truth = {b.file: b.generator for b in read_benchmark(manifest)}
        engine.attribute([tmp / "replay" / min(truth)])  # loads every generator
        t0 = time.perf_counter()
        results = engine.attribute(sorted((tmp / "replay").glob("*.png")))
        wall = time.perf_counter() - t0
    right = sum(r.prediction == truth[Path(r.path).name] and r.decided_by == "replay" for r in results)
    own = [r.provenance["replay"]["distances"][truth[Path(r.path).name]] for r in results]
    others = [d for r in results for g, d in r.provenance["replay"]["distances"].items()
              if g != truth[Path(r.path).name]]
    replay_s = [r.timings["replay"] for r in results]
    print(f"accuracy {right}/{len(results)}; own-generator RMSE max {max(own):.4f}, other generators' RMSE min "
          f"{min(others):.3f}; replay {np.mean(replay_s):.2f} s per image ({len(results[0].provenance['replay']['distances'])} "
          f"generators), {wall / len(results):.2f} s per query in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--negatives", type=int, default=1000)
    ap.add_argument("--replay", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sections", default="1,2,3,4")
    args = ap.parse_args()
    from resynth_index.devices import apply_thread_policy

    apply_thread_policy(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chosen = set(args.sections.split(","))
        if "1" in chosen:
            section_overhead(tmp, args.repeats)
        if "2" in chosen:
            section_watermark(args.photos)
        if "3" in chosen:
            section_false_positives(args.negatives, tmp)
        if "4" in chosen:
            section_replay(args.replay, tmp)


if __name__ == "__main__":
    main()
