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
* Ray's per-image overhead, measured apart because it is far below this machine's noise: Ray Data's cost per work
  unit (the slope between no-op jobs of 200 and 1,600 units on one actor) and writing and reading a shard of a
  production unit's shape (8 prompts x γ 4 x 80 floats); and the single writer's ingest time per image, taken
  from the builds above;
* the projection: ``images x (GPU s/image + overhead) / GPUs`` for ``--project-images`` (default 10^6 prompts x
  6 generators x γ 4) with the GPU figure ``--gpu-seconds``, and the ingest's serial floor ``images x ingest
  s/image`` (ingest runs beside the build; fixed costs such as actor starts vanish at that size).

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resynth_index  # noqa: F401 - torchvision compatibility step first
from resynth_index import Attributor
from resynth_index.attribution.engine import PACKAGED_PROMPTS, read_prompt_file
from resynth_index.scale.ray_build import import_ray, ray_build
from resynth_index.store.shards import read_shard, write_shard

#: Stable Diffusion 1.5 at 512 px and SDXL at 1024 px, 50 steps, fp16, diffusers with torch 2.1 SDPA, one A100
#: 80 GB SXM: 1.591 s and 5.933 s per image end to end (fal-ai/stable-diffusion-benchmarks, README table). Their
#: mean is the default: a set of six generators, half SD-1.5-class and half SDXL-class.
GPU_SECONDS_DEFAULT = (1.591 + 5.933) / 2


class _NoOp:
    """A worker that does nothing: what Ray Data costs per unit, without models."""

    def __call__(self, batch):
        return {"n": batch["n"]}


def ray_seconds_per_unit(ray, units: int = 1600) -> float:
    """Ray Data's cost per work unit (one actor, batch_size 1, 4 units per block as in a large build): the slope
    between a short and a long no-op job after a warm-up job, so that the actor's start cancels out."""
    from ray.data import ActorPoolStrategy

    def job(n):
        t0 = time.perf_counter()
        ds = ray.data.from_items([{"n": i} for i in range(n)], override_num_blocks=max(1, n // 4))
        ds = ds.map_batches(_NoOp, batch_size=1, compute=ActorPoolStrategy(size=1), num_cpus=1)
        assert sum(1 for _ in ds.iter_rows()) == n
        return time.perf_counter() - t0

    job(units // 8)  # warm-up: the first job pays for Ray Data's own start
    short, long = job(units // 8), job(units)
    return max(0.0, (long - short) / (units - units // 8))


def shard_seconds_per_image(root: Path, prompts: int = 8, gamma: int = 4, dim: int = 80, repeat: int = 50) -> float:
    """Writing one shard (fsync included) and reading it back, per image, at a production unit's shape."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((prompts, gamma, dim)).astype(np.float32)
    names = [f"prompt {i}" for i in range(prompts)]
    seeds = [[i * 256 + j for j in range(gamma)] for i in range(prompts)]
    t0 = time.perf_counter()
    for b in range(repeat):
        path = write_shard(root, generator="g", namespace="0" * 64, embedder="e", build="bench", batch=b,
                           prompts=names, seeds=seeds, vectors=vectors)
        read_shard(path)
    return (time.perf_counter() - t0) / (repeat * prompts * gamma)


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
    return time.perf_counter() - t0, compute, report.images, 0.0


def ray_variant(config, index, staging, prompts, workers):
    """(wall s, compute s summed over units, images) of a Ray build with ``workers`` actors, ingest included."""
    t0 = time.perf_counter()
    with Attributor(config, index=index, device="cpu") as engine:
        rb = ray_build(engine, prompts, staging=staging, workers=workers, progress=False)
    assert rb.ingest is not None and rb.ingest.added == rb.images and not rb.ingest.refused
    return time.perf_counter() - t0, rb.worker_seconds, rb.images, rb.ingest.seconds


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
    runs: dict[str, list[tuple[float, float, int, float]]] = {name: [] for name in variants}
    load = os.getloadavg()[0]
    try:
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        print(f"ray.init(num_cpus=2): {time.perf_counter() - t0:.1f}s (not counted)", file=sys.stderr)
        unit_s = ray_seconds_per_unit(ray)
        shard_s = shard_seconds_per_image(root / "shards")
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
    measured = (ray_compute - local_compute) / images
    print(f"\nRay, 1 worker against the local build: {(ray_wall - local_wall) / images:+.3f} s/image end to end "
          f"({ray_wall - local_wall:+.1f} s over {images} images, mostly the actor's start); compute per image in "
          f"the worker {measured:+.3f} s against the local build's (within this machine's noise)")
    ingest_s = statistics.median(r[3] for name in variants if name != "local build" for r in runs[name]) / images
    unit_images = 8 * 4  # a production unit: build.batch_size 8 prompts x γ 4
    overhead = unit_s / unit_images + shard_s
    print(f"Ray's per-image overhead on the cluster, measured apart: Ray Data {1000 * unit_s:.1f} ms per unit "
          f"({1000 * unit_s / unit_images:.2f} ms/image at {unit_images} images per unit) + shard write and read "
          f"{1000 * shard_s:.2f} ms/image = {1000 * overhead:.2f} ms/image. The single writer's ingest: "
          f"{1000 * ingest_s:.2f} ms/image here ({len(config['generators'])} images per prompt; per-prompt work "
          f"spreads over 24 images per prompt in the example), a serial floor that overlaps the build")
    total = args.project_images
    per_image = args.gpu_seconds + overhead
    floor = total * ingest_s
    print(f"\nProjection for {total:.3g} images at {args.gpu_seconds:.2f} GPU-s/image + {1000 * overhead:.2f} ms/image; "
          f"the ingest floor is {floor / 3600:,.0f} h at the rate measured here:\n")
    print("| GPUs | cluster time | with the ingest floor |")
    print("|---|---|---|")
    for gpus in (1, 8, 64, 256):
        seconds = total * per_image / gpus
        print(f"| {gpus} | {seconds / 86400:.1f} days ({seconds / 3600:,.0f} h) | "
              f"{max(seconds, floor) / 86400:.1f} days |")


if __name__ == "__main__":
    main()
