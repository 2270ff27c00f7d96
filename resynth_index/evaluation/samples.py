"""Labelled sample images from the zoo generators, for demos, accuracy tests and the ``rindex eval`` benchmark.

Samples use prompts and seeds that ``rindex build`` never uses (``data/sample_prompts.txt``, seeds from
:data:`SAMPLE_SEED_BASE`), carry no prompt in their metadata, and are named by a hash so that the file name does
not reveal the source. ``manifest.csv`` beside them records file, generator, prompt and seed.

With ``with_parameters`` each PNG carries A1111-style ``parameters`` instead: prompt, steps, sampler, guidance,
seed, size and model (and the model hash when the generator has a ``weights_file``), everything an exact replay
needs (README "Provenance").
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import PngImagePlugin

from ..config import GeneratorSettings

SAMPLE_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "sample_prompts.txt"
SAMPLE_SEED_BASE = 1_000_003  # far from the candidate seeds (seed_base .. seed_base + gamma - 1)
MANIFEST_FIELDS = ("file", "generator", "prompt", "seed")


def write_samples(
    attributor, outdir: str | Path, *, per_generator: int = 3, generators: Sequence[GeneratorSettings] | None = None,
    with_parameters: bool = False,
) -> Path:
    """Write ``per_generator`` images from each configured generator into ``outdir``; return the manifest path.
    ``with_parameters`` writes the generation settings into each PNG (A1111 ``parameters``)."""
    from ..attribution.engine import read_prompt_file

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    prompts = read_prompt_file(SAMPLE_PROMPTS)
    rows = []
    # Settings variants are how a generator may be called, not generators of their own: no samples of theirs.
    for gi, g in enumerate(generators or [g for g in attributor.config.generators if not g.variant_of]):
        chosen = [prompts[(gi * per_generator + k) % len(prompts)] for k in range(per_generator)]
        seeds = [SAMPLE_SEED_BASE + gi * 1000 + k for k in range(per_generator)]
        gen = attributor.generator(g.name)
        images = gen.generate(chosen, seeds)
        for prompt, seed, image in zip(chosen, seeds, images):
            digest = hashlib.sha256(f"{g.name}|{prompt}|{seed}".encode()).hexdigest()[:12]
            name = f"sample_{digest}.png"
            # PIL writes no text chunks unless asked: without parameters, no prompt leaks
            image.save(outdir / name, pnginfo=_parameters(gen, g, prompt, seed, image) if with_parameters else None)
            rows.append({"file": name, "generator": g.name, "prompt": prompt, "seed": seed})
    rows.sort(key=lambda r: r["file"])
    manifest = outdir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _parameters(gen, settings: GeneratorSettings, prompt: str, seed: int, image) -> PngImagePlugin.PngInfo:
    """A1111's ``parameters`` text for one sample: prompt line, then the settings line."""
    from ..provenance.names import weight_hashes
    from ..provenance.samplers import a1111_name

    fields = [("Steps", gen.steps), ("Sampler", a1111_name(gen.pipeline.scheduler) or "unknown"),
              ("CFG scale", f"{gen.guidance:g}"), ("Seed", seed), ("Size", f"{image.width}x{image.height}")]
    if settings.weights_file:
        fields.append(("Model hash", weight_hashes(settings.weights_file)[0]))
    fields.append(("Model", settings.name))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in fields))
    return info


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
