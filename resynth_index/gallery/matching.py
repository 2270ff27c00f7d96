"""How the reference gallery matches a query and decides: feature spaces, calibration, the engine's view.

Matching and decisions
----------------------
A :class:`GallerySpace` holds one feature space: every AI reference's vector and the **real-photo set** (the
photos enrolled under the reserved name ``real``, else the packaged default: native-resolution crops of
scikit-image's sample photos). Vectors are centred on the real prototype (their mean) and L2-normalised, so a
cosine measures how a query departs from natural photos in the same direction as a generator's references (a
training-free stand-in for the contrastive term against a real prototype in LIDA: Wang, Cheng, Han, Gui,
"Attribution as Retrieval: Model-Agnostic AI-Generated Image Attribution", CVPR 2026). A generator's gallery score
is its best reference's cosine.

:func:`calibrate` sets the two thresholds from the gallery alone, as TPR at a fixed FPR:

* **open set**: generators differ in how alike their own images are, so a score is first made relative: minus
  the generator's *typical* score (the median, over its references, of each one's best cosine to the others).
  Every reference is then scored once against its own generator's other references (known) and once against
  the other generators only (as if its generator had never been enrolled). The threshold lets ``target_fpr``
  of the never-enrolled case through; a best relative score below it means ``unknown``.
* **real gate**: ``real margin`` = best real cosine minus best AI cosine. Real photos (each against the other
  photos, never crops of the same photo) set a threshold that flags ``target_fpr`` of them as AI; above it the
  query is ``real``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from ..config import Config
from ..errors import ImageError
from .references import REAL, FeatureFn, Gallery, Reference, real_set


# ------------------------------------------------------------------------------------------- matching
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


@dataclass
class GallerySpace:
    """One feature space of the gallery, ready to match (see the module docstring)."""

    feature_id: str
    references: list[Reference]  # AI references only (never ``real``)
    vectors: np.ndarray  # (n, d) centred unit rows, one per reference
    real: np.ndarray  # (m, d) centred unit rows
    real_groups: list[str]
    real_source: str  # "enrolled" or "default"
    centre: np.ndarray  # (d,) the real prototype

    @classmethod
    def load(cls, gallery: Gallery, feature_id: str, fn: FeatureFn, *, centre_on_real: bool = True) -> "GallerySpace":
        refs, vecs = gallery.vectors(feature_id, fn)
        keep = [i for i, r in enumerate(refs) if r.generator != REAL]
        refs, vecs = [refs[i] for i in keep], (vecs[keep] if len(keep) else np.zeros((0, 1), np.float32))
        groups, real, source = real_set(gallery, feature_id, fn)
        centre = real.mean(axis=0) if centre_on_real else np.zeros(real.shape[1], np.float32)
        return cls(feature_id, refs, _unit(vecs - centre) if len(refs) else vecs, _unit(real - centre), groups,
                   source, centre)

    @property
    def generators(self) -> list[str]:
        return sorted({r.generator for r in self.references})

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(raw, np.float32) - self.centre)

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """(q, n) cosines of centred unit queries (from :meth:`transform`) to every reference."""
        return queries @ self.vectors.T if len(self.references) else np.zeros((len(queries), 0), np.float32)

    def best_per_generator(self, sims: np.ndarray) -> list[dict[str, tuple[float, int]]]:
        """Per query row: generator -> (best cosine, index of that reference)."""
        labels = np.array([r.generator for r in self.references])
        out = []
        for row in np.atleast_2d(sims):
            per = {}
            for g in self.generators:
                idx = np.flatnonzero(labels == g)
                j = idx[int(np.argmax(row[idx]))]
                per[g] = (float(row[j]), int(j))
            out.append(per)
        return out

    def real_margin(self, queries: np.ndarray, sims: np.ndarray | None = None) -> np.ndarray:
        """Best cosine to a real photo minus best cosine to an AI reference (higher: more like a photo)."""
        sims = self.similarities(queries) if sims is None else sims
        ai = sims.max(axis=1) if sims.shape[1] else np.full(len(queries), -1.0, np.float32)
        return (queries @ self.real.T).max(axis=1) - ai


def threshold_at_fpr(negatives: Sequence[float], fpr: float) -> float:
    """The lowest threshold that accepts (score >= threshold) at most ``fpr`` of ``negatives``."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float("-inf")
    return float(np.nextafter(neg[allowed], np.inf))


