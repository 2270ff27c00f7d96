"""The engine: ``build`` (precompute candidates) and ``attribute`` (query), over one index and one config.

One query::

    decode/guard -> invert (metadata first) -> normalise -> cache lookup (hit | near | miss)
      miss: resynthesise gamma candidates with every generator lacking them -> embed -> write through
    embed the query -> restricted scores (this prompt's candidates) + unrestricted kNN (whole per-generator index)
      -> aggregate -> combine -> fuse with the reference gallery (if any generator is enrolled)
      -> decide (generator, "unknown", or "real" by the gallery's calibrated gate) -> evidence

:class:`Attributor` is the facade: it owns the index (candidate cache, reference gallery) and a
:class:`~resynth_index.attribution.loaded.LoadedModels`; the query steps are in
:mod:`~resynth_index.attribution.query`, resynthesis in :mod:`~resynth_index.attribution.resynthesis`, the
results in :mod:`~resynth_index.attribution.results`.

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

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from PIL import Image

from ..config import Config, default_index_dir, load_config
from ..devices import apply_thread_policy, ensure_thread_policy, resolve_device, thread_report
from ..errors import RindexError
from ..provenance import GeneratorNames
from . import provenance_step, query
from .loaded import LoadedModels
from .resynthesis import (PACKAGED_PROMPTS, build_workers, candidate_seeds, degraded_namespaces, prompts_to_build,
                          prototype_only_counts, read_prompt_file, resynthesize_missing, sibling_seed_stores)
from .results import Attribution, BuildReport, Evidence

if TYPE_CHECKING:
    from ..gallery.matching import GalleryView
    from ..gallery.references import EnrollReport, Gallery
    from ..images.decode import DecodedImage
    from ..models.embedders import Embedder
    from ..models.fingerprints import Fingerprint
    from ..models.generators import Generator
    from ..models.inverters import Inverter
    from ..store.cache import CandidateCache
    from .open_set import OpenSetCalibration
    from .prototypes import Prototypes, SiblingSeeds

__all__ = [
    "PACKAGED_PROMPTS",
    "Attribution",
    "Attributor",
    "BuildReport",
    "Evidence",
    "ImageInput",
    "candidate_seeds",
    "read_prompt_file",
]

ImageInput = str | os.PathLike | bytes | Image.Image


class Attributor:
    """Attribute images to the configured generators, with a persistent candidate cache at ``index``.

    ``config`` is a TOML path, a dict of the same shape, a :class:`Config`, or None for the embedded default.
    ``device`` overrides the config's device. ``readonly`` opens the cache for reading only (no write-through).
    ``threads`` overrides the config's ``threads`` (0: automatic); the thread policy is process-wide and applied
    here (see :func:`~resynth_index.devices.apply_thread_policy`), and :attr:`threads` is the count in effect.
    """

    def __init__(
        self,
        config: str | os.PathLike | Mapping[str, Any] | Config | None = None,
        *,
        index: str | os.PathLike | None = None,
        device: str | None = None,
        readonly: bool = False,
        threads: int | None = None,
    ) -> None:
        self.config = load_config(config)
        if threads is not None:
            self.config = dataclasses.replace(self.config, threads=threads)
        self.threads = apply_thread_policy(self.config.threads)
        self.index_dir = Path(index) if index is not None else default_index_dir()
        self.device = resolve_device(device or self.config.device)
        self.readonly = readonly
        #: the models this config uses, loaded on first use; shared with engines made by :meth:`reopen`
        self.models = LoadedModels(self.config, self.device)
        self._cache = None
        self._writer_lock = None  # taken early by lock_for_writing(), handed to the cache
        self._gallery = None
        self._gallery_view = None  # (gallery version, GalleryView)
        self._open_set: OpenSetCalibration | None = None
        # "attribution" | "open_set" -> (stored vectors when fitted, the fit)
        self._prototypes: dict[str, tuple[int, Prototypes | None]] = {}
        self._siblings: dict[str, frozenset[str]] = {}  # found with the attribution's prototypes
        self._generator_names: GeneratorNames | None = None
        self._query_size: tuple[tuple[int, int] | None, tuple[int, int] | None] | None = None  # once worked out
        self.images_generated = 0  # candidate images this engine has generated (build and write-through)
        #: running mean of resynthesis seconds per prompt (all generators), for ``resynthesis_budget``
        self.resynthesis_seconds_per_prompt: float | None = None

    # ----------------------------------------------------------------- lazily loaded stages
    @property
    def cache(self) -> CandidateCache:
        """The candidate cache (:class:`~resynth_index.store.cache.CandidateCache`) at ``index``."""
        if self._cache is None:
            from ..store.cache import DEFAULT_NEAR_THRESHOLD, CandidateCache

            cc = self.config.cache
            self._cache = CandidateCache(
                self.index_dir,
                prompt_embedder=self.models.get_prompt_embedder(),
                near_threshold=cc.near_threshold if cc.near_threshold > 0 else DEFAULT_NEAR_THRESHOLD,
                readonly=self.readonly,
                writer_lock=self._writer_lock,
            )
        return self._cache

    def lock_for_writing(self) -> None:
        """Take the index's writer lock now, before any model loads, so that a second writer is refused at
        once (:class:`~resynth_index.store.writer_lock.CacheLockedError`) instead of after loading its models.
        Writers call it first; the cache opened later keeps the lock. A no-op for a read-only engine."""
        from ..store.writer_lock import WriterLock

        if self.readonly or self._cache is not None or self._writer_lock is not None:
            return
        from ..store.index_dir import check_index_dir

        check_index_dir(self.index_dir, writer=True)
        lock = WriterLock(os.fspath(self.index_dir))
        lock.acquire(0.0)
        self._writer_lock = lock

    @property
    def embedder(self) -> Embedder:
        """The image embedder (:class:`~resynth_index.models.embedders.Embedder`) of ``[embedder]``."""
        return self.models.get_embedder()

    @property
    def inverter(self) -> Inverter:
        """The prompt inverter (:class:`~resynth_index.models.inverters.Inverter`) of ``[inverter]``."""
        return self.models.get_inverter()

    @property
    def gallery(self) -> Gallery:
        """The enrolled reference images (:class:`~resynth_index.gallery.references.Gallery`) under ``INDEX/gallery``."""
        if self._gallery is None:
            from ..gallery.references import Gallery

            self._gallery = Gallery(self.index_dir, readonly=self.readonly)
        return self._gallery

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The gallery's fingerprint extractor, or None when ``gallery.fingerprint = "none"``."""
        return self.models.get_fingerprint()

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

        names = self.config.attribution_names
        return names + [g for g in self.gallery.generators() if g != REAL and g not in names]

    def enroll(self, name: str, inputs, *, progress: bool = False) -> EnrollReport:
        """Add reference images for generator ``name`` (``"real"``: real photos for the gate's calibration);
        returns an :class:`~resynth_index.gallery.references.EnrollReport`. See :mod:`resynth_index.gallery.references`;
        a refused name (:mod:`resynth_index.gallery.names`) raises UsageError before any model loads."""
        from ..gallery.names import check_generator_name

        check_generator_name(name)
        return self.gallery.enroll(name, inputs, features=self._gallery_features(), progress=progress)

    def gallery_view(self) -> GalleryView | None:
        """The matching state of the gallery for the current config (None when no generator is enrolled),
        rebuilt when references are added or removed."""
        from ..gallery.matching import GalleryView

        version = self.gallery.version()
        if self._gallery_view is None or self._gallery_view[0] != version:
            self._gallery_view = (version, GalleryView.load(self, version))
        return self._gallery_view[1]

    def generator(self, name: str) -> Generator:
        """The loaded generator ``name`` (loaded on first use)."""
        return self.models.get_generator(name)

    @property
    def namespaces(self) -> dict[str, str]:
        """Generator name -> cache namespace digest (settings + seeds + embedder id + schema version)."""
        return self.models.get_namespaces()

    # ----------------------------------------------------------------- build
    def build(
        self, prompts: Iterable[str] | None = None, *, limit: int | None = None, progress: bool = True
    ) -> BuildReport:
        """Precompute candidates for ``prompts`` (default: the config's list, else the packaged one), then the
        extra seeds of the generators that have a fine-tune sibling (``resynthesis.sibling_seeds``).

        Resumable: prompts already cached under the current namespaces are skipped, and each batch commits
        atomically, so an interrupted build continues where it stopped.
        """
        todo_all = self.prompts_to_build(prompts, limit=limit)
        start = time.perf_counter()
        todo = [p for p in todo_all if not self.cache.contains(p, self.namespaces)]
        images_before = self.images_generated
        self._build_batches(todo, self.namespaces, "build", progress)
        siblings = self._build_sibling_seeds(todo_all, progress)
        return BuildReport(len(todo_all), len(todo_all) - len(todo), len(todo), self.images_generated - images_before,
                           time.perf_counter() - start, siblings)

    def _build_batches(self, prompts: Sequence[str], namespaces: Mapping[str, str], desc: str, progress: bool,
                       positions: range | None = None) -> None:
        from tqdm.auto import tqdm

        batch = self.config.build.batch_size
        with tqdm(total=len(prompts), unit="prompt", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
            for i in range(0, len(prompts), batch):
                chunk = prompts[i : i + batch]
                self._resynthesize(chunk, namespaces, positions)
                bar.update(len(chunk))

    def _build_sibling_seeds(self, prompts: Sequence[str], progress: bool) -> tuple[str, ...]:
        """Generate the extra seeds of ``prompts`` for every generator with a fine-tune sibling (found on the
        candidates just built) that lacks them; returns those generators. A group of one generator's settings
        variants gets none: they are attributed to one name, so telling them apart decides nothing."""
        from .prototypes import families_to_tell_apart

        stores = self._sibling_seeds()
        groups = self.siblings() if stores is not None else {}
        told_apart = set().union(*families_to_tell_apart(groups, self.config.attributed_to))
        siblings = tuple(g for g in self.namespaces if g in told_apart)
        if not siblings:
            return ()
        wanted = {g: stores.namespaces[g] for g in siblings}
        todo = [p for p in prompts if not self.cache.contains(p, wanted)]
        self._build_batches(todo, wanted, f"sibling seeds ({', '.join(siblings)})", progress,
                            self.config.resynthesis.sibling_positions)
        return siblings

    def prompts_to_build(self, prompts: Iterable[str] | None = None, *, limit: int | None = None) -> list[str]:
        """The distinct prompts a build of ``prompts`` (default: the configured list) covers
        (:func:`~resynth_index.attribution.resynthesis.prompts_to_build`)."""
        return prompts_to_build(self.config.build, prompts, limit=limit)

    def _resynthesize(self, prompts: Sequence[str], namespaces: Mapping[str, str] | None = None,
                      positions: range | None = None) -> int:
        """Generate, embed and commit the missing candidates of ``prompts`` (or the extra seeds at ``positions``
        into ``namespaces``); returns images generated."""
        if self.readonly:
            raise RindexError("the index is open read-only: cannot resynthesize")
        ensure_thread_policy()  # FAISS's thread count is per OS thread (a serving worker, say)
        images = resynthesize_missing(prompts, settings=self.config.resynthesis,
                                      namespaces=self.namespaces if namespaces is None else namespaces,
                                      cache=self.cache, generator=self.generator, embedder=self.embedder,
                                      workers=build_workers(self.config.build.workers, self.device),
                                      positions=positions)
        self.images_generated += images
        return images

    # ----------------------------------------------------------------- query
    def attribute(
        self,
        inputs: Sequence[ImageInput] | ImageInput,
        *,
        resynthesize: bool = True,
        top_k: int = 3,
        progress: bool = False,
    ) -> list[Attribution]:
        """Attribute images: paths (directories are recursed), bytes, or PIL images. One result per image.

        A broken input gets a result with ``error`` set; the others are unaffected. Misses resynthesize and
        write through unless ``resynthesize`` is False (then only cached evidence is used), ``build.batch_size``
        prompts at a time; ``progress`` shows their progress (prompts pending, images answered, ETA) on stderr.
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
            self._attribute_isolated(decoded, resynthesize=resynthesize, top_k=top_k, progress=progress)
        return results

    def attribute_decoded(
        self,
        images: Sequence[DecodedImage],
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
            self._attribute_isolated(list(zip(results, images)), resynthesize=resynthesize, top_k=top_k,
                                     resynthesis_budget=resynthesis_budget)
        return results

    def share_models_from(self, other: "Attributor") -> None:
        """Adopt the generators ``other`` has loaded with identical settings, and its inverter and embedder
        when their configs are identical, so that engines over different indexes load each model once."""
        self.models.adopt(other.models)

    def reopen(self, index: str | os.PathLike | None = None) -> "Attributor":
        """A new engine on the same index (or on ``index``: an exported snapshot of it), config and access mode
        that shares this one's loaded models (inverter, embedder, generators, prompt embedder) but opens its own
        cache: a fresh snapshot of the index for the serving layer's hot swap. Close each engine independently
        (closing one never closes the other's cache; the models are shared)."""
        other = Attributor(self.config, index=self.index_dir if index is None else index, device=self.device,
                           readonly=self.readonly)
        other.models = self.models
        other.resynthesis_seconds_per_prompt = self.resynthesis_seconds_per_prompt
        return other

    def _attribute_isolated(self, decoded, **options) -> None:
        """:meth:`_attribute_decoded` with per-image isolation: an input whose processing raises gets its own
        error result and the others their answers (:mod:`~resynth_index.attribution.isolation`)."""
        from .isolation import run_isolated

        run_isolated(lambda pairs: self._attribute_decoded(list(pairs), **options), decoded)

    def _attribute_decoded(self, decoded, *, resynthesize: bool, top_k: int,
                           resynthesis_budget: float | None = None, progress: bool = False) -> None:
        """Run the query steps of :mod:`~resynth_index.attribution.query` over ``(result, decoded image)`` pairs."""
        ensure_thread_policy()  # FAISS's thread count is per OS thread (a serving worker, say)
        batch = query.QueryBatch([res for res, _ in decoded], [d for _, d in decoded])
        ns = self.namespaces
        cache = self.cache if ns else None  # open it (and load the prompt embedder) before any stage is timed
        provs = provenance_step.read_batch(batch.results, batch.images, self.config, self.generator_names)
        if resynthesize:  # a replay generates: only where the query may
            # Replay states its own steps, guidance, size and sampler: a generator's settings variants would repeat it.
            replayable = [g for g in self.runnable if g in self.config.attribution_names]
            provenance_step.replay_stated(batch.results, batch.images, provs, self.config, runnable=replayable,
                                          load=self.generator)
        query.invert_and_look_up(batch, inverter=self.inverter if ns else None, embedder=self.embedder,
                                 cache=cache, namespaces=ns, output_size=self.query_size(),
                                 max_size=self.query_max_size())
        if resynthesize:
            misses = query.misses_within_budget(batch, budget=resynthesis_budget,
                                                seconds_per_prompt=self.resynthesis_seconds_per_prompt)
            misses = provenance_step.skip_decided(misses, {id(r) for r, p in zip(batch.results, provs)
                                                           if p.decided_by is not None})
            if misses:
                per_prompt = query.resynthesize_misses(batch, misses, resynthesize=self._resynthesize, cache=cache,
                                                       namespaces=ns, group=self.config.build.batch_size,
                                                       progress=progress)
                prev = self.resynthesis_seconds_per_prompt
                self.resynthesis_seconds_per_prompt = per_prompt if prev is None else 0.7 * prev + 0.3 * per_prompt
        evidence = query.gather_evidence(batch, cache=cache, namespaces=ns, scoring=self.config.scoring,
                                         gallery_view=self.gallery_view)
        calibration = self.open_set_calibration() if ns else None
        prototypes = self.prototypes() if ns else None
        query.score_and_decide(batch, evidence, config=self.config, top_k=top_k, open_set=calibration,
                               prototypes=prototypes, siblings=self._siblings if prototypes is not None else None,
                               open_set_prototypes=(self.open_set_prototypes()
                                                    if calibration is not None and calibration.threshold is not None
                                                    else None))
        provenance_step.settle(batch.results, provs)

    def _stored_vectors(self) -> int:
        """The candidates stored under the current namespaces, siblings' extra seeds included (what the prototypes
        and the open set are refitted on when it grows)."""
        stored = self.cache.namespaces()
        extra = self._sibling_seeds()
        names = set(self.namespaces.values()) | (set(extra.namespaces.values()) if extra is not None else set())
        return sum(stored[n]["vectors"] for n in names if n in stored)

    def _sibling_seeds(self) -> SiblingSeeds | None:
        return sibling_seed_stores(self.config.resynthesis, self.namespaces)

    def query_size(self) -> tuple[int, int] | None:
        """(width, height) a smaller query is enlarged to before embedding: the smallest output size among the
        runnable generators whose size the config or zoo states, when degraded copies (which include
        rescaled ones) are embedded; None otherwise."""
        return self._query_sizes()[0]

    def query_max_size(self) -> tuple[int, int] | None:
        """(width, height) a larger query is reduced to before embedding: the largest such output size (None as
        for :meth:`query_size`)."""
        return self._query_sizes()[1]

    def _query_sizes(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        from ..images.degrade import largest_output, smallest_output
        from ..models.generators import resynthesis_call

        # Called on every query batch: worked out once (it may read each generator directory's defaults file).
        if self._query_size is None:
            sizes: list[tuple[int, int]] = []
            if self.config.resynthesis.degraded_copies:
                calls = [resynthesis_call(g) for g in self.config.generators if g.name in self.namespaces]
                sizes = [(c["width"], c["height"]) for c in calls if c["width"] and c["height"]]
            self._query_size = (smallest_output(sizes), largest_output(sizes))
        return self._query_size

    def prototypes(self) -> Prototypes | None:
        """Each generator's whitened class mean over its cached candidates
        (:mod:`~resynth_index.attribution.prototypes`), refitted when the cache has grown by a tenth; None when
        ``scoring.prototype_weight`` is 0 or some generator has too few candidates."""
        return self._fitted_prototypes("attribution")

    def open_set_prototypes(self) -> Prototypes | None:
        """The prototypes the open-set statistic reads: the same class means, whitened with the covariance shrunk
        per embedding block (:data:`~resynth_index.attribution.prototypes.OPEN_SET_SHRINKAGE`); fitted only when
        asked for (an explicit threshold or too small a cache never needs them)."""
        return self._fitted_prototypes("open_set")

    def siblings(self) -> dict[str, frozenset[str]]:
        """Generator -> its group of fine-tune siblings, the generators whose cached candidates are near copies of
        its own (:func:`~resynth_index.attribution.prototypes.sibling_groups`), which the prototypes alone rank;
        found and refreshed with :meth:`prototypes` (empty without them)."""
        return self._siblings if self.prototypes() is not None else {}

    def _fitted_prototypes(self, kind: str) -> Prototypes | None:
        from .prototypes import OPEN_SET_SHRINKAGE, attribution_prototypes, fit_prototypes, stored_candidates

        ns = self.namespaces
        sc = self.config.scoring
        if sc.prototype_weight <= 0 or not ns:
            return None
        vectors = self._stored_vectors()
        fitted = self._prototypes.get(kind)
        if fitted is None or vectors > fitted[0] * 1.1 or vectors < fitted[0]:
            stored = stored_candidates(self.cache, ns, degraded_namespaces(self.config.resynthesis, ns),
                                       siblings=self._sibling_seeds())
            blocks, thumbnail = self._prototype_blocks()
            columns = (0, sum(blocks)) if blocks else None
            if kind == "attribution":
                fit, self._siblings = attribution_prototypes(stored, columns, thumbnail, self.config.attributed_to,
                                                             sc.sibling_thumbnail_weight)
            else:
                clean = {g: [c.vector for c in clean] for g, (clean, _) in stored.items()}
                copies = {g: [c.vector for c in copies] for g, (_, copies) in stored.items()}
                fit = fit_prototypes(clean, OPEN_SET_SHRINKAGE, degraded=copies, blocks=blocks, columns=columns)
            self._prototypes[kind] = fitted = (vectors, fit)
        return fitted[1]

    def _prototype_blocks(self) -> tuple[tuple[int, ...] | None, tuple[int, int] | None]:
        """The embedding blocks the prototypes and the open set fit, and the thumbnail's columns (None without
        one): the thumbnail, the last block, is read by the fine-tune siblings' second stage alone."""
        blocks = self.embedding_blocks()
        if blocks is None or not self.config.embedder.thumbnail or len(blocks) < 2:
            return blocks, None
        return blocks[:-1], (sum(blocks[:-1]), sum(blocks))

    def embedding_blocks(self) -> tuple[int, ...] | None:
        """The sizes of the stored embeddings' blocks (semantic features, texture, spectrum, thumbnail); None before
        anything is stored."""
        from ..models.embedders import embedding_blocks

        dims = {st["dim"] for n, st in self.cache.namespaces().items() if n in set(self.namespaces.values())}
        return embedding_blocks(self.config.embedder, dims.pop()) if len(dims) == 1 else None

    def open_set_calibration(self) -> OpenSetCalibration | None:
        """The cache's leave-one-generator-out calibration of ``unknown`` (:mod:`~resynth_index.attribution.open_set`),
        recomputed when the cache has grown by a tenth; None when an explicit ``scoring.unknown_threshold`` is
        set. It decides only with ``scoring.open_set = true``; otherwise results and ``info`` report it."""
        from .open_set import calibrate_open_set

        sc = self.config.scoring
        ns = self.namespaces
        if sc.unknown_threshold != float("-inf") or not ns:
            return None
        vectors = self._stored_vectors()
        cal = self._open_set
        if cal is None or vectors > cal.vectors * 1.1 or vectors < cal.vectors:
            cal = self._open_set = calibrate_open_set(self.cache, ns, sc,
                                                      degraded_namespaces(self.config.resynthesis, ns),
                                                      attributed_to=self.config.attributed_to,
                                                      blocks=self._prototype_blocks()[0],
                                                      siblings=self._sibling_seeds())
        return cal

    @property
    def generator_names(self) -> GeneratorNames:
        """The configured generators' names, aliases and weight hashes, for matching provenance claims."""
        if self._generator_names is None:
            self._generator_names = GeneratorNames([g for g in self.config.generators if not g.variant_of])
        return self._generator_names

    # ----------------------------------------------------------------- housekeeping
    def info(self) -> dict[str, Any]:
        """What the index holds, the namespaces the current config reads and writes, and how each generator is
        called."""
        from ..models.generators import resynthesis_call

        info = dict(self.cache.info())
        info["index"] = str(self.index_dir)
        info["config_namespaces"] = dict(self.namespaces)
        # Degraded copies and fine-tune siblings' extra seeds are counted apart from the candidates.
        rc = self.config.resynthesis
        info["degraded_namespaces"] = degraded_namespaces(rc, self.namespaces)
        extra = self._sibling_seeds()
        info["sibling_seed_namespaces"] = {} if extra is None else dict(extra.namespaces)
        apart = prototype_only_counts(rc, self.namespaces, {ns: st["vectors"] for ns, st in info["namespaces"].items()})
        for g, n in ((g, n) for counts in apart for g, n in counts.items() if n):
            info["vectors_per_generator"][g] -= n
            info["vectors"] -= n
        info["degraded_copies_per_generator"], info["sibling_seeds_per_generator"] = apart
        info["query_size"], info["query_max_size"] = self.query_size(), self.query_max_size()
        # How each runnable generator resynthesizes (computed from the settings: no pipeline is loaded).
        info["generator_calls"] = {
            g.name: {"source": g.source, **resynthesis_call(g), **({"variant_of": g.variant_of} if g.variant_of else {})}
            for g in self.config.generators if g.source.strip()
        }
        info["threads"] = thread_report()
        view = self.gallery_view()
        info["gallery"] = {
            "references": self.gallery.generators(),
            "fingerprint": None if view is None or view.space is None else view.space.feature_id,
            "real_set": None if view is None or view.space is None else view.space.real_source,
            "calibration": None if view is None or view.calibration is None else view.calibration.to_dict(),
        }
        cal = self.open_set_calibration()
        info["open_set"] = None if cal is None else cal.to_dict()
        info["siblings"] = [list(group) for group in sorted({tuple(sorted(g)) for g in self.siblings().values()})]
        return info

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        elif self._writer_lock is not None:
            self._writer_lock.release()
        self._writer_lock = None
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    def __enter__(self) -> "Attributor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
