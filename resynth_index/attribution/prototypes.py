"""Generator prototypes: every cached candidate of a generator, summarised as its class mean in a whitened space.

A fine-tune shares its base model's architecture, VAE and text encoder, so no single candidate looks much more
like the query under one sibling than under the other; what differs is a small, consistent shift of the
whole output distribution. Averaging all of a generator's cached candidates removes the seed- and
prompt-specific part and keeps that shift, and whitening with the pooled within-generator covariance (shrunk
towards a multiple of the identity, so that a few hundred candidates suffice in a few hundred dimensions)
weighs each direction by how reliably it separates generators rather than by how much it varies. This is
Fisher's linear discriminant used as a nearest-class-mean rule, fitted on nothing but the candidates the
cache already holds: no training, and it follows the cache as it grows.

The score of a generator is the cosine, in the whitened space, between the query and that generator's mean
(both centred on the mean of all candidates). :meth:`Prototypes.scores` can leave one stored candidate out of
its own generator's mean, which the open-set calibration uses to score candidates as if they were queries.

:func:`sibling_groups` finds the generators that only the prototypes can tell apart: those whose candidates for
the same prompt and seed are near copies of each other (fine-tunes of one base), so that a query's cosine to
one of them is its cosine to the others, give or take noise (:func:`~resynth_index.attribution.scoring.evidence_scores`).
For each such family :func:`with_sibling_thumbnails` adds a second stage (:class:`SiblingThumbnails`): class
means of the family's own thumbnails, the one block the first stage leaves out, which move the members' scores
apart and leave the family's mean score as it was.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..store.cache import CandidateCache
    from ..store.lookup import StoredCandidate

#: candidates per generator read into the fit (a fixed-seed sample beyond this)
MAX_PER_GENERATOR = 20_000
#: fewer cached candidates than this for some generator: no prototypes (the other evidence decides)
MIN_PER_GENERATOR = 8
#: weight of the identity in the shrunk within-generator covariance. 0.1 for the 624-d embedding; the 1,712-d one
#: (the chroma spectra joined) has 2.7x fewer cached vectors per dimension, and on the hard benchmark 0.2 kept
#: clean top-1 within a query of 0.1 while JPEG 75 rose from 89.2% to 91.7% (README *Measured results*)
SHRINKAGE = 0.2
#: the open set's shrinkage, with a target per embedding block (``blocks``, below). One average variance for all
#: dimensions is far above a fingerprint dimension's own (the semantic block holds half the energy in 80 of 1,712
#: dimensions), so the attribution's prototypes barely whiten the fingerprint, whose texture is what sets an
#: unknown sibling apart. Measured on the hard benchmark's held-out generator and the embedded default's
#: calibration (README *Open set*): AUROC 0.939 -> 0.981, calibrated TPR at 5% FPR 100% -> 99.2% at 0.8. On the
#: 48-query benchmark 0.9 separated the held-out generator better under every transform measured; at 0.95 the
#: embedded default's calibration fell to its 99% floor (TPR at 5% FPR 97.3%, README *Open set*)
OPEN_SET_SHRINKAGE = 0.9
#: mean cosine between two generators' candidates for the same prompts and seeds above which they are siblings.
#: On the hard benchmark the fine-tune family's pairs read 0.986-0.990 and the family against SDXL 0.895
SIBLING_COSINE = 0.95
#: candidates compared per pair of generators
SIBLING_PAIRS = 512
#: the fine-tune siblings' thumbnail stage: its shrinkage (0.2 to 0.8 read within half a point of each other on
#: three draws of the hard benchmark) and the candidates per member its scale is read on
SIBLING_THUMBNAIL_SHRINKAGE = 0.5
SIBLING_SCALE_SAMPLE = 256


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Prototypes:
    mean: np.ndarray  # (d,) mean of all candidates
    # (d, d) inverse square root of the shrunk pooled within-generator covariance, in float32: every query reads it
    # whole, and float64 took twice as long for the same decisions
    whiten: np.ndarray
    sums: dict[str, np.ndarray]  # generator -> sum of its whitened, centred candidates
    counts: dict[str, int]
    vectors: int  # candidates fitted (refit when the cache has grown)
    columns: tuple[int, int] | None = None  # the stored rows' columns fitted (start, stop); None = all
    siblings: tuple[SiblingThumbnails, ...] = ()  # second stages, one per fine-tune family

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Centred, whitened rows (not normalised)."""
        x = np.atleast_2d(np.asarray(x, np.float32))
        if self.columns is not None:
            x = x[:, self.columns[0] : self.columns[1]]
        return (x - self.mean) @ self.whiten

    def cosines(self, rows: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(n, len(names)): each row's cosine to each named generator's mean in the whitened space."""
        means = np.stack([self.sums[g] / self.counts[g] for g in names])
        return _unit(self.transform(rows)) @ _unit(means).T

    def scores(self, query: np.ndarray, leave_out: tuple[str, np.ndarray] | None = None) -> dict[str, float]:
        """Cosine of one query to each generator's mean in the whitened space, fine-tune siblings' moved apart by
        their second stage (:class:`SiblingThumbnails`). ``leave_out`` = (generator, its whitened candidate)
        removes that candidate from its generator's mean."""
        q = _unit(self.transform(query)[0])
        out = {}
        for g, total in self.sums.items():
            n = self.counts[g]
            if leave_out is not None and leave_out[0] == g:
                total, n = total - leave_out[1], n - 1
            out[g] = float(_unit(total / n) @ q)
        for stage in self.siblings:
            out.update(stage.adjust(out, query))
        return out


@dataclass(frozen=True)
class SiblingThumbnails:
    """The second stage for one fine-tune family: a whitened nearest-class-mean discriminant fitted on the family's
    own candidates, on the embedding's thumbnail columns alone
    (:class:`~resynth_index.models.fingerprints.ThumbnailFingerprint`).

    The first stage's class means separate a light fine-tune from its base only so far: the global features
    barely move, while the small fixed pattern it leaves in the frame's layout of light and colour is there in
    the thumbnail, under a seed-to-seed variation that only a covariance of the family's own images, not one
    pooled over unrelated architectures, can whiten away. The stage moves each member's first-stage score by
    ``gain`` times its thumbnail cosine's lead over the family's mean; the family's mean score, and with it every
    comparison with other generators, is left as it was."""

    prototypes: Prototypes  # fitted on the family's candidates, thumbnail columns only
    gain: float  # weight times the ratio of the two stages' spreads among the family's own candidates

    def adjust(self, scores: Mapping[str, float], query: np.ndarray) -> dict[str, float]:
        names = [g for g in self.prototypes.sums if g in scores]
        thumb = self.prototypes.cosines(query, names)[0]
        return {g: scores[g] + self.gain * float(t - thumb.mean()) for g, t in zip(names, thumb)}


def fit_prototypes(per_generator: Mapping[str, np.ndarray], shrinkage: float = SHRINKAGE,
                   degraded: Mapping[str, np.ndarray] | None = None,
                   blocks: Sequence[int] | None = None, columns: tuple[int, int] | None = None) -> Prototypes | None:
    """Fit the whitened class means from each generator's candidate vectors and (``degraded``) the vectors of
    their degraded copies; None when some generator has fewer than :data:`MIN_PER_GENERATOR` candidates (copies
    do not count: copies of a few candidates are still a few candidates) or there are fewer than two.

    The covariance is shrunk towards its average variance, or with ``blocks`` (the sizes of the embedding's
    consecutive blocks, :func:`~resynth_index.models.embedders.embedding_blocks`) towards, per block, the
    geometric mean of that and the block's own average variance: each block's own alone whitens the fingerprint
    fully and drowns the semantic features that tell unrelated generators apart (the embedded default's
    calibration fell to TPR 98.4% at 5% FPR), one for all drowns the fingerprint. ``columns`` = (start, stop)
    fits those columns of the vectors alone, and the prototypes read the same columns of a query."""
    if len(per_generator) < 2 or min(len(v) for v in per_generator.values()) < MIN_PER_GENERATOR:
        return None
    degraded = degraded or {}
    cut = slice(*columns) if columns is not None else slice(None)
    data = {g: np.asarray(list(v) + list(degraded.get(g, [])), np.float32)[:, cut].astype(np.float64)
            for g, v in per_generator.items()}
    everything = np.concatenate(list(data.values()))
    mean = everything.mean(axis=0)
    within = np.concatenate([v - v.mean(axis=0) for v in data.values()])
    cov = within.T @ within / len(within)
    d = cov.shape[0]
    sizes = list(blocks) if blocks else [d]
    if sum(sizes) != d or min(sizes) < 1:
        raise ValueError(f"blocks {sizes} do not split {d} dimensions")
    bounds = np.cumsum([0] + sizes)
    overall = np.trace(cov) / d
    target = np.concatenate([np.full(n, np.sqrt(overall * np.trace(cov[a:b, a:b]) / n))
                             for a, b, n in zip(bounds, bounds[1:], sizes)])
    cov = (1.0 - shrinkage) * cov + shrinkage * np.diag(target)
    values, vecs = np.linalg.eigh(cov)
    whiten = vecs / np.sqrt(np.maximum(values, 1e-12 * values.max()))
    sums = {g: ((v - mean) @ whiten).sum(axis=0) for g, v in data.items()}
    return Prototypes(mean.astype(np.float32), whiten.astype(np.float32), sums, {g: len(v) for g, v in data.items()},
                      len(everything), columns)


def with_sibling_thumbnails(first: Prototypes, per_generator: Mapping[str, np.ndarray],
                            degraded: Mapping[str, np.ndarray], families: Sequence[Collection[str]],
                            columns: tuple[int, int], weight: float) -> Prototypes:
    """``first`` with a :class:`SiblingThumbnails` stage for each of ``families`` (groups of fine-tune siblings),
    fitted on ``columns`` (the thumbnail's) of the members' candidates and degraded copies. Each stage's gain
    puts its scores on the first stage's scale: ``weight`` times the ratio of how far the two stages' scores
    spread among the members, over a fixed-seed sample of the members' own candidates."""
    stages = []
    rng = np.random.default_rng(0)
    for family in families:
        members = sorted(family)
        fit = fit_prototypes({g: per_generator[g] for g in members}, SIBLING_THUMBNAIL_SHRINKAGE,
                             degraded={g: degraded.get(g, []) for g in members}, columns=columns)
        if fit is None:
            continue
        sample = np.concatenate([np.asarray(per_generator[g], np.float32)[
            rng.permutation(len(per_generator[g]))[:SIBLING_SCALE_SAMPLE]] for g in members])
        spread = first.cosines(sample, members).std(axis=1).mean()
        thumb_spread = fit.cosines(sample, members).std(axis=1).mean()
        stages.append(SiblingThumbnails(fit, float(weight * spread / max(thumb_spread, 1e-12))))
    return replace(first, siblings=tuple(stages))


def families_to_tell_apart(groups: Mapping[str, Collection[str]],
                           attributed_to: Mapping[str, str]) -> list[frozenset[str]]:
    """The distinct sibling groups whose members are attributed to two or more names: a group of one generator's
    settings variants decides nothing, so nothing is spent on telling its members apart."""
    distinct = {frozenset(group) for group in groups.values()}
    return sorted((f for f in distinct if len({attributed_to.get(g, g) for g in f}) > 1), key=sorted)


def sibling_groups(per_generator: Mapping[str, Sequence[StoredCandidate]],
                   threshold: float = SIBLING_COSINE) -> dict[str, frozenset[str]]:
    """Generator -> its group of siblings (itself included), for the generators that have any: generators joined
    when their stored candidates of the same prompt and position (candidate seeds follow the prompt, so those
    share a seed) have a mean cosine of at least ``threshold``, and groups joined through a common member.

    Such candidates differ by less than the seed-to-seed noise of a query's similarities: the restricted and
    unrestricted evidence cannot rank the group's members (on the hard benchmark each alone gives 50% sibling
    confusion, chance), while the prototypes, which average that noise away, can."""
    keyed = {g: {(c.prompt, c.position): c.vector for c in cands} for g, cands in per_generator.items()}
    names = list(keyed)
    group = {g: frozenset([g]) for g in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(keyed[a].keys() & keyed[b].keys())[:SIBLING_PAIRS]
            if not shared:
                continue
            va = np.stack([keyed[a][k] for k in shared]).astype(np.float32)
            vb = np.stack([keyed[b][k] for k in shared]).astype(np.float32)
            if float(np.einsum("ij,ij->i", va, vb).mean()) >= threshold:
                joined = group[a] | group[b]
                for g in joined:
                    group[g] = joined
    return {g: members for g, members in group.items() if len(members) > 1}


def attribution_prototypes(stored: Mapping[str, tuple[Sequence[StoredCandidate], Sequence[StoredCandidate]]],
                           columns: tuple[int, int] | None, thumbnail: tuple[int, int] | None,
                           attributed_to: Mapping[str, str], thumbnail_weight: float,
                           ) -> tuple[Prototypes | None, dict[str, frozenset[str]]]:
    """The attribution's prototypes fitted on ``stored`` (:func:`stored_candidates`): the class means on
    ``columns``, with a thumbnail stage (``thumbnail``: its columns) for each family of fine-tune siblings that
    is attributed to two or more names; and the sibling groups found on the way."""
    clean = {g: [c.vector for c in cands] for g, (cands, _) in stored.items()}
    copies = {g: [c.vector for c in cands] for g, (_, cands) in stored.items()}
    fit = fit_prototypes(clean, degraded=copies, columns=columns)
    groups = sibling_groups({g: cands for g, (cands, _) in stored.items()})
    families = families_to_tell_apart(groups, attributed_to)
    if fit is not None and thumbnail and families and thumbnail_weight > 0:
        fit = with_sibling_thumbnails(fit, clean, copies, families, thumbnail, thumbnail_weight)
    return fit, groups


@dataclass(frozen=True)
class SiblingSeeds:
    """Where fine-tune siblings' extra seeds are stored
    (:func:`~resynth_index.attribution.resynthesis.sibling_seed_stores`)."""

    namespaces: Mapping[str, str]  # generator -> its extra seeds' namespace
    copies: Mapping[str, str]  # generator -> their degraded copies' namespace
    start: int  # the first extra seed's position in its prompt's seed range: they follow the γ candidates


def stored_candidates(cache: CandidateCache, namespaces: Mapping[str, str], degraded: Mapping[str, str] | None = None,
                      limit: int = MAX_PER_GENERATOR, siblings: SiblingSeeds | None = None,
                      ) -> dict[str, tuple[list[StoredCandidate], list[StoredCandidate]]]:
    """Per generator: a fixed-seed sample of up to ``limit`` of its cached candidates, and of their degraded
    copies (``degraded``: generator -> the copies' namespace; none when absent or never built). A sibling's extra
    seeds (``siblings``), where stored, follow its candidates, numbered by their seeds' positions, as a larger γ
    would have stored them; likewise their copies."""
    degraded = degraded or {}

    def read(ns: str | None, start: int = 0) -> list[StoredCandidate]:
        got = cache.sample(ns, limit) if ns else []
        return [replace(c, position=c.position + start) for c in got] if start else got

    out = {}
    for g, ns in namespaces.items():
        clean, copies = read(ns), read(degraded.get(g))
        if siblings is not None:
            clean += read(siblings.namespaces.get(g), siblings.start)
            copies += read(siblings.copies.get(g))
        out[g] = (clean, copies)
    return out


__all__ = ["MIN_PER_GENERATOR", "OPEN_SET_SHRINKAGE", "Prototypes", "SIBLING_COSINE", "SiblingSeeds",
           "SiblingThumbnails", "attribution_prototypes", "families_to_tell_apart", "fit_prototypes", "sibling_groups",
           "stored_candidates", "with_sibling_thumbnails"]