@dataclass(frozen=True)
class Calibration:
    """Gallery thresholds at ``target_fpr`` and the true-positive rates they reach (None: not enough data)."""

    target_fpr: float
    unknown_threshold: float | None  # best relative score (cosine minus typical) below it -> "unknown"
    unknown_tpr: float | None  # enrolled generators' references accepted (leave-one-out)
    unknown_fpr: float | None  # never-enrolled view accepted (<= target_fpr)
    real_threshold: float | None  # real margin above it -> "real"
    real_tpr: float | None  # AI references flagged AI (leave-one-out)
    real_fpr: float | None  # real photos flagged AI (<= target_fpr)
    real_source: str
    typical: dict[str, float] = field(default_factory=dict)  # generator -> median leave-one-out best cosine
    note: str = ""

    def relative(self, scores: Mapping[str, float]) -> float:
        """The open-set statistic: the best score minus its generator's typical score."""
        default = float(np.median(list(self.typical.values()))) if self.typical else 0.0
        return max(s - self.typical.get(g, default) for g, s in scores.items())

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def calibrate(space: GallerySpace, target_fpr: float = 0.05) -> Calibration:
    """Open-set and real-gate thresholds from the gallery alone (leave-one-out; see the module docstring)."""
    labels = np.array([r.generator for r in space.references])
    n = len(labels)
    # float64 throughout: a float32 score compared with a threshold just above it would round onto it.
    sims = space.similarities(space.vectors).astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    counts = {g: int((labels == g).sum()) for g in space.generators}
    notes = []

    unknown = (None, None, None)
    typical: dict[str, float] = {}
    known_ok = [i for i in range(n) if counts[labels[i]] >= 2]
    if len({labels[i] for i in known_ok}) >= 2:
        same = labels[:, None] == labels[None, :]
        loo = {i: float(sims[i][same[i]].max()) for i in known_ok}
        typical = {str(g): float(np.median([v for i, v in loo.items() if labels[i] == g])) for g in {labels[i] for i in known_ok}}
        default = float(np.median(list(typical.values())))
        shift = np.array([typical.get(g, default) for g in labels])
        known = np.array([loo[i] - shift[i] for i in known_ok])
        unseen = np.array([(sims[i] - shift)[~same[i]].max() for i in range(n)])
        t = threshold_at_fpr(unseen, target_fpr)
        unknown = (t, float((known >= t).mean()), float((unseen >= t).mean()))
    else:
        notes.append("open set needs >= 2 references for each of >= 2 generators")

    real = (None, None, None)
    if n >= 2 and len(space.real) >= 2:
        groups = np.array(space.real_groups)
        rr = (space.real @ space.real.T).astype(np.float64)
        rr[groups[:, None] == groups[None, :]] = -np.inf  # never match a photo with itself or its own crops
        ai_of_real = space.similarities(space.real).max(axis=1).astype(np.float64)
        real_margin = rr.max(axis=1) - ai_of_real
        ai_margin = (space.vectors @ space.real.T).max(axis=1).astype(np.float64) - sims.max(axis=1)
        usable = np.isfinite(real_margin)
        if usable.sum() >= 2:
            # "AI" is the positive class: score = -margin; negatives are the real photos.
            t_ai = threshold_at_fpr(-real_margin[usable], target_fpr)
            real = (-t_ai, float((-ai_margin >= t_ai).mean()), float((-real_margin[usable] >= t_ai).mean()))
    if real[0] is None:
        notes.append("real gate needs >= 2 AI references and real photos from >= 2 sources")
    return Calibration(target_fpr, *unknown, *real, real_source=space.real_source, typical=typical,
                       note="; ".join(notes))


# ------------------------------------------------------------------------------------------- the engine's view
class ImageEmbedder(Protocol):
    """An image embedder as the gallery uses it (:class:`~resynth_index.models.embedders.Embedder` is one)."""

    id: str

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class ImageFingerprint(Protocol):
    """A fingerprint extractor as the gallery uses it (:class:`~resynth_index.models.fingerprints.Fingerprint`)."""

    id: str

    def extract(self, images: Sequence[Image.Image], names: Sequence[str] | None = None) -> np.ndarray: ...


class GallerySource(Protocol):
    """What :meth:`GalleryView.load` needs from an engine (an :class:`~resynth_index.Attributor` is one): its
    config (the ``[gallery]`` table), its reference gallery, and the two feature extractors the references are
    matched in. Reading ``embedder`` or ``fingerprint`` may load the model."""

    @property
    def config(self) -> Config: ...

    @property
    def gallery(self) -> Gallery: ...

    @property
    def embedder(self) -> ImageEmbedder: ...

    @property
    def fingerprint(self) -> ImageFingerprint | None: ...


