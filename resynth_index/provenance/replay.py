"""Exact replay: regenerate an image from the settings its file states, with every candidate generator.

The generator that made the image, run with the same prompt, seed, steps, guidance, sampler and size, makes the
same image again (bit for bit on the same device and library versions, within rounding elsewhere), while any
other generator makes a different one. The distance is the RMSE of the two images on a 0..1 scale, after
resizing the query to the stated size when it differs. A replay decides when exactly one generator comes within
``max_distance``. It costs one generation per runnable generator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .evidence import GenerationParameters, ReplayResult
from .samplers import SchedulerChoice, build_scheduler, map_sampler


def image_distance(query: Image.Image, replayed: Image.Image) -> float:
    """RMSE between two RGB images on a 0..1 scale; ``query`` is resized to ``replayed``'s size if needed."""
    if query.size != replayed.size:
        query = query.resize(replayed.size, Image.Resampling.BICUBIC)
    a = np.asarray(query, dtype=np.float32) / 255.0
    b = np.asarray(replayed.convert("RGB"), dtype=np.float32) / 255.0
    return float(np.sqrt(np.mean((a - b) ** 2)))


def replay(image: Image.Image, params: GenerationParameters, *, generators: Sequence[str],
           load: Callable[[str], object], max_distance: float) -> ReplayResult:
    """Replay ``params`` with each of ``generators`` (``load(name)`` gives a loaded
    :class:`~resynth_index.models.generators.Generator`) and compare with ``image``."""
    if params.not_replayable:
        return ReplayResult("skipped", reason=params.not_replayable)
    choice = map_sampler(params.sampler)
    if not isinstance(choice, SchedulerChoice):
        return ReplayResult("skipped", reason=choice)
    if not generators:
        return ReplayResult("skipped", reason="no runnable generator to replay with")
    t0 = time.perf_counter()
    distances: dict[str, float | None] = {}
    for name in generators:
        gen = load(name)
        try:
            scheduler = build_scheduler(gen.pipeline.scheduler, choice)
        except ValueError:
            distances[name] = None  # this pipeline cannot run the stated sampler
            continue
        replayed = gen.generate_with(params.prompt, params.seed, steps=params.steps, guidance=params.guidance,
                                     height=params.height, width=params.width, scheduler=scheduler,
                                     negative_prompt=params.negative_prompt)
        distances[name] = image_distance(image, replayed)
    close = [g for g, d in distances.items() if d is not None and d <= max_distance]
    return ReplayResult("done", scheduler=choice.describe(), distances=distances,
                        generator=close[0] if len(close) == 1 else None, seconds=time.perf_counter() - t0)
