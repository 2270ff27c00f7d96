"""What the engine answers: one :class:`Attribution` per input image, its :class:`Evidence`, and the
:class:`BuildReport` of a precompute run. ``Attribution.to_dict`` is the JSONL line ``rindex query`` writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Evidence:
    """One stored candidate that scored against the query."""

    score: float
    prompt: str | None  # None for gallery evidence
    seed: int | None
    kind: str  # "restricted" (this prompt's resynthesis), "unrestricted" (kNN over the whole index),
    # "gallery" (an enrolled reference, embedder space) or "fingerprint" (an enrolled reference, fingerprint space)
    reference: str | None = None  # gallery evidence: the reference's original path (or "ref:ID")


@dataclass
class Attribution:
    """The answer for one input image. ``error`` is set (and ``prediction`` is None) when the input failed."""

    path: str | None
    prediction: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    prompt: str | None = None
    prompt_source: str | None = None
    cache: str | None = None  # hit | near | miss
    matched_prompt: str | None = None
    prompt_similarity: float | None = None
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    #: what decided: ``c2pa`` | ``replay`` | ``watermark`` (verified provenance), ``resynthesis`` (cached
    #: candidates), ``gallery`` (enrolled references only), ``open_set`` (unknown: below the calibrated or
    #: configured threshold), ``real_gate`` (the gallery's gate)
    decided_by: str | None = None
    margin: float | None = None  # best score minus the runner-up's (None with a single generator)
    #: the cache's open-set calibration as applied: statistic (the best score with the prototypes
    #: at ``open_set_prototype_weight``), threshold, TPR, FPR
    open_set: dict[str, Any] | None = None
    #: gallery view, when references are enrolled: fingerprint scores, real margin, thresholds, what decided
    gallery: dict[str, Any] | None = None
    #: what the file says about its origin (manifest, watermark, claims, replay); None when it says nothing
    provenance: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record: every field above, scores, timings and evidence scores rounded to 6 decimals, and
        ``reference`` only on gallery evidence. A failed input carries only ``path`` and ``error``."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        d = asdict(self)
        d.pop("error")
        d["scores"] = {g: round(s, 6) for g, s in self.scores.items()}
        d["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
        if d["margin"] is not None:
            d["margin"] = round(d["margin"], 6)
        for items in d["evidence"].values():
            for e in items:
                e["score"] = round(e["score"], 6)
                if e["reference"] is None:
                    del e["reference"]
        return d


@dataclass(frozen=True)
class BuildReport:
    prompts: int  # distinct prompts asked for
    skipped: int  # already cached (resumed)
    built: int  # newly generated and committed
    images: int  # images generated
    seconds: float
    #: the generators whose prototypes get extra seeds (they have a fine-tune sibling), built where missing
    sibling_seeds: tuple[str, ...] = ()
