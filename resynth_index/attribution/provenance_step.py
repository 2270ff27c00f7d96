"""The provenance steps of a query batch (the engine runs them around :mod:`~resynth_index.attribution.query`)::

    read_provenance      before inversion: manifest, watermark, claims, stated settings (cheap; verified
                         evidence may decide here)
    replay_stated        before resynthesis, for undecided images that state full settings: one generation per
                         runnable generator (only where the query may generate)
    skip_decided         decided images never pay for resynthesis of their missed prompt
    settle               after scoring: the decision and ``decided_by``, the ``provenance`` object, and each
                         disagreement between what the file says and what the pixels say

Every image still gets its resynthesis scores (from the cache), so a report shows both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from ..config import Config
from ..errors import RindexError
from ..provenance import (
    DECIDERS,
    GeneratorNames,
    Provenance,
    ReplayResult,
    decide,
    read_provenance,
    replay,
)
from ..provenance.evidence import AI_SOURCE_TYPES, CAPTURE_SOURCE_TYPES
from .results import Attribution


def read_batch(results: Sequence[Attribution], images, config: Config, names: GeneratorNames) -> list[Provenance]:
    """One :class:`Provenance` per image; its time is the ``provenance`` timing."""
    out = []
    for res, d in zip(results, images):
        t0 = time.perf_counter()
        try:
            out.append(read_provenance(d, config.provenance, names))
        except RindexError:
            raise  # a configuration error (an unreadable trust-anchor file) concerns every image
        except Exception as exc:  # noqa: BLE001 - a hostile file fails its provenance, never the batch
            out.append(Provenance(errors=[f"provenance: {type(exc).__name__}: {exc}"[:300]]))
        res.timings["provenance"] = time.perf_counter() - t0
    return out


def replay_stated(results: Sequence[Attribution], images, provs: Sequence[Provenance], config: Config, *,
                  runnable: Sequence[str], load: Callable[[str], object]) -> None:
    """Replay the stated settings of every undecided image that states them (``replay`` timing)."""
    if not config.provenance.replay:
        return
    for res, d, prov in zip(results, images, provs):
        if prov.decided_by is None and prov.parameters is not None:
            t0 = time.perf_counter()
            try:
                prov.replay = replay(d.image, prov.parameters, generators=runnable, load=load,
                                     max_distance=config.provenance.replay_max_distance)
            except RindexError:
                raise  # a generator that cannot load concerns every image
            except Exception as exc:  # noqa: BLE001 - stated settings a pipeline rejects fail this replay only
                prov.replay = ReplayResult("skipped", reason=f"{type(exc).__name__}: {exc}"[:300])
            res.timings["replay"] = time.perf_counter() - t0
            decide(prov, config.provenance)


def skip_decided(misses: Mapping[str, list[Attribution]], decided: set[int]) -> dict[str, list[Attribution]]:
    """``misses`` without the images provenance decided (by ``id`` of their results)."""
    kept = {k: [r for r in rs if id(r) not in decided] for k, rs in misses.items()}
    return {k: rs for k, rs in kept.items() if rs}


def settle(results: Sequence[Attribution], provs: Sequence[Provenance]) -> None:
    """Apply each verified decision (its ``decided_by`` replaces the scores'), set ``provenance``, and list
    disagreements."""
    for res, prov in zip(results, provs):
        by_scores = res.prediction
        if prov.decided_by is not None:
            res.prediction, res.decided_by = prov.decision, prov.decided_by
            if by_scores not in (None, "unknown", prov.decision):
                prov.disagreements.append(f"resynthesis alone says {by_scores}")
        prov.disagreements.extend(_disagreements(prov, res.prediction))
        res.provenance = None if prov.empty else prov.to_dict()


def _disagreements(prov: Provenance, verdict: str | None) -> list[str]:
    """Where an unverified (or undeciding) statement of the file contradicts ``verdict``."""
    out = []
    ai_verdict = verdict not in (None, "real", "unknown")
    for c in prov.claims:
        if c.kind == "digital_source_type":
            if ai_verdict and c.value in CAPTURE_SOURCE_TYPES:
                out.append(f"{c.source} says {c.value}, a captured picture; the verdict is {verdict}")
            elif verdict == "real" and c.value in AI_SOURCE_TYPES:
                out.append(f"{c.source} says {c.value}; the verdict is real")
        elif c.generator is not None and ai_verdict and c.generator != verdict:
            out.append(f"{c.source} claims {c.kind} {c.value!r} ({c.generator}); the verdict is {verdict}")
    m = prov.manifest
    if m is not None and prov.decided_by != "c2pa":
        if m.generator is not None and ai_verdict and m.generator != verdict:
            out.append(f"the C2PA manifest ({m.state}) names {m.generator}; the verdict is {verdict}")
        if m.says_capture and ai_verdict:
            out.append(f"the C2PA manifest ({m.state}) says {m.digital_source_type}; the verdict is {verdict}")
    w = prov.watermark
    if (w is not None and w.verdict in ("likely", "very likely") and w.generators and ai_verdict
            and verdict not in w.generators and prov.decided_by != "watermark"):
        out.append(f"the {w.message} watermark ({w.verdict}) points to {', '.join(w.generators)}; "
                   f"the verdict is {verdict}")
    return out


__all__ = ["DECIDERS", "read_batch", "replay_stated", "settle", "skip_decided"]
