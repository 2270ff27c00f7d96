"""The engine: joins the stages of DESIGN.md §2 into ``build`` (precompute) and ``attribute`` (query).

One query::

    decode/guard -> invert (metadata first) -> normalise -> cache lookup (hit | near | miss)
      miss: resynthesise gamma candidates with every generator lacking them -> embed -> write through
    embed the query -> restricted scores (this prompt's candidates) + unrestricted kNN (whole per-generator index)
      -> aggregate -> combine -> fuse with the reference gallery (if any generator is enrolled)
      -> decide (generator, "unknown", or "real" by the gallery's calibrated gate) -> evidence

Models load lazily: a query answered from the cache never loads a generator. Each generator's cache namespace
hashes its settings, the seeds and the embedder id, so changing any of them never returns stale vectors.

Example::

    from resynth_index import Attributor
    with Attributor(index="cache") as engine:        # no config: the embedded offline default
        engine.build(limit=8)
        for result in engine.attribute(["samples/"]):
            print(result.path, result.prediction, result.cache)
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..config import Config, default_index_dir, load_config
from ..devices import resolve_device
from ..errors import ConfigError, RindexError
from ..store.keys import namespace_digest, normalize_prompt
from .scoring import aggregate, combine, decide, fuse

PACKAGED_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts.txt"

ImageInput = str | os.PathLike | bytes | Image.Image


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
    #: gallery view, when references are enrolled: fingerprint scores, real margin, thresholds, what decided
    gallery: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSONL contract of DESIGN.md §3 (errors carry only path and error)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        d = asdict(self)
        d.pop("error")
        d["scores"] = {g: round(s, 6) for g, s in self.scores.items()}
        d["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
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


MAX_GAMMA = 256


def candidate_seeds(normalized_prompt: str, gamma: int, seed_base: int = 0) -> list[int]:
    """The γ candidate seeds of a prompt: consecutive, starting at a point derived from the prompt's hash.

    Deriving them from the prompt (rather than reusing seeds 0..γ-1 for every prompt) makes the cached gallery
    cover many initial-noise patterns, which the unrestricted kNN relies on; it measurably helped on the zoo.
    They lie in ``[2**32, 2**41)`` (plus ``seed_base``), so they never meet sample or user seeds below 2**32.
    """
    if not 1 <= gamma <= MAX_GAMMA:
        raise ConfigError(f"resynthesis.gamma must be between 1 and {MAX_GAMMA}, got {gamma}")
    h = int.from_bytes(hashlib.sha256(normalized_prompt.encode("utf-8")).digest()[:4], "big")
    start = seed_base + (1 << 32) + (h << 8)
    return list(range(start, start + gamma))


def _ref_name(ref) -> str:
    return ref.path or f"ref:{ref.id}"


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Prompts one per line; blank lines and lines starting with '#' are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read prompt list {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Attributor:
    """Attribute images to the configured generators, with a persistent candidate cache at ``index``.

    ``config`` is a TOML path, a dict of the same shape, a :class:`Config`, or None for the embedded default.
    ``device`` overrides the config's device. ``readonly`` opens the cache for reading only (no write-through).
    """

    def __init__(
        self,
        config: str | os.PathLike | Mapping[str, Any] | Config | None = None,
        *,
        index: str | os.PathLike | None = None,
        device: str | None = None,
        readonly: bool = False,
    ) -> None:
        self.config = load_config(config)
        self.index_dir = Path(index) if index is not None else default_index_dir()
        self.device = resolve_device(device or self.config.device)
        self.readonly = readonly
        self._cache = None
        self._embedder = None
        self._inverter = None
        self._generators: dict[str, Any] = {}
        self._namespaces: dict[str, str] | None = None
        self._gallery = None
        self._fingerprint = None
        self._gallery_view = None  # (gallery version, GalleryView)
        self._prompt_embedder = None  # shared by reopen(); else loaded with the cache
        self.images_generated = 0  # candidate images this engine has generated (build and write-through)
        #: running mean of resynthesis seconds per prompt (all generators), for ``resynthesis_budget``
        self.resynthesis_seconds_per_prompt: float | None = None

    # ----------------------------------------------------------------- lazily loaded stages
    @property
    def cache(self):
        if self._cache is None:
            from ..store.cache import CandidateCache
            from ..models.prompt_embedders import load_prompt_embedder

            cc = self.config.cache
            prompt_embedder = self._prompt_embedder
            if prompt_embedder is None and cc.prompt_embedder != "none":
                prompt_embedder = load_prompt_embedder(cc.prompt_embedder)
            kwargs = {"near_threshold": cc.near_threshold} if cc.near_threshold > 0 else {}
            self._cache = CandidateCache(self.index_dir, prompt_embedder=prompt_embedder, readonly=self.readonly, **kwargs)
        return self._cache

    @property
    def embedder(self):
        if self._embedder is None:
            from ..models.embedders import load_embedder

            ec = self.config.embedder
            self._embedder = load_embedder(
                ec.kind,
                model=ec.model or None,
                pretrained=ec.pretrained or None,
                layer=None if ec.layer < 0 else ec.layer,
                device=self.device,
                batch_size=ec.batch_size,
            )
        return self._embedder

    @property
    def inverter(self):
        if self._inverter is None:
            from ..models.inverters import ChainInverter, load_inverter

            ic = self.config.inverter
            options = {
                "metadata": {},
                "label": {},
                "blip": {"source": ic.blip_model, "max_new_tokens": ic.max_new_tokens},
                "clip-interrogator": {"model": ic.clip_model, "pretrained": ic.clip_pretrained or None},
            }
            stages = [load_inverter(kind, device=self.device, **options[kind]) for kind in ic.chain]
            self._inverter = stages[0] if len(stages) == 1 else ChainInverter(stages)
        return self._inverter

    @property
    def gallery(self):
        """The enrolled reference images (:class:`~resynth_index.gallery.references.Gallery`) under ``INDEX/gallery``."""
        if self._gallery is None:
            from ..gallery.references import Gallery

            self._gallery = Gallery(self.index_dir, readonly=self.readonly)
        return self._gallery

    @property
    def fingerprint(self):
        """The gallery's fingerprint extractor, or None when ``gallery.fingerprint = "none"``."""
        gc = self.config.gallery
        if self._fingerprint is None and gc.fingerprint != "none":
            from ..models.fingerprints import load_fingerprint

            options = ({"window": gc.window, "patches": gc.patches} if gc.fingerprint == "spectrum" else
                       {"backbone": gc.backbone, "layer": gc.layer, "bits": gc.bits, "patch": gc.patch,
                        "patches": gc.patches})
            self._fingerprint = load_fingerprint(gc.fingerprint, device=self.device, **options)
        return self._fingerprint

    def _gallery_features(self) -> dict[str, Any]:
        """Feature id -> function of PIL images, for every feature the gallery stores."""
        out = {}
        if self.config.gallery.semantic:
            out[self.embedder.id] = self.embedder.embed
        if self.fingerprint is not None:
            out[self.fingerprint.id] = self.fingerprint.extract
        return out

    @property
    def runnable(self) -> list[str]:
        """Configured generators that can be run (have a ``source``); the others are gallery-only."""
        return [g.name for g in self.config.generators if g.source.strip()]

    def candidates(self) -> list[str]:
        """Every generator an image can be attributed to: the configured ones and every enrolled gallery."""
        from ..gallery.references import REAL

        names = [g.name for g in self.config.generators]
        return names + [g for g in self.gallery.generators() if g != REAL and g not in names]

    def enroll(self, name: str, inputs, *, progress: bool = False):
        """Add reference images for generator ``name`` (``"real"``: real photos for the gate's calibration);
        returns an :class:`~resynth_index.gallery.references.EnrollReport`. See :mod:`resynth_index.gallery.references`."""
        return self.gallery.enroll(name, inputs, features=self._gallery_features(), progress=progress)

    def gallery_view(self):
        """The matching state of the gallery for the current config (None when no generator is enrolled),
        rebuilt when references are added or removed."""
        from ..gallery.matching import GalleryView

        version = self.gallery.version()
        if self._gallery_view is None or self._gallery_view[0] != version:
            self._gallery_view = (version, GalleryView.load(self, version))
        return self._gallery_view[1]

    def generator(self, name: str):
        """The loaded generator ``name`` (loaded on first use)."""
        if name not in self._generators:
            from ..models.generators import load_generator

            self._generators[name] = load_generator(self.config.generator(name), device=self.device)
        return self._generators[name]

    @property
    def namespaces(self) -> dict[str, str]:
        """Generator name -> cache namespace digest (settings + seeds + embedder id + schema version)."""
        if self._namespaces is None:
            from ..models.generators import generator_namespace

            rc = self.config.resynthesis
            seeds = {"rule": "sha256(prompt)[:4] << 8 + 2**32", "seed_base": rc.seed_base, "gamma": rc.gamma}
            self._namespaces = {
                g.name: namespace_digest({
                    "generator": generator_namespace(g, self.device),
                    "seeds": seeds,
                    "embedder": self.embedder.id,
                })
                for g in self.config.generators
                if g.source.strip()
            }
        return self._namespaces

    # ----------------------------------------------------------------- build
    def build(
        self, prompts: Iterable[str] | None = None, *, limit: int | None = None, progress: bool = True
    ) -> BuildReport:
        """Precompute candidates for ``prompts`` (default: the config's list, else the packaged one).

        Resumable: prompts already cached under the current namespaces are skipped, and each batch commits
        atomically, so an interrupted build continues where it stopped.
        """
        from tqdm.auto import tqdm

        if prompts is None:
            prompts = read_prompt_file(self.config.build.prompts or PACKAGED_PROMPTS)
        limit = limit if limit is not None else self.config.build.limit
        unique: dict[str, str] = {}
        for p in prompts:
            unique.setdefault(normalize_prompt(p), p)
        todo_all = list(unique.values())[: limit or None]
        start = time.perf_counter()
        todo = [p for p in todo_all if not self.cache.contains(p, self.namespaces)]
        images = 0
        batch = self.config.build.batch_size
        with tqdm(total=len(todo), unit="prompt", desc="build", disable=not progress, dynamic_ncols=True) as bar:
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                images += self._resynthesize(chunk)
                bar.update(len(chunk))
        return BuildReport(len(todo_all), len(todo_all) - len(todo), len(todo), images, time.perf_counter() - start)

    def _resynthesize(self, prompts: Sequence[str]) -> int:
        """Generate, embed and commit the missing candidates of ``prompts``; returns images generated."""
        if self.readonly:
            raise RindexError("the index is open read-only: cannot resynthesize")
        rc = self.config.resynthesis
        seeds = {p: candidate_seeds(normalize_prompt(p), rc.gamma, rc.seed_base) for p in prompts}
        missing_by_prompt = {
            p: [g for g, ns in self.namespaces.items() if not self.cache.contains(p, {g: ns})] for p in prompts
        }
        vectors: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        images = 0
        for g in self.config.generators:
            if g.name not in self.namespaces:
                continue  # gallery-only
            wanted = [p for p, missing in missing_by_prompt.items() if g.name in missing]
            if not wanted:
                continue
            pairs = [(p, s) for p in wanted for s in seeds[p]]
            imgs = self.generator(g.name).generate([p for p, _ in pairs], [s for _, s in pairs])
            emb = self.embedder.embed(imgs)
            images += len(imgs)
            for j, p in enumerate(wanted):
                vectors[p][g.name] = emb[j * rc.gamma : (j + 1) * rc.gamma]
        entries = [
            (p, {g: (self.namespaces[g], seeds[p], v) for g, v in per_gen.items()}) for p, per_gen in vectors.items()
        ]
        if entries:
            self.cache.put_many(entries)
        self.images_generated += images
        return images

    # ----------------------------------------------------------------- query
    def attribute(
        self,
        inputs: Sequence[ImageInput] | ImageInput,
        *,
        resynthesize: bool = True,
        top_k: int = 3,
    ) -> list[Attribution]:
        """Attribute images: paths (directories are recursed), bytes, or PIL images. One result per image.

        A broken input gets a result with ``error`` set; the others are unaffected. Misses resynthesize and
        write through unless ``resynthesize`` is False (then only cached evidence is used).
        """
        from ..images.decode import decode_image, iter_image_paths

        if isinstance(inputs, (str, os.PathLike, bytes, Image.Image)):
            inputs = [inputs]
        items: list[ImageInput] = []
        for item in inputs:
            if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
                items.extend(iter_image_paths([item]))
            else:
                items.append(item)

        results: list[Attribution] = []
        decoded = []
        for n, item in enumerate(items):
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"<input {n}>"
            t0 = time.perf_counter()
            try:
                d = decode_image(item, name=name)
            except RindexError as exc:
                results.append(Attribution(path=name, error=str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - one bad input must never stop the run
                results.append(Attribution(path=name, error=f"{name}: {type(exc).__name__}: {exc}"))
                continue
            res = Attribution(path=name, timings={"decode": time.perf_counter() - t0})
            results.append(res)
            decoded.append((res, d))
        if decoded:
            self._attribute_decoded(decoded, resynthesize=resynthesize, top_k=top_k)
        return results

    def attribute_decoded(
        self,
        images: Sequence[Any],
        *,
        names: Sequence[str | None] | None = None,
        resynthesize: bool = True,
        resynthesis_budget: float | None = None,
        top_k: int = 3,
    ) -> list[Attribution]:
        """Attribute images already decoded by :func:`~resynth_index.images.decode.decode_image` (the serving path).

        ``names`` label the results (default: each image's path, else ``<input N>``). ``resynthesis_budget``
        (seconds) caps inline resynthesis: only as many missed prompts as fit, at the measured mean cost per
        prompt (:attr:`resynthesis_seconds_per_prompt`; unknown before the first miss, which always runs), are
        resynthesized, the most frequent first; the others are answered from cached evidence only and keep
        ``cache == "miss"`` with no ``"resynthesize"`` timing, which is how a caller tells them apart.
        """
        results = []
        for n, d in enumerate(images):
            name = names[n] if names is not None and n < len(names) else None
            results.append(Attribution(path=name or d.path or f"<input {n}>"))
        if results:
            self._attribute_decoded(list(zip(results, images)), resynthesize=resynthesize, top_k=top_k,
                                    resynthesis_budget=resynthesis_budget)
        return results

    def share_models_from(self, other: "Attributor") -> None:
        """Adopt the generators ``other`` has loaded with identical settings, and its inverter and embedder
        when their configs are identical, so that engines over different indexes load each model once."""
        for name, gen in other._generators.items():
            mine = next((g for g in self.config.generators if g.name == name), None)
            if mine is not None and mine == other.config.generator(name):
                self._generators.setdefault(name, gen)
        same_device = self.device == other.device
        if same_device and self._inverter is None and self.config.inverter == other.config.inverter:
            self._inverter = other._inverter
        if same_device and self._embedder is None and self.config.embedder == other.config.embedder:
            self._embedder = other._embedder

    def reopen(self) -> "Attributor":
        """A new engine on the same index, config and access mode that shares this one's loaded models
        (inverter, embedder, generators, prompt embedder) but opens its own cache: a fresh snapshot of the
        index for the serving layer's hot swap. Close each engine independently (closing one never closes
        the other's cache; the models are shared)."""
        other = Attributor(self.config, index=self.index_dir, device=self.device, readonly=self.readonly)
        other._embedder, other._inverter, other._namespaces = self._embedder, self._inverter, self._namespaces
        other._generators, other._fingerprint = self._generators, self._fingerprint
        other._prompt_embedder = self._cache.prompt_embedder if self._cache is not None else self._prompt_embedder
        other.resynthesis_seconds_per_prompt = self.resynthesis_seconds_per_prompt
        return other

    def _attribute_decoded(self, decoded, *, resynthesize: bool, top_k: int,
                           resynthesis_budget: float | None = None) -> None:
        n = len(decoded)
        ns = self.namespaces
        cache = self.cache if ns else None  # open it (and load the prompt embedder) before any stage is timed

        t0 = time.perf_counter()
        inversions = self.inverter.invert([d for _, d in decoded]) if ns else [None] * n
        per_invert = (time.perf_counter() - t0) / n

        t0 = time.perf_counter()
        query_vectors = self.embedder.embed([d.image for _, d in decoded])
        per_embed = (time.perf_counter() - t0) / n

        lookups = []
        for (res, _), inv in zip(decoded, inversions):
            res.timings["embed"] = per_embed
            if not ns:  # gallery-only: no prompt to invert, no candidates to look up
                lookups.append(None)
                continue
            res.prompt, res.prompt_source = (inv.prompt, inv.source) if inv else ("", "none")
            res.timings["invert"] = per_invert
            t0 = time.perf_counter()
            lookups.append(cache.lookup(res.prompt, ns))
            res.timings["lookup"] = time.perf_counter() - t0

        misses = {}
        for lk, (res, _) in zip(lookups, decoded):
            if lk is None:
                continue
            res.cache = lk.status
            if lk.status == "miss" and resynthesize and lk.missing:
                misses.setdefault(lk.normalized_prompt, []).append(res)
        if misses and resynthesis_budget is not None and self.resynthesis_seconds_per_prompt:
            fit = int(max(0.0, resynthesis_budget) // self.resynthesis_seconds_per_prompt)
            ranked = sorted(misses, key=lambda k: -len(misses[k]))
            misses = {k: misses[k] for k in ranked[:fit]}
        if misses:
            t0 = time.perf_counter()
            self._resynthesize([group[0].prompt for group in misses.values()])
            elapsed = time.perf_counter() - t0
            per_prompt = elapsed / len(misses)
            prev = self.resynthesis_seconds_per_prompt
            self.resynthesis_seconds_per_prompt = per_prompt if prev is None else 0.7 * prev + 0.3 * per_prompt
            per_miss = elapsed / sum(len(g) for g in misses.values())
            for group in misses.values():
                for res in group:
                    res.timings["resynthesize"] = per_miss
            lookups = [cache.lookup(res.prompt, ns) if res.cache == "miss" else lk for lk, (res, _) in zip(lookups, decoded)]

        t0 = time.perf_counter()
        sc, gc = self.config.scoring, self.config.gallery
        unrestricted_hits = {}
        if sc.mode != "restricted":
            for g, namespace in ns.items():
                unrestricted_hits[g] = cache.knn(g, namespace, query_vectors, sc.unrestricted_k)
        per_knn = (time.perf_counter() - t0) / n

        t0 = time.perf_counter()
        view = self.gallery_view()
        gallery = (view.query(query_vectors, [d.image for _, d in decoded], [r.path or "<image>" for r, _ in decoded])
                   if view is not None else [None] * n)
        per_gallery = (time.perf_counter() - t0) / n

        for i, ((res, _), lk) in enumerate(zip(decoded, lookups)):
            t0 = time.perf_counter()
            q = query_vectors[i]
            qg = gallery[i]
            if lk is not None:
                res.matched_prompt = lk.matched_prompt
                res.prompt_similarity = lk.similarity
            restricted_sims = {g: c.vectors.astype(np.float32) @ q for g, c in lk.candidates.items()} if lk else {}
            unrestricted_sims = {
                g: np.array([nb.score for nb in hits[i]], dtype=np.float32) for g, hits in unrestricted_hits.items()
            }
            if qg is not None and sc.mode != "restricted":
                for g, (sims, _) in qg.semantic.items():
                    unrestricted_sims[g] = np.concatenate([unrestricted_sims.get(g, np.zeros(0, np.float32)), sims])
            scores = combine(aggregate(restricted_sims, sc), aggregate(unrestricted_sims, sc), sc)
            if qg is not None:
                scores = fuse(scores, {g: s for g, (s, _) in qg.fingerprint.items()}, gc.weight)
            res.scores = dict(sorted(scores.items(), key=lambda kv: -kv[1]))
            res.prediction = decide(scores, sc).prediction
            if qg is not None:
                res.prediction, res.gallery = view.decide(res.prediction, scores, qg, open_set=gc.open_set,
                                                          real_gate=gc.real_gate)
            res.evidence = self._evidence(lk, restricted_sims, unrestricted_hits, qg, i, top_k)
            res.timings["score"] = per_knn + time.perf_counter() - t0
            if view is not None:
                res.timings["gallery"] = per_gallery

    @staticmethod
    def _evidence(lookup, restricted_sims, unrestricted_hits, qg, i, top_k) -> dict[str, list[Evidence]]:
        out: dict[str, list[Evidence]] = {}
        names = set(restricted_sims) | set(unrestricted_hits) | (set(qg.semantic) | set(qg.fingerprint) if qg else set())
        for g in names:
            items = []
            if g in restricted_sims:
                cand = lookup.candidates[g]
                for j in np.argsort(-restricted_sims[g])[:top_k]:
                    items.append(Evidence(float(restricted_sims[g][j]), cand.prompt, int(cand.seeds[j]), "restricted"))
            for nb in unrestricted_hits.get(g, [[]] * (i + 1))[i][:top_k]:
                items.append(Evidence(float(nb.score), nb.prompt, int(nb.seed), "unrestricted"))
            if qg is not None and g in qg.semantic:
                sims, refs = qg.semantic[g]
                for j in np.argsort(-sims)[:top_k]:
                    items.append(Evidence(float(sims[j]), None, None, "gallery", _ref_name(refs[j])))
            if qg is not None and g in qg.fingerprint:
                score, ref = qg.fingerprint[g]
                items.append(Evidence(score, None, None, "fingerprint", _ref_name(ref)))
            out[g] = items
        return out

    # ----------------------------------------------------------------- housekeeping
    def info(self) -> dict[str, Any]:
        """What the index holds, and the namespaces the current config reads and writes."""
        info = dict(self.cache.info())
        info["index"] = str(self.index_dir)
        info["config_namespaces"] = dict(self.namespaces)
        view = self.gallery_view()
        info["gallery"] = {
            "references": self.gallery.generators(),
            "fingerprint": None if view is None or view.space is None else view.space.feature_id,
            "real_set": None if view is None or view.space is None else view.space.real_source,
            "calibration": None if view is None or view.calibration is None else view.calibration.to_dict(),
        }
        return info

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    def __enter__(self) -> "Attributor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
