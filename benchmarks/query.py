"""Query-path benchmark on the embedded offline default (CPU).

Prints these ratios, each measured within this one run (the machine is shared and noisy):

1. hit queries (zoo samples, label-inverted): the new path (EfficientNet-Lite0 run once per image for the label
   and the embedding, in the default runtime, and in torch) against the old one (two passes, torch eager;
   target: at most 0.7x) and against the bound, decode + one forward pass in the same runtime (target: within
   1.1x); and the engine's overhead over decode + inversion + embedding alone;
2. a repeated query against its first run, which missed and resynthesized;
3. a stream of ``--stream`` queries drawn Zipf-like over ``--prompts`` prompts (cold cache; images carry their
   prompt in PNG metadata, as front ends write it) against regenerating for every query. The
   regenerate-every-time cost is the mean time of a miss measured on ``--miss-samples`` queries, times the
   stream length.

Usage: python benchmarks/query.py [--stream 500 --prompts 50 --threads 1]
       python benchmarks/query.py --hits-only        # section 1 alone (about a minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resynth_index import Attributor  # noqa: E402
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file  # noqa: E402
from resynth_index.images.decode import decode_image  # noqa: E402
from resynth_index.evaluation.samples import read_manifest, write_samples  # noqa: E402
from resynth_index.models.embedders import embedder_from_config  # noqa: E402


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
    ap.add_argument("--threads", type=int, default=1, help="torch (and ONNX Runtime) threads")
    ap.add_argument("--hits-only", action="store_true", help="only section 1 (hit queries)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engine = Attributor(None, index=tmp / "index", device="cpu")
        engine.build(read_prompt_file(PACKAGED_PROMPTS)[:4], progress=False)
        write_samples(engine, tmp / "samples", per_generator=2)
        paths = sorted(str(tmp / "samples" / f) for f in read_manifest(tmp / "samples" / "manifest.csv"))

        for p in paths:  # write the samples' label prompts through before timing hits
            engine.attribute([p])
        rows.extend(hit_rows(engine, paths))
        if args.hits_only:
            engine.close()
            return print_rows(rows)

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

    print_rows(rows)


def hit_rows(engine, paths: list[str]) -> list[tuple[str, str]]:
    """Section 1: hit queries on the old path, the new one (torch and the default runtime), and their bounds.

    Each path is the engine with the embedder of that runtime and ``share_forward`` on or off; the bound of a
    runtime is decode + one forward pass giving the embedding and the logits (``embed_with``). All of them are
    timed in turns, several rounds, the best round's median kept."""
    default = engine.embedder
    # the configured embedding (so the index's namespaces match), run in eager torch
    torch_emb = embedder_from_config(dataclasses.replace(engine.config.embedder, runtime="torch"), "cpu")
    paths_by_name = {
        "old: two passes, torch": (torch_emb, False),
        "new: one pass, torch": (torch_emb, True),
        f"new: one pass, {default.runtime}": (default, True),
    }

    def engine_hits(embedder, share):
        def run():
            engine.models.embedder = embedder
            embedder.share_forward = share
            for p in paths:
                assert engine.attribute([p])[0].cache == "hit"
        return run

    def bound(embedder):
        def run():
            for p in paths:
                embedder.embed_with([decode_image(p).image], "logits", [0])
        return run

    def two_steps(embedder):  # decode + inversion + embedding alone, as the engine runs them
        def run():
            engine.models.embedder = embedder
            for p in paths:
                d = decode_image(p)
                engine.inverter.invert([d])
                embedder.embed([d.image])
        return run

    fns = {name: engine_hits(e, s) for name, (e, s) in paths_by_name.items()}
    fns["bound: decode + one forward, torch"] = bound(torch_emb)
    fns[f"bound: decode + one forward, {default.runtime}"] = bound(default)
    fns["decode+invert+embed alone, torch"] = two_steps(torch_emb)
    best = {name: float("inf") for name in fns}
    for _ in range(3):
        for name, fn in fns.items():
            fn()  # warm
            best[name] = min(best[name], timed(fn, 3) / len(paths))
    engine.models.embedder, default.share_forward, torch_emb.share_forward = default, True, True

    old = best["old: two passes, torch"]
    out = [(f"hit query, {name} (ms/query)", f"{best[name] * 1e3:.1f}") for name in fns]
    for runtime in dict.fromkeys(("torch", default.runtime)):
        new = best[f"new: one pass, {runtime}"]
        out.append((f"new ({runtime}) / old", f"{new / old:.2f}x  (target <= 0.7x)"))
        out.append((f"new ({runtime}) / bound", f"{new / best[f'bound: decode + one forward, {runtime}']:.2f}x"
                    "  (target <= 1.1x)"))
    out.append(("engine overhead on hits (old path, torch)",
                f"{(old / best['decode+invert+embed alone, torch'] - 1) * 100:+.1f}%  (target <= +10%)"))
    return out


def print_rows(rows) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
