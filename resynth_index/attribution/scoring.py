"""Per-generator scores from candidate similarities, their combination, and the decision.

Two kinds of evidence reach this stage, both as similarities between the query embedding and stored candidate
embeddings (all vectors are L2-normalised, so the inner product is the cosine):

* **restricted**: the γ candidates each generator resynthesised from *this image's* prompt (seeds 000/002);
* **unrestricted**: each generator's top-k neighbours over its whole cached index, i.e. semantically aligned
  references retrieved from every prompt ever cached (the retrieval view of DESIGN.md §4).

Each is turned into one score per generator by the configured aggregation:

* ``max``: the best candidate (the default; max beats mean by 5–13 points in the 2026 follow-up);
* ``mean``: the average candidate (seed 002's ranking);
* ``softmax``: candidates weighted by ``softmax(similarity / temperature)`` over that generator's candidates, a
  smooth maximum that still listens to the runners-up;
* ``knn``: pool every generator's candidates, take the ``knn_k`` nearest, score = the fraction of those votes
  the generator got (ties are broken by the best similarity, added at 1e-3 scale).

With ``distance = "euclidean"`` similarities are replaced by negative euclidean distances, ``-sqrt(2 - 2 cos)``,
before aggregation (seed 000's argmin of a distance). In mode ``both`` the final score is
``(1 - w) * restricted + w * unrestricted`` with ``w = unrestricted_weight``; a generator missing one kind of
evidence is scored on the other alone.

Enrolled reference images (:mod:`resynth_index.gallery.references`) add evidence twice: in the embedder's space each
reference joins its generator's *unrestricted* similarities (it is one more semantically unaligned candidate,
on the same scale), and in the fingerprint space its generator gets a fingerprint score, the best centred
cosine. :func:`fuse` then gives ``(1 - w) * score + w * fingerprint`` with ``w = gallery.weight``; a generator
with only one of the two is scored on that one (a gallery-only generator with ``gallery.semantic = false``
is scored on its fingerprint alone). The two spaces have different scales, so a weight other than the
default is best chosen from ``rindex eval``'s fused column.

Decision: the top-scoring generator, or ``"unknown"`` when its score is below ``unknown_threshold`` or its lead
over the runner-up is below ``unknown_margin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..config import ScoringConfig

UNKNOWN = "unknown"


def to_scores(similarities: np.ndarray, distance: str) -> np.ndarray:
    """Map cosine similarities to the configured score scale (higher is always better)."""
    sims = np.asarray(similarities, dtype=np.float32)
    if distance == "cosine":
        return sims
    if distance == "euclidean":
        return -np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None))
    raise ValueError(f"unknown distance {distance!r}")


def aggregate(per_generator: Mapping[str, np.ndarray], cfg: ScoringConfig) -> dict[str, float]:
    """One score per generator from its candidates' similarities (cosine inner products)."""
    scored = {g: to_scores(s, cfg.distance) for g, s in per_generator.items() if len(s)}
    if cfg.aggregate == "max":
        return {g: float(s.max()) for g, s in scored.items()}
    if cfg.aggregate == "mean":
        return {g: float(s.mean()) for g, s in scored.items()}
    if cfg.aggregate == "softmax":
        out = {}
        for g, s in scored.items():
            w = np.exp((s - s.max()) / cfg.temperature)
            out[g] = float((w * s).sum() / w.sum())
        return out
    if cfg.aggregate == "knn":
        pooled = [(float(v), g) for g, s in scored.items() for v in s]
        pooled.sort(key=lambda t: -t[0])
        votes = {g: 0.0 for g in scored}
        for _, g in pooled[: cfg.knn_k]:
            votes[g] += 1.0 / min(cfg.knn_k, len(pooled))
        # Ties in votes are broken by the best similarity, at a scale too small to overturn a vote.
        return {g: votes[g] + 1e-3 * float(np.tanh(scored[g].max())) for g in scored}
    raise ValueError(f"unknown aggregation {cfg.aggregate!r}")


def combine(restricted: Mapping[str, float], unrestricted: Mapping[str, float], cfg: ScoringConfig) -> dict[str, float]:
    """The final per-generator score for the configured mode."""
    if cfg.mode == "restricted":
        return dict(restricted)
    if cfg.mode == "unrestricted":
        return dict(unrestricted)
    return fuse(restricted, unrestricted, cfg.unrestricted_weight)


def fuse(scores: Mapping[str, float], fingerprint: Mapping[str, float], weight: float) -> dict[str, float]:
    """``(1 - weight) * scores + weight * fingerprint`` per generator; one with a single kind of evidence keeps
    it. Used for restricted + unrestricted (mode ``both``) and for folding in the fingerprint gallery."""
    out = {}
    for g in set(scores) | set(fingerprint):
        if g in scores and g in fingerprint:
            out[g] = (1.0 - weight) * scores[g] + weight * fingerprint[g]
        else:
            out[g] = scores.get(g, fingerprint.get(g))
    return out


@dataclass(frozen=True)
class Decision:
    prediction: str
    score: float | None
    margin: float | None


def decide(scores: Mapping[str, float], cfg: ScoringConfig) -> Decision:
    """The best generator, or ``unknown`` below the score threshold or the margin."""
    if not scores:
        return Decision(UNKNOWN, None, None)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best, best_score = ranked[0]
    margin = best_score - ranked[1][1] if len(ranked) > 1 else float("inf")
    if best_score < cfg.unknown_threshold or margin < cfg.unknown_margin:
        return Decision(UNKNOWN, best_score, margin)
    return Decision(best, best_score, margin)
