"""Labelled sample images from the zoo generators, for demos, accuracy tests and the ``rindex eval`` benchmark.

Samples use prompts and seeds that ``rindex build`` never uses (``data/sample_prompts.txt``, seeds from
:data:`SAMPLE_SEED_BASE`), carry no prompt in their metadata, and are named by a hash so that the file name does
not reveal the source. ``manifest.csv`` beside them records file, generator, prompt and seed.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import GeneratorSettings

SAMPLE_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "sample_prompts.txt"
SAMPLE_SEED_BASE = 1_000_003  # far from the candidate seeds (seed_base .. seed_base + gamma - 1)
MANIFEST_FIELDS = ("file", "generator", "prompt", "seed")


def write_samples(
    attributor, outdir: str | Path, *, per_generator: int = 3, generators: Sequence[GeneratorSettings] | None = None
) -> Path:
    """Write ``per_generator`` images from each configured generator into ``outdir``; return the manifest path."""
    from ..attribution.engine import read_prompt_file

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prompts = read_prompt_file(SAMPLE_PROMPTS)
    rows = []
    for gi, g in enumerate(generators or attributor.config.generators):
        chosen = [prompts[(gi * per_generator + k) % len(prompts)] for k in range(per_generator)]
        seeds = [SAMPLE_SEED_BASE + gi * 1000 + k for k in range(per_generator)]
        images = attributor.generator(g.name).generate(chosen, seeds)
        for prompt, seed, image in zip(chosen, seeds, images):
            digest = hashlib.sha256(f"{g.name}|{prompt}|{seed}".encode()).hexdigest()[:12]
            name = f"sample_{digest}.png"
            image.save(outdir / name)  # PIL writes no text chunks unless asked: no prompt leaks
            rows.append({"file": name, "generator": g.name, "prompt": prompt, "seed": seed})
    rows.sort(key=lambda r: r["file"])
    manifest = outdir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def read_manifest(path: str | Path) -> dict[str, str]:
    """File name -> true generator, from a manifest written by :func:`write_samples` (or by hand)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return {row["file"]: row["generator"] for row in csv.DictReader(fh)}


# ------------------------------------------------------------------------------------------------ the eval benchmark
@dataclass(frozen=True)
class BenchmarkItem:
    """One labelled query of the ``rindex eval`` benchmark: a row of its ``manifest.csv``."""

    file: str
    generator: str
    prompt: str
    seed: int


def build_benchmark(attributor, outdir: str | Path, *, per_generator: int, generators: Sequence[str] | None = None) -> Path:
    """Write the benchmark (held-out prompts and seeds, hashed names, no metadata) and return its manifest.

    It is :func:`write_samples`: prompts from ``data/sample_prompts.txt`` (never in the packaged build list),
    seeds from ``SAMPLE_SEED_BASE`` (never a candidate seed).
    """
    gens = [attributor.config.generator(n) for n in generators] if generators else None
    return write_samples(attributor, outdir, per_generator=per_generator, generators=gens)


def read_benchmark(manifest: str | Path) -> list[BenchmarkItem]:
    """Every row of a benchmark manifest (``prompt`` and ``seed`` may be missing in a hand-written one)."""
    with Path(manifest).open(newline="", encoding="utf-8") as fh:
        return [BenchmarkItem(r["file"], r["generator"], r.get("prompt", ""), int(r.get("seed") or 0)) for r in csv.DictReader(fh)]
