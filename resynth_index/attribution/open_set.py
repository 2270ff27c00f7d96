"""Open set without a user threshold: the candidate cache calibrates the ``unknown`` decision itself.

Every cached candidate knows which generator made it, so the cache is a labelled gallery. A sample of each
generator's candidates is scored like a query (restricted: the other candidates of its prompt; unrestricted:
the nearest stored candidates, never itself) twice:

* **known**: against every indexed generator, as a query from an indexed generator is;
* **never indexed**: with its own generator removed, as a query from an unknown generator would be
  (leave-one-generator-out).

Generators differ in how alike their own images are, so the statistic is relative: the best score minus that
generator's *typical* score (the median score its own sampled candidates get). The threshold lets
``target_fpr`` of the never-indexed case through; its TPR over the known case is reported beside it. The
calibrated pair is the decision rule whenever no explicit ``scoring.unknown_threshold`` is set and
``scoring.open_set`` is on; an enrolled gallery that covers every generator refines it
(:mod:`resynth_index.gallery.matching`).

The pseudo-queries are the generators' own images under their configured call, so the calibrated TPR is an
upper bound for queries made under other settings or transformed; ``rindex eval`` measures the real figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config import ScoringConfig
from .scoring import evidence_scores

if TYPE_CHECKING:
    from ..store.cache import CandidateCache
    from .prototypes import Prototypes

#: candidates sampled per generator; enough for a 5% FPR quantile over (generators - 1) x this many cases
SAMPLES_PER_GENERATOR = 64
#: fewer stored candidates than this for some generator, or fewer than two generators: no calibration
MIN_SAMPLES = 8


@dataclass(frozen=True)
class OpenSetCalibration:
    """The ``unknown`` threshold calibrated on the cache, and the rates it reached (None: not calibrated)."""

    target_fpr: float
    threshold: float | None  # relative best score below it -> "unknown"
    tpr: float | None  # indexed generators' candidates accepted
    fpr: float | None  # the never-indexed case accepted (<= target_fpr)
    typical: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    vectors: int = 0  # stored vectors when calibrated (recalibrate when the cache has grown)
    note: str = ""

    def relative(self, scores: Mapping[str, float]) -> float:
        """The open-set statistic: the best score minus its generator's typical score."""
        default = float(np.median(list(self.typical.values()))) if self.typical else 0.0
        return max(s - self.typical.get(g, default) for g, s in scores.items())

    def to_dict(self) -> dict:
        return {
            "target_fpr": self.target_fpr,
            "threshold": None if self.threshold is None else round(self.threshold, 6),
            "tpr": self.tpr, "fpr": self.fpr, "samples": self.samples, "vectors": self.vectors,
            "typical": {g: round(v, 6) for g, v in self.typical.items()}, "note": self.note,
        }


def _threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The lowest threshold that accepts (statistic >= threshold) at most ``fpr`` of ``negatives``."""
    neg = np.sort(negatives.astype(np.float64))[::-1]
    allowed = int(np.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float("-inf")
    return float(np.nextafter(neg[allowed], np.inf))


def candidate_scores(cache: CandidateCache, namespaces: Mapping[str, str], scoring: ScoringConfig,
                     prototypes: Prototypes | None = None, per_generator: int = SAMPLES_PER_GENERATOR,
                     seed: int = 0) -> list[tuple[str, dict[str, float]]]:
    """(true generator, per-generator scores) for a sample of each generator's cached candidates, each scored
    as a query with itself left out of the evidence (its generator's prototype included)."""
    rows: list[tuple[str, dict[str, float]]] = []
    k = scoring.unrestricted_k
    for g, ns in namespaces.items():
        sample = cache.sample(ns, per_generator, seed)
        if not sample:
            continue
        vectors = np.stack([c.vector for c in sample])
        hits = ({h: cache.knn(h, hns, vectors, k + 1) for h, hns in namespaces.items()}
                if scoring.mode != "restricted" else {})
        for i, cand in enumerate(sample):
            lookup = cache.lookup(cand.prompt, namespaces)
            restricted = {}
            for h, c in lookup.candidates.items():
                sims = c.vectors.astype(np.float32) @ cand.vector
                if c.record_id == cand.record_id:
                    sims = np.delete(sims, cand.position)
                if len(sims):
                    restricted[h] = sims
            unrestricted = {}
            for h, rows_h in hits.items():
                sims = [nb.score for nb in rows_h[i] if (nb.record_id, nb.position) != (cand.record_id, cand.position)]
                if sims:
                    unrestricted[h] = np.asarray(sims[:k], np.float32)
            prototype = None
            if prototypes is not None:
                prototype = prototypes.scores(cand.vector, leave_out=(g, prototypes.transform(cand.vector)[0]))
            scores = evidence_scores(restricted, unrestricted, prototype, scoring)
            if g in scores and len(scores) > 1:
                rows.append((g, scores))
    return rows


def calibrate_open_set(cache: CandidateCache, namespaces: Mapping[str, str], scoring: ScoringConfig,
                       prototypes: Prototypes | None = None, *, per_generator: int = SAMPLES_PER_GENERATOR,
                       seed: int = 0) -> OpenSetCalibration:
    """Leave-one-generator-out calibration of the ``unknown`` threshold over the cached candidates."""
    fpr = scoring.target_fpr
    stats = cache.namespaces()
    vectors = sum(st["vectors"] for ns, st in stats.items() if ns in set(namespaces.values()))
    counts = {g: stats.get(ns, {}).get("vectors", 0) for g, ns in namespaces.items()}
    if len(namespaces) < 2 or min(counts.values(), default=0) < MIN_SAMPLES:
        return OpenSetCalibration(fpr, None, None, None, vectors=vectors,
                                  note=f"needs two or more generators with {MIN_SAMPLES}+ cached candidates each "
                                       f"(have {counts}); build more prompts")
    rows = candidate_scores(cache, namespaces, scoring, prototypes, per_generator, seed)
    typical = {g: float(np.median([s[g] for t, s in rows if t == g])) for g in namespaces if any(t == g for t, _ in rows)}
    cal = OpenSetCalibration(fpr, None, None, None, typical, len(rows), vectors)
    known = np.array([cal.relative(s) for _, s in rows])
    never = np.array([cal.relative({h: v for h, v in s.items() if h != t}) for t, s in rows])
    threshold = _threshold_at_fpr(never, fpr)
    return OpenSetCalibration(fpr, threshold, float((known >= threshold).mean()), float((never >= threshold).mean()),
                              typical, len(rows), vectors)


__all__ = ["OpenSetCalibration", "calibrate_open_set", "candidate_scores"]
