"""Open set without a user threshold: the candidate cache calibrates the ``unknown`` decision itself.

Every cached candidate knows which generator made it, so the cache is a labelled gallery. A sample of each
generator's candidates is scored like a query (the nearest stored candidates and the generator prototypes,
with itself and its prompt's other candidates left out: they share its seed, which no real query does) twice:

* **known**: against every indexed generator, as a query from an indexed generator is;
* **never indexed**: with its own generator removed, as a query from an unknown generator would be
  (leave-one-generator-out).

The statistic is the best score. The threshold lets ``target_fpr`` of the never-indexed case through; its TPR
over the known case is reported beside it. Subtracting each generator's *typical* score (the median its own
candidates get), as the reference galleries do, was measured and dropped: on the hard benchmark it lowered the
held-out generator's AUROC from 0.931 to 0.897 (TPR at 5% FPR 79.2% to 67.5%), and on the embedded default the
calibration's TPR from 100% to 99.4% at the same FPR.

The scores this statistic reads weigh the generator prototypes at ``open_set_prototype_weight`` (0.5), less
than the attribution does (``prototype_weight``, 0.8). In the whitened space a query altered in a way no
degraded copy covers (a crop, a contrast change, a median filter) falls away from every prototype at once,
which no threshold can tell from an unknown generator, while its nearest stored candidates degrade gracefully:
at 0.8 the calibrated threshold rejected up to 40% of the hard benchmark's known queries under those
transforms, at 0.5 none of them. The prototypes it reads are its own: the same class means, whitened with the
covariance shrunk per embedding block (:data:`~resynth_index.attribution.prototypes.OPEN_SET_SHRINKAGE`), so
that the fingerprint, which sets an unknown sibling apart, is not drowned by the semantic features. The
calibrated pair is the decision rule whenever no explicit ``scoring.unknown_threshold`` is set and
``scoring.open_set`` is on; an enrolled gallery that covers every generator refines it
(:mod:`resynth_index.gallery.matching`).

The pseudo-queries are the generators' own images under their configured call, so the calibrated TPR is an
upper bound for queries made under other settings or transformed; ``rindex eval`` measures the real figures.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..config import ScoringConfig
from .scoring import attributed_scores, evidence_scores

if TYPE_CHECKING:
    from ..store.cache import CandidateCache
    from .prototypes import SiblingSeeds

#: candidates sampled per generator; enough for a 5% FPR quantile over (generators - 1) x this many cases
SAMPLES_PER_GENERATOR = 64
#: extra neighbours fetched per generator, to stand in for the pseudo-query's own prompt's candidates
MAX_GAMMA_OUT = 8
#: fewer stored candidates than this for some generator, or fewer than two generators: no calibration
MIN_SAMPLES = 8


@dataclass(frozen=True)
class OpenSetCalibration:
    """The ``unknown`` threshold calibrated on the cache, and the rates it reached (None: not calibrated)."""

    target_fpr: float
    threshold: float | None  # best score below it -> "unknown"
    tpr: float | None  # indexed generators' candidates accepted
    fpr: float | None  # the never-indexed case accepted (<= target_fpr)
    samples: int = 0
    vectors: int = 0  # stored vectors when calibrated (recalibrate when the cache has grown)
    note: str = ""

    @staticmethod
    def statistic(scores: Mapping[str, float]) -> float:
        """The open-set statistic: the best score."""
        return max(scores.values())

    def to_dict(self) -> dict:
        return {
            "target_fpr": self.target_fpr,
            "threshold": None if self.threshold is None else round(self.threshold, 6),
            "tpr": self.tpr, "fpr": self.fpr, "samples": self.samples, "vectors": self.vectors,
            "note": self.note,
        }


def _threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """The lowest threshold that accepts (statistic >= threshold) at most ``fpr`` of ``negatives``."""
    neg = np.sort(negatives.astype(np.float64))[::-1]
    allowed = int(np.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float("-inf")
    return float(np.nextafter(neg[allowed], np.inf))


def _fold(prompt: str) -> int:
    return zlib.crc32(prompt.encode("utf-8")) & 1


def candidate_scores(cache: CandidateCache, namespaces: Mapping[str, str], scoring: ScoringConfig,
                     degraded: Mapping[str, str] | None = None, *, attributed_to: Mapping[str, str] | None = None,
                     blocks: Sequence[int] | None = None, siblings: SiblingSeeds | None = None,
                     per_generator: int = SAMPLES_PER_GENERATOR) -> list[tuple[str, dict[str, float]]]:
    """(true generator, per-generator scores) for up to ``per_generator`` of each generator's cached candidates
    and as many of their degraded copies (``degraded``: generator -> their namespace), each scored as a query
    that the cache has never seen: the threshold must hold for re-encoded and resized queries too. Settings
    variants (``attributed_to``: generator -> the name it is attributed to) count as their generator, so that
    leaving a generator out leaves its variants out too.

    The prototypes are the open set's (shrunk per embedding block, ``blocks``, the leading blocks they fit; a
    thumbnail after them is read by the fine-tune siblings' second stage alone; :data:`OPEN_SET_SHRINKAGE`) and
    cross-fitted: the prompts are split in two halves, and each half is scored against prototypes fitted on the
    other (a whitening fitted on a candidate would flatter it: in a few hundred dimensions the within-generator
    covariance is estimated from few candidates). Fine-tune siblings' extra seeds (``siblings``) join the
    prototypes' fit and the sample as more of their candidates."""
    from .prototypes import OPEN_SET_SHRINKAGE, fit_prototypes, stored_candidates

    stored = stored_candidates(cache, namespaces, degraded, siblings=siblings)
    names = attributed_to or {}
    use_prototypes = scoring.prototype_weight > 0
    rows: list[tuple[str, dict[str, float]]] = []
    k = scoring.unrestricted_k
    half = (per_generator + 1) // 2
    for fold in (0, 1):
        other_half = {g: ([c.vector for c in clean if _fold(c.prompt) != fold],
                          [c.vector for c in copies if _fold(c.prompt) != fold]) for g, (clean, copies) in stored.items()}
        prototypes = (fit_prototypes({g: c for g, (c, _) in other_half.items()}, OPEN_SET_SHRINKAGE,
                                     degraded={g: d for g, (_, d) in other_half.items()}, blocks=blocks,
                                     columns=(0, sum(blocks)) if blocks else None)
                      if use_prototypes else None)
        for g in namespaces:
            clean, degraded = stored[g]
            degraded = [c for c in degraded if _fold(c.prompt) == fold]
            # spread over as many prompts (and degradation families) as the sample allows
            sample = ([c for c in clean if _fold(c.prompt) == fold][:half]
                      + degraded[:: max(1, len(degraded) // half)][:half])
            if not sample:
                continue
            vectors = np.stack([c.vector for c in sample])
            hits = ({h: cache.knn(h, hns, vectors, k + MAX_GAMMA_OUT) for h, hns in namespaces.items()}
                    if scoring.mode != "restricted" else {})
            for i, cand in enumerate(sample):
                # Candidate seeds follow the prompt, so every generator's candidate of this prompt shares its
                # seed, and a fine-tune's is then a near copy of it. A query never shares a seed with the cache:
                # leave the prompt's candidates out altogether (restricted evidence included).
                unrestricted = {}
                for h, rows_h in hits.items():
                    sims = [nb.score for nb in rows_h[i] if nb.prompt != cand.prompt]
                    if sims:
                        unrestricted[h] = np.asarray(sims[:k], np.float32)
                prototype = prototypes.scores(cand.vector) if prototypes is not None else None
                scores = attributed_scores(evidence_scores({}, unrestricted, prototype, scoring, open_set=True), names)
                if names.get(g, g) in scores and len(scores) > 1:
                    rows.append((names.get(g, g), scores))
    return rows


def calibrate_open_set(cache: CandidateCache, namespaces: Mapping[str, str], scoring: ScoringConfig,
                       degraded: Mapping[str, str] | None = None, *, attributed_to: Mapping[str, str] | None = None,
                       blocks: Sequence[int] | None = None, siblings: SiblingSeeds | None = None,
                       per_generator: int = SAMPLES_PER_GENERATOR) -> OpenSetCalibration:
    """Leave-one-generator-out calibration of the ``unknown`` threshold over the cached candidates (settings
    variants, ``attributed_to``, are left out with their generator)."""
    fpr = scoring.target_fpr
    stats = cache.namespaces()
    counted = set(namespaces.values()) | (set(siblings.namespaces.values()) if siblings is not None else set())
    vectors = sum(st["vectors"] for ns, st in stats.items() if ns in counted)
    counts = {g: stats.get(ns, {}).get("vectors", 0) for g, ns in namespaces.items()}
    if len(namespaces) < 2 or min(counts.values(), default=0) < MIN_SAMPLES:
        return OpenSetCalibration(fpr, None, None, None, vectors=vectors,
                                  note=f"needs two or more generators with {MIN_SAMPLES}+ cached candidates each "
                                       f"(have {counts}); build more prompts")
    rows = candidate_scores(cache, namespaces, scoring, degraded, attributed_to=attributed_to, blocks=blocks,
                            siblings=siblings, per_generator=per_generator)
    if len({t for t, _ in rows}) < 2:
        # scoring.mode = "restricted" with no prototypes: a candidate has no evidence but its own prompt's
        return OpenSetCalibration(fpr, None, None, None, vectors=vectors,
                                  note="nothing to calibrate on: the scoring reads only the query's own prompt")
    statistic = OpenSetCalibration.statistic
    known = np.array([statistic(s) for _, s in rows])
    never = np.array([statistic({h: v for h, v in s.items() if h != t}) for t, s in rows])
    threshold = _threshold_at_fpr(never, fpr)
    # A generator whose fine-tune sibling is indexed too is, once removed, claimed by that sibling as strongly
    # as by itself: at the target FPR such pairs would reject nearly every query. Never reject more than
    # 1 - min_tpr of the indexed generators' own candidates; the FPR then reached is reported.
    floor = float(np.quantile(known, 1.0 - scoring.min_tpr, method="lower"))
    threshold = min(threshold, floor)
    return OpenSetCalibration(fpr, threshold, float((known >= threshold).mean()), float((never >= threshold).mean()),
                              len(rows), vectors)


__all__ = ["OpenSetCalibration", "calibrate_open_set", "candidate_scores"]