@dataclass
class QueryGallery:
    """What the gallery says about one query."""

    semantic: dict[str, tuple[np.ndarray, list[Reference]]]  # generator -> (cosines, references), embedder space
    fingerprint: dict[str, tuple[float, Reference]]  # generator -> best centred cosine and its reference
    real_margin: float | None
    error: str | None = None  # why the fingerprint could not be computed


@dataclass
class GalleryView:
    """The gallery as one engine config sees it: the embedder-space references, the fingerprint space and its
    calibration. Built by :meth:`Attributor.gallery_view` and rebuilt when the gallery changes."""

    enrolled: frozenset[str]  # AI generators with references
    semantic_refs: list[Reference]
    semantic_vectors: np.ndarray | None  # unit rows, or None when gallery.semantic is off
    space: GallerySpace | None  # None when gallery.fingerprint = "none"
    calibration: Calibration | None
    fingerprint_fn: FeatureFn | None = None

    @classmethod
    def load(cls, source: GallerySource, version: int) -> "GalleryView | None":
        """The view of ``source``'s gallery (None when no AI generator is enrolled). ``version`` is the gallery
        version it is built for (the caller's key for rebuilding it)."""
        gallery, gc = source.gallery, source.config.gallery
        enrolled = frozenset(g for g in gallery.generators() if g != REAL)
        if not enrolled:
            return None
        refs, vecs = [], None
        if gc.semantic:
            embedder = source.embedder
            all_refs, all_vecs = gallery.vectors(embedder.id, embedder.embed)
            keep = [i for i, r in enumerate(all_refs) if r.generator != REAL]
            refs, vecs = [all_refs[i] for i in keep], _unit(all_vecs[keep])
        space = calibration = fn = None
        fingerprint = source.fingerprint
        if fingerprint is not None:
            fn = fingerprint.extract
            space = GallerySpace.load(gallery, fingerprint.id, fn)
            calibration = calibrate(space, gc.target_fpr)
        return cls(enrolled, refs, vecs, space, calibration, fn)

    def query(self, query_vectors: np.ndarray, images: Sequence[Image.Image], names: Sequence[str]) -> list[QueryGallery]:
        out = []
        labels = np.array([r.generator for r in self.semantic_refs])
        sem_sims = np.asarray(query_vectors, np.float32) @ self.semantic_vectors.T if self.semantic_vectors is not None and len(labels) else None
        for i, (image, name) in enumerate(zip(images, names)):
            semantic = {}
            if sem_sims is not None:
                for g in sorted(set(labels)):
                    idx = np.flatnonzero(labels == g)
                    semantic[g] = (sem_sims[i, idx], [self.semantic_refs[j] for j in idx])
            fingerprint, margin, error = {}, None, None
            if self.space is not None and self.space.references:
                try:
                    q = self.space.transform(self.fingerprint_fn([image], [name]))
                except ImageError as exc:
                    error = str(exc)
                else:
                    sims = self.space.similarities(q)
                    fingerprint = {g: (s, self.space.references[j])
                                   for g, (s, j) in self.space.best_per_generator(sims)[0].items()}
                    margin = float(self.space.real_margin(q, sims)[0])
            out.append(QueryGallery(semantic, fingerprint, margin, error))
        return out

    def decide(self, prediction: str, scored: Iterable[str], qg: QueryGallery, *, open_set: bool,
               real_gate: bool) -> tuple[str, dict]:
        """Apply the calibrated gate and open-set rule. They only speak when every scored generator has
        references (a gallery cannot vouch for a generator it has never seen)."""
        cal = self.calibration
        covered = set(scored) <= self.enrolled
        info = {
            "fingerprint": {g: round(s, 6) for g, (s, _) in sorted(qg.fingerprint.items(), key=lambda kv: -kv[1][0])},
            "real_margin": None if qg.real_margin is None else round(qg.real_margin, 6),
            "covers_all_generators": covered,
            "unknown_threshold": None if cal is None else cal.unknown_threshold,
            "real_threshold": None if cal is None else cal.real_threshold,
            "decided_by": "scores",
        }
        if qg.error:
            info["error"] = qg.error
        if covered and cal is not None and qg.fingerprint:
            best = cal.relative({g: s for g, (s, _) in qg.fingerprint.items()})
            info["relative_score"] = round(best, 6)
            if real_gate and cal.real_threshold is not None and qg.real_margin > cal.real_threshold:
                prediction, info["decided_by"] = REAL, "real_gate"
            elif open_set and cal.unknown_threshold is not None and best < cal.unknown_threshold:
                prediction, info["decided_by"] = "unknown", "open_set"
        return prediction, info
