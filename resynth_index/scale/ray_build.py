"""``rindex build --ray [ADDRESS]``: precompute candidates on a Ray cluster with Ray Data, then ingest.

::

    driver:  prompts -> normalise, dedupe, limit -> drop prompts the index has (and pairs already staged)
             -> batches of build.batch_size prompts, exactly as a local build cuts them
             -> one work unit per (generator, batch): ray.data.from_items(units)
    Ray:     .map_batches(CandidateWorker, compute=ActorPoolStrategy(size=workers), batch_size=1, num_gpus=...)
             each actor holds the embedder and one generator at a time (units come generator by generator), and
             runs the local build's own code (generate_candidates) on the unit, then writes its shard
             (:mod:`resynth_index.store.shards`) into the staging directory, atomically
    driver:  streams the units' summaries back: progress (prompts, images/s, ETA) on stderr
             -> ingest (:mod:`resynth_index.scale.ingest`) unless the index's writer runs elsewhere

**Same vectors as a local build.** A unit holds the same prompts, in the same order, as the local build's batch
for that generator, and goes through the same function with the same seeds, so with batch-invariant generators
(the default on CPU) and the same thread count the vectors are bit-identical; the tests check it.

**Failures.** Actors are restarted and their unit retried by Ray (Ray Data's actor pools default to
``max_restarts=-1`` with task retries):
a worker that dies loses only the unit it was computing, since a retried task skips units whose shard was
already written. An interrupted build is rerun with the same staging directory: pairs already staged are not
computed again. Ray must be installed on every node with this package (``pip install 'resynth-index[scale]'``).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import RindexError, UsageError
from ..store.keys import normalize_prompt
from ..store.shards import (
    ShardError,
    list_shards,
    read_header,
    read_prompts,
    shard_name,
    write_shard,
)
from .ingest import IngestReport, check_header, ingest_staging

if TYPE_CHECKING:
    from ..attribution.engine import Attributor

INSTALL_HINT = "rindex build --ray needs Ray: pip install -e '.[scale]' (or pip install 'resynth-index[scale]')"


def import_ray():
    """``ray`` and ``ray.data``, or a :class:`UsageError` saying how to install them."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from None
    return ray


@dataclass(frozen=True)
class Unit:
    """One work unit: the prompts of one build batch that one generator still lacks."""

    generator: str
    batch: int
    prompts: tuple[str, ...]


