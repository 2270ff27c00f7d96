"""Scale-out benchmark: a local build against a Ray Data build with 1 and 2 workers, in one run, and the projected
cluster time of a large prebuild from measured per-image costs.

Each build starts from an empty index and the same prompts (zoo generators at their default 10 steps and 64 px,
γ = 1, one thread per process). The variants run interleaved for ``--rounds`` rounds and each figure is the
median over rounds (the machine is shared). The Ray builds run on one local Ray instance started beforehand (its
start is printed, not counted: a cluster is already up); they include starting the worker actors and end with
the ingest. Columns:

* wall time and images/s end to end, and the ratio to the local build;
* compute s/image: generating and embedding (and, in Ray workers, writing the shard), models already loaded;
  the local build's is ``engine.build`` after loading every model, the workers' their summed unit times;
* fixed s: everything else (model loading, actor start, scheduling, ingest);
* the projection: ``images x (GPU s/image + Ray's per-image overhead) / GPUs`` for ``--project-images``
  (default 10^6 prompts x 6 generators x γ 4) with the GPU figure ``--gpu-seconds``; Ray's per-image overhead is
  the 1-worker compute s/image minus the local one (its fixed costs vanish over millions of images).

Usage: python benchmarks/scale.py [--prompts 16] [--rounds 2] [--generators tiny-sd,tiny-sdxl] [--gpu-seconds 3.76]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resynth_index  # noqa: F401 - torchvision compatibility step first
from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.scale.ray_build import import_ray, ray_build

#: Stable Diffusion 1.5 at 512 px and SDXL at 1024 px, 50 steps, fp16, diffusers with torch 2.1 SDPA, one A100
#: 80 GB SXM: 1.591 s and 5.933 s per image end to end (fal-ai/stable-diffusion-benchmarks, README table). Their
#: mean is the default: a set of six generators, half SD-1.5-class and half SDXL-class.
GPU_SECONDS_DEFAULT = (1.591 + 5.933) / 2


def local_build(config, index, prompts):
    """(wall s, compute s, images) of a local build: load every model, then ``engine.build``."""
    t0 = time.perf_counter()
    with Attributor(config, index=index, device="cpu") as engine:
        engine.namespaces, engine.cache  # noqa: B018 - the embedder, the prompt embedder, the index
        for name in engine.runnable:
            engine.generator(name)
        t1 = time.perf_counter()
        report = engine.build(prompts, progress=False)
        compute = time.perf_counter() - t1
    return time.perf_counter() - t0, compute, report.images


def ray_variant(config, index, staging, prompts, workers):
    """(wall s, compute s summed over units, images) of a Ray build with ``workers`` actors, ingest included."""
    t0 = time.perf_counter()
    with Attributor(config, index=index, device="cpu") as engine:
        rb = ray_build(engine, prompts, staging=staging, workers=workers, progress=False)
    assert rb.ingest is not None and rb.ingest.added == rb.images and not rb.ingest.refused
    return time.perf_counter() - t0, rb.worker_seconds, rb.images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--generators", default="tiny-sd,tiny-sdxl")
    ap.add_argument("--gpu-seconds", type=float, default=GPU_SECONDS_DEFAULT,
                    help="seconds per image of one generator on one GPU (default: the A100 figure above)")
    ap.add_argument("--project-images", type=float, default=1e6 * 6 * 4)
    args = ap.parse_args()
    ray = import_ray()
    prompts = read_prompt_file(PACKAGED_PROMPTS)[: args.prompts]
    config = {"threads": 1, "generators": [{"name": g, "source": f"zoo:{g}"} for g in args.generators.split(",")]}
    root = Path(tempfile.mkdtemp(prefix="rindex-scale-"))
    variants = {"local build": 0, "Ray, 1 worker": 1, "Ray, 2 workers": 2}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    load = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        print(f"ray.init(num_cpus=2): {time.perf_counter() - t0:.1f}s (not counted)", file=sys.stderr)
        for r in range(args.rounds):
            for name, workers in variants.items():
                index, staging = root / f"{r}-{workers}", root / f"{r}-{workers}-staging"
                run = (local_build(config, index, prompts) if workers == 0
                       else ray_variant(config, index, staging, prompts, workers))
                runs[name].append(run)
                print(f"round {r + 1} {name}: wall {run[0]:.1f}s, compute {run[1]:.1f}s", file=sys.stderr)
                shutil.rmtree(index), shutil.rmtree(staging, ignore_errors=True)
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    images = runs["local build"][0][2]
    assert all(run[2] == images for rs in runs.values() for run in rs)
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in runs.items()}
    local_wall, local_compute = med["local build"]
    print(f"\n{images} images ({len(prompts)} prompts x {len(config['generators'])} zoo generators, γ 1, 64 px, "
          f"10 steps), 1 thread per process, median of {args.rounds} interleaved rounds; load average "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| build | wall s | images/s | vs local | compute s/image | fixed s (loading, start, scheduling, ingest) |")
    print("|---|---|---|---|---|---|")
    for name, workers in variants.items():
        wall, compute = med[name]
        fixed = wall - compute / max(1, workers)
        print(f"| {name} | {wall:.1f} | {images / wall:.2f} | {local_wall / wall:.2f}x | {compute / images:.3f} | "
              f"{fixed:.1f} |")
    ray_wall, ray_compute = med["Ray, 1 worker"]
    overhead = (ray_compute - local_compute) / images
    print(f"\nRay, 1 worker against the local build: {(ray_wall - local_wall) / images:+.3f} s/image end to end "
          f"({ray_wall - local_wall:+.1f} s over {images} images); per image in the worker {overhead:+.3f} s "
          f"(shard writing and batch handling); the rest is fixed cost")
    total = args.project_images
    per_image = args.gpu_seconds + max(0.0, overhead)
    print(f"\nProjection for {total:.3g} images at {args.gpu_seconds:.2f} GPU-s/image + "
          f"{max(0.0, overhead):.3f} s/image Ray overhead:\n")
    print("| GPUs | projected time |")
    print("|---|---|")
    for gpus in (1, 8, 64, 256):
        seconds = total * per_image / gpus
        print(f"| {gpus} | {seconds / 86400:.1f} days ({seconds / 3600:,.0f} h) |")


if __name__ == "__main__":
    main()
