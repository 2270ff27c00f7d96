"""``rindex ingest STAGING``: the index's one writer commits the candidate shards of a distributed build.

Every shard is checked before anything is written: its generator must be one of this configuration's and its
namespace digest this configuration's for that generator (a shard made with another embedder, generator
settings, seed rule or γ has another digest), and its seeds must be the ones the seed rule gives each prompt.
A refused shard is named with the reason and skipped; the others are committed.

Shards are committed a build batch at a time, in build order (one LMDB transaction per batch, holding every
generator's candidates of its prompts), so a Ray build followed by ingest leaves the same records in the same
order as a local build of the same prompts. Ingest is idempotent (a cached key is never written twice: ingesting
a shard again adds nothing) and resumable (a crash leaves whole batches; a rerun skips what is committed).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..attribution.resynthesis import candidate_seeds, copy_seeds, degraded_namespaces
from ..store.keys import normalize_prompt
from ..store.shards import ShardError, ShardHeader, list_shards, read_header, read_shard

if TYPE_CHECKING:
    from ..attribution.engine import Attributor


@dataclass
class IngestReport:
    shards: int = 0  # shards committed (or found already committed)
    added: int = 0  # (prompt, generator) candidate sets written
    present: int = 0  # (prompt, generator) candidate sets that were already in the index
    refused: list[str] = field(default_factory=list)  # one line per refused shard: name and reason
    seconds: float = 0.0


def check_header(header: ShardHeader, namespaces: dict[str, str], embedder_id: str) -> str | None:
    """Why this shard does not belong to an index with these namespaces (None when it does)."""
    if header.generator not in namespaces:
        return (f"generator {header.generator!r} is not in this configuration "
                f"({', '.join(namespaces) or 'no runnable generators'})")
    expected = namespaces[header.generator]
    if header.namespace != expected:
        why = (f"built with embedder {header.embedder!r}, this configuration embeds with {embedder_id!r}"
               if header.embedder != embedder_id else "built with other generator settings, seeds, γ or device")
        return (f"namespace {header.namespace[:12]}... of {header.generator!r} is not this configuration's "
                f"{expected[:12]}... ({why})")
    return None


def ingest_staging(engine: Attributor, staging: str | os.PathLike, *, progress: bool = False) -> IngestReport:
    """Commit every valid shard of ``staging`` into ``engine``'s index (the engine must be the writer)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    report = IngestReport()
    namespaces = dict(engine.namespaces)
    order = {g: i for i, g in enumerate(namespaces)}
    settings = engine.config.resynthesis
    degraded_ns = degraded_namespaces(settings, namespaces)
    batches: dict[tuple[str, int], list[ShardHeader]] = defaultdict(list)
    for path in list_shards(staging):
        try:
            header = read_header(path)
        except ShardError as exc:
            report.refused.append(f"{path.name}: {exc}")
            continue
        why = check_header(header, namespaces, engine.embedder.id)
        if why is not None:
            report.refused.append(f"{path.name}: {why}")
            continue
        batches[header.order].append(header)
    cache = engine.cache
    with tqdm(total=sum(len(v) for v in batches.values()), unit="shard", desc="ingest", disable=not progress,
              dynamic_ncols=True) as bar:
        for key in sorted(batches):
            # Generators in config order, prompts in shard order: the entries a local build commits for a batch.
            entries: dict[str, dict[str, tuple[str, list[int], np.ndarray]]] = defaultdict(dict)
            degraded: dict[str, dict[str, tuple[str, list[int], np.ndarray]]] = defaultdict(dict)
            for header in sorted(batches[key], key=lambda h: order[h.generator]):
                bar.update(1)
                try:
                    shard = read_shard(header.path)
                    rows = _checked_rows(shard, settings.gamma, settings.seed_base)
                except ShardError as exc:
                    report.refused.append(f"{header.path.name}: {exc}")
                    continue
                report.shards += 1
                g, ns = header.generator, header.namespace
                # Degraded copies only feed the prototypes: a shard without them (or with other ones) still
                # commits its candidates.
                copies = shard.degraded if header.degraded_namespace == degraded_ns.get(g) else None
                for i, (prompt, seeds, vectors) in enumerate(rows):
                    if g in entries.get(prompt, ()) or cache.contains(prompt, {g: ns}):
                        report.present += 1
                        continue
                    entries[prompt][g] = (ns, seeds, vectors)
                    report.added += 1
                    if copies is not None:
                        degraded[prompt][g] = (header.degraded_namespace, copy_seeds(seeds, header.copies), copies[i])
            # As in a local build: the degraded copies first, then the candidates, each in one transaction.
            for part in (degraded, entries):
                if part:
                    cache.put_many(list(part.items()), batch_prompts=max(256, len(part)))
    report.seconds = time.perf_counter() - start
    return report


def _checked_rows(shard, gamma: int, seed_base: int):
    """The shard's rows, refused when a prompt is empty or its seeds are not the seed rule's for this config."""
    if shard.header.gamma != gamma:
        raise ShardError(f"γ {shard.header.gamma}, this configuration uses {gamma}")
    rows = []
    for prompt, seeds, vectors in zip(shard.prompts, shard.seeds, shard.vectors):
        norm = normalize_prompt(prompt)
        if not norm:
            raise ShardError("an empty prompt")
        if seeds != candidate_seeds(norm, gamma, seed_base):
            raise ShardError(f"seeds {seeds} of {prompt!r} are not the seed rule's for this configuration")
        rows.append((prompt, seeds, vectors))
    return rows


__all__ = ["IngestReport", "check_header", "ingest_staging"]