@dataclass
class RayBuildReport:
    requested: int = 0  # unique prompts asked for
    skipped: int = 0  # already complete in the index
    units: int = 0  # (generator, batch) units computed by workers this run
    staged: int = 0  # (prompt, generator) pairs found already staged by an earlier run, not computed again
    images: int = 0
    seconds: float = 0.0
    worker_seconds: float = 0.0  # summed over units: generating, embedding and writing, inside the workers
    load_seconds: float = 0.0  # summed over workers: loading generators (a worker holds one at a time)
    workers: int = 0
    staging: str = ""
    build: str = ""
    writers: set[str] = field(default_factory=set)  # host:pid of the workers that wrote shards
    ingest: IngestReport | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class CandidateWorker:
    """A Ray Data actor: the embedder and one generator at a time, computing units into shards."""

    def __init__(self, config: Config, device: str, namespaces: dict[str, str], staging: str, build: str):
        import torch

        from ..attribution.loaded import LoadedModels
        from ..attribution.resynthesis import degraded_namespaces
        from ..devices import apply_thread_policy, resolve_device

        apply_thread_policy(config.threads)
        self.config, self.staging, self.build = config, Path(staging), build
        self.models = LoadedModels(config, resolve_device(device))
        mine = self.models.get_namespaces()
        for g, ns in namespaces.items():
            if mine.get(g) != ns:  # other package version, weights or device on this node
                raise RindexError(f"worker on {os.uname().nodename}: namespace of {g!r} is {str(mine.get(g))[:12]}..., "
                                  f"the driver's {ns[:12]}...: install the same resynth-index and weights everywhere")
        self.namespaces = namespaces
        self.degraded_namespaces = degraded_namespaces(config.resynthesis, namespaces)
        self._torch = torch

    def _generator(self, name: str):
        if name not in self.models.generators and self.models.generators:
            self.models.generators.clear()  # hold one generator: units arrive generator by generator
            if self.models.device.type == "cuda":
                self._torch.cuda.empty_cache()
        return self.models.get_generator(name)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from ..attribution.resynthesis import generate_candidates

        out: dict[str, list] = {"generator": [], "batch": [], "prompts": [], "images": [], "seconds": [],
                                "load_seconds": [], "writer": []}
        for g, b, prompts_json in zip(batch["generator"], batch["batch"], batch["prompts"]):
            g, b, prompts = str(g), int(b), json.loads(str(prompts_json))
            t0 = time.perf_counter()
            load = 0.0
            if not (self.staging / shard_name(self.build, b, g)).exists():  # a retried task redoes only the rest
                self._generator(g)  # loading is timed apart from computing
                load = time.perf_counter() - t0
                t0 += load
                got = generate_candidates(g, prompts, settings=self.config.resynthesis,
                                          generator=self._generator, embedder=self.models.get_embedder())
                write_shard(self.staging, generator=g, namespace=self.namespaces[g],
                            embedder=self.models.get_embedder().id, build=self.build, batch=b, prompts=prompts,
                            seeds=got.seeds, vectors=got.vectors, degraded=got.degraded,
                            degraded_namespace=self.degraded_namespaces.get(g, ""))
            images = len(prompts) * self.config.resynthesis.gamma
            for key, value in (("generator", g), ("batch", b), ("prompts", len(prompts)), ("images", images),
                               ("seconds", time.perf_counter() - t0), ("load_seconds", load),
                               ("writer", f"{os.uname().nodename}:{os.getpid()}")):
                out[key].append(value)
        return out


def plan_units(prompts: list[str], namespaces: dict[str, str], batch_size: int,
               done: Callable[[str, str], bool]) -> list[Unit]:
    """Cut ``prompts`` into the local build's batches and list, generator by generator, each batch's prompts
    that generator still lacks (``done(prompt, generator)`` says which it has)."""
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    units = []
    for g in namespaces:
        for b, chunk in enumerate(batches):
            wanted = tuple(p for p in chunk if not done(p, g))
            if wanted:
                units.append(Unit(g, b, wanted))
    return units


def staged_pairs(staging: Path, namespaces: dict[str, str], embedder_id: str) -> set[tuple[str, str]]:
    """(normalized prompt, generator) pairs that valid shards in ``staging`` already hold for these namespaces."""
    pairs: set[tuple[str, str]] = set()
    if not staging.is_dir():
        return pairs
    for path in list_shards(staging):
        try:
            header = read_header(path)
            if check_header(header, namespaces, embedder_id) is None:
                pairs.update((normalize_prompt(p), header.generator) for p in read_prompts(path))
        except ShardError:
            continue  # ingest names it; a rebuild recomputes its pairs
    return pairs


