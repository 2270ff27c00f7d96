"""Query-path benchmark on the embedded offline default (CPU).

Prints three ratios, each measured within this one run (the machine is shared and noisy):

1. engine overhead on cache hits: a full ``attribute([image])`` against decode + inversion + one embedding alone
   (target: at most 10% more);
2. a repeated query against its first run, which missed and resynthesized;
3. a stream of ``--stream`` queries drawn Zipf-like over ``--prompts`` prompts (cold cache; images carry their
   prompt in PNG metadata, as front ends write it) against regenerating for every query. The
   regenerate-every-time cost is the mean time of a miss measured on ``--miss-samples`` queries, times the
   stream length.

Usage: python benchmarks/query.py [--stream 500 --prompts 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file  # noqa: E402
from resynth_index.images.decode import decode_image  # noqa: E402
from resynth_index.evaluation.samples import read_manifest, write_samples  # noqa: E402


def prompt_images(engine, prompts, outdir: Path, seed_base: int) -> list[str]:
    """One image per prompt (generators in turn), carrying its prompt in a PNG ``parameters`` chunk."""
    gens = [g.name for g in engine.config.generators]
    paths = []
    for i, prompt in enumerate(prompts):
        img = engine.generator(gens[i % len(gens)]).generate([prompt], [seed_base + i])[0]
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nSteps: 10, Sampler: Euler, Seed: {seed_base + i}")
        path = outdir / f"prompted_{seed_base}_{i:03d}.png"
        img.save(path, pnginfo=info)
        paths.append(str(path))
    return paths


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", type=int, default=500)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--miss-samples", type=int, default=8)
    ap.add_argument("--zipf", type=float, default=1.1)
    args = ap.parse_args()
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine = Attributor(None, index=tmp / "index", device="cpu")
        engine.build(read_prompt_file(PACKAGED_PROMPTS)[:4], progress=False)
        write_samples(engine, tmp / "samples", per_generator=2)
        paths = sorted(str(tmp / "samples" / f) for f in read_manifest(tmp / "samples" / "manifest.csv"))

        # 2. first (miss) run against a repeat (hit), per image: each image carries a prompt never built.
        first, repeat = [], []
        fresh = read_prompt_file(PACKAGED_PROMPTS)[-args.miss_samples :]
        for p in prompt_images(engine, fresh, tmp, 7_000_000):
            t0 = time.perf_counter()
            r1 = engine.attribute([p])[0]
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r2 = engine.attribute([p])[0]
            repeat.append(time.perf_counter() - t0)
            assert (r1.cache, r2.cache) == ("miss", "hit"), (p, r1.cache, r2.cache)
        for p in paths:  # write the samples' label prompts through before timing hits
            engine.attribute([p])

        # 1. overhead on hits: the whole engine against decode + inversion + one embedding.
        def baseline():
            for p in paths:
                d = decode_image(p)
                engine.inverter.invert([d])
                engine.embedder.embed([d.image])

        def engine_hits():
            for p in paths:
                assert engine.attribute([p])[0].cache == "hit"

        baseline(), engine_hits()  # warm both
        t_base = min(timed(baseline, 5), timed(baseline, 5)) / len(paths)
        t_eng = min(timed(engine_hits, 5), timed(engine_hits, 5)) / len(paths)
        rows.append(("hit query, engine (ms/query)", f"{t_eng * 1e3:.1f}"))
        rows.append(("decode+invert+embed alone (ms/query)", f"{t_base * 1e3:.1f}"))
        rows.append(("engine overhead on hits", f"{(t_eng / t_base - 1) * 100:+.1f}%  (target <= +10%)"))
        rows.append(("first (miss) run (ms/query)", f"{statistics.median(first) * 1e3:.0f}"))
        rows.append(("repeat (hit) run (ms/query)", f"{statistics.median(repeat) * 1e3:.1f}"))
        rows.append(("repeat speedup", f"{statistics.median(first) / statistics.median(repeat):.1f}x"))
        engine.close()

        # 3. Zipf stream over cold prompts, images carrying their prompt in a 'parameters' chunk.
        prompts = read_prompt_file(PACKAGED_PROMPTS)[4 : 4 + args.prompts]
        stream_engine = Attributor(None, index=tmp / "stream-index", device="cpu")
        images = prompt_images(stream_engine, prompts, tmp, 5_000_000)
        rng = np.random.default_rng(0)
        weights = 1.0 / np.arange(1, len(prompts) + 1) ** args.zipf
        order = rng.choice(len(prompts), size=args.stream, p=weights / weights.sum())
        statuses = {"hit": 0, "near": 0, "miss": 0}
        t0 = time.perf_counter()
        for i in order:
            statuses[stream_engine.attribute([images[i]])[0].cache] += 1
        t_stream = time.perf_counter() - t0
        stream_engine.close()

        # Regenerating for every query: a miss on a fresh index, measured on a few queries.
        miss_times = []
        for j in range(args.miss_samples):
            with Attributor(None, index=tmp / f"cold-{j}", device="cpu") as cold:
                cold.attribute([images[j]])  # load models outside the timing
                t1 = time.perf_counter()
                assert cold.attribute([images[(j + 1) % len(images)]])[0].cache == "miss"
                miss_times.append(time.perf_counter() - t1)
        t_regen = statistics.mean(miss_times) * args.stream
        rows.append((f"stream of {args.stream} over {len(prompts)} prompts (s)", f"{t_stream:.1f}  {statuses}"))
        rows.append(("regenerate every query (s, estimated)", f"{t_regen:.1f}  ({statistics.mean(miss_times):.2f} s/miss)"))
        rows.append(("stream speedup", f"{t_regen / t_stream:.1f}x"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