def ray_build(
    engine: Attributor,
    prompts: Iterable[str] | None = None,
    *,
    address: str | None = None,
    staging: str | os.PathLike | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    limit: int | None = None,
    ingest: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> RayBuildReport:
    """Build ``engine``'s candidates for ``prompts`` on Ray (``address``: None starts or joins a local instance
    as ``ray.init()`` does, ``auto`` an existing cluster, ``ray://host:10001`` a remote one), staging shards in
    ``staging`` (default ``INDEX/staging``; on a cluster, a directory every node reaches), with ``workers``
    actors (default: one per CPU, or per GPU on a GPU device), then ingest them unless ``ingest`` is False."""
    ray = import_ray()
    from tqdm.auto import tqdm

    echo = echo or (lambda _msg: None)
    start = time.perf_counter()
    staging = Path(staging) if staging is not None else engine.index_dir / "staging"
    report = RayBuildReport(staging=str(staging))
    todo_all = engine.prompts_to_build(prompts, limit=limit)
    report.requested = len(todo_all)
    namespaces = dict(engine.namespaces)
    cache = _open_cache(engine)
    todo = [p for p in todo_all if cache is None or not cache.contains(p, namespaces)]
    report.skipped = len(todo_all) - len(todo)
    staged = staged_pairs(staging, namespaces, engine.embedder.id)

    def done(p: str, g: str) -> bool:
        if (normalize_prompt(p), g) in staged:
            report.staged += 1
            return True
        return cache is not None and cache.contains(p, {g: namespaces[g]})

    units = plan_units(todo, namespaces, engine.config.build.batch_size, done)
    report.units = len(units)
    report.build = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    if units:
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        try:
            report.workers, report.images = _run_units(ray, engine, units, namespaces, staging, report, workers,
                                                       gpus_per_worker, progress, tqdm)
        finally:
            if started_here:
                ray.shutdown()
    report.seconds = time.perf_counter() - start
    echo(f"ray build: {report.units} unit(s), {report.images} image(s) on {report.workers} worker(s) in "
         f"{report.seconds:.1f}s ({report.images_per_second:.2f} images/s) -> {staging}")
    if ingest:
        report.ingest = ingest_staging(engine, staging, progress=progress)
    return report


def _open_cache(engine: Attributor):
    """The engine's cache, or None when a read-only engine finds no index yet (nothing is cached then)."""
    try:
        return engine.cache
    except RindexError:
        if engine.readonly:
            return None
        raise


def _run_units(ray, engine, units, namespaces, staging, report, workers, gpus_per_worker, progress, tqdm):
    from ray.data import ActorPoolStrategy, DataContext

    device = engine.device.type
    resources = ray.cluster_resources()
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if device == "cuda" else 0.0
    if device == "cuda" and gpus_per_worker <= 0:
        raise UsageError("a CUDA build needs --gpus-per-worker > 0 (each worker holds its models on a GPU)")
    if workers is None:
        slots = resources.get("GPU", 0) / gpus_per_worker if gpus_per_worker else resources.get("CPU", 1)
        workers = max(1, int(slots))
    workers = min(workers, len(units))
    staging.mkdir(parents=True, exist_ok=True)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours, in prompts and images, is on stderr below
    items = [{"generator": u.generator, "batch": u.batch, "prompts": json.dumps(list(u.prompts))} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), max(2 * workers, math.ceil(len(items) / 4))))
    ds = ds.map_batches(
        CandidateWorker,
        fn_constructor_kwargs={"config": engine.config, "device": device, "namespaces": namespaces,
                               "staging": str(staging.resolve()), "build": report.build},
        batch_size=1,
        compute=ActorPoolStrategy(size=workers),
        **({"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 1}),
    )  # Ray Data's actor defaults: a dead actor is restarted and its task retried (max_restarts=-1)
    # Progress in images (rate and ETA) with prompts as (prompt, generator) pairs done / generators.
    n_gen = len(namespaces)
    total_pairs = sum(len(u.prompts) for u in units)
    images = pairs = 0
    with tqdm(total=total_pairs * engine.config.resynthesis.gamma, unit="img", desc="ray build",
              disable=not progress, dynamic_ncols=True) as bar:
        for row in ds.iter_rows():
            images += int(row["images"])
            pairs += int(row["prompts"])
            report.writers.add(str(row["writer"]))
            report.worker_seconds += float(row["seconds"])
            report.load_seconds += float(row["load_seconds"])
            bar.set_postfix_str(f"prompts {pairs / n_gen:.1f}/{total_pairs / n_gen:.1f}")
            bar.update(int(row["images"]))
    return workers, images


__all__ = ["INSTALL_HINT", "CandidateWorker", "RayBuildReport", "Unit", "import_ray", "plan_units", "ray_build",
           "staged_pairs"]
