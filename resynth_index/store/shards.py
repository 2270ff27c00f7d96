"""Candidate shards: one generator's candidates for one batch of prompts, as a Parquet file in a staging directory.

A distributed build (:mod:`resynth_index.scale`) writes shards from many machines; the index's one writer reads
them back and commits them (``rindex ingest``). A shard is self-describing and safe to read from an untrusted
directory (Parquet, never a pickle; every size is checked against what the file declares):

* columns ``prompt`` (string, as listed), ``generator`` (string), ``namespace`` (64-hex digest), ``seeds``
  (list of int64, γ of them) and ``vectors`` (γ × dim float32, the embedder's output before the cache
  normalises and packs it);
* key-value metadata under ``rindex.shard`` (JSON): format version, generator, namespace, γ, dim, embedder id,
  the build id and batch number (ingest commits batches in build order, so record ids come out as a local
  build's), the prompt count, and the host and process that wrote it (which worker, for debugging);
* when the build embeds degraded copies of its candidates (``resynthesis.degraded_copies``), a column
  ``degraded`` (γ x copies x dim float32) and, in the metadata, ``copies`` and ``degraded_namespace``.

Writes are atomic: a temporary file in the same directory, ``fsync``, then ``os.replace``; a reader never sees
half a shard, and a worker killed mid-write leaves only a ``.tmp`` file, which listings ignore.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MAX_DEGRADED_COPIES, MAX_GAMMA
from ..errors import RindexError, UsageError
from .keys import is_namespace_digest

SHARD_FORMAT = 1
SHARD_SUFFIX = ".parquet"
_META_KEY = b"rindex.shard"
MAX_DIM = 65_536  # far above any image embedder; bounds what a hostile shard can make us allocate
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class ShardError(RindexError):
    """A shard that cannot be read, or whose contents disagree with its own metadata."""


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow comes with the scale extra
        raise UsageError(f"candidate shards need pyarrow: pip install -e '.[scale]' ({exc})") from None
    return pa, pq


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's metadata declares (read without loading its vectors)."""

    path: Path
    generator: str
    namespace: str
    gamma: int
    dim: int
    embedder: str
    build: str
    batch: int
    prompts: int
    writer: str
    copies: int = 0  # degraded copies per candidate (0: the shard has no ``degraded`` column)
    degraded_namespace: str = ""

    @property
    def order(self) -> tuple[str, int]:
        """Ingest order: by build, then batch number."""
        return (self.build, self.batch)


@dataclass(frozen=True)
class Shard:
    header: ShardHeader
    prompts: list[str]
    seeds: list[list[int]]
    vectors: np.ndarray  # (prompts, γ, dim) float32
    degraded: np.ndarray | None = None  # (prompts, γ x copies, dim) float32


def shard_name(build: str, batch: int, generator: str) -> str:
    """The file name of a batch's shard for one generator (unique within a build)."""
    return f"{_UNSAFE.sub('_', build)}-b{batch:07d}-{_UNSAFE.sub('_', generator)}{SHARD_SUFFIX}"


def write_shard(
    directory: str | os.PathLike,
    *,
    generator: str,
    namespace: str,
    embedder: str,
    build: str,
    batch: int,
    prompts: Sequence[str],
    seeds: Sequence[Sequence[int]],
    vectors: np.ndarray,
    degraded: np.ndarray | None = None,
    degraded_namespace: str = "",
) -> Path:
    """Write one shard atomically into ``directory``; returns its path."""
    pa, pq = _pyarrow()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, gamma, dim = x.shape
    if n != len(prompts) or n != len(seeds) or any(len(s) != gamma for s in seeds):
        raise ShardError(f"shard of {generator!r}: {len(prompts)} prompts, {len(seeds)} seed lists, vectors {x.shape}")
    meta = {
        "format": SHARD_FORMAT, "generator": generator, "namespace": namespace, "gamma": gamma, "dim": dim,
        "embedder": embedder, "build": build, "batch": int(batch), "prompts": n,
        "writer": f"{socket.gethostname()}:{os.getpid()}",
    }

    def matrix(a: np.ndarray, rows: int):
        return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), dim), rows)

    columns = {
        "prompt": pa.array(list(prompts), pa.string()),
        "generator": pa.array([generator] * n, pa.string()),
        "namespace": pa.array([namespace] * n, pa.string()),
        "seeds": pa.array([[int(v) for v in s] for s in seeds], pa.list_(pa.int64())),
        "vectors": matrix(x, gamma),
    }
    if degraded is not None:
        d = np.ascontiguousarray(degraded, dtype=np.float32)
        if d.shape[0] != n or d.shape[2] != dim or d.shape[1] % gamma or not is_namespace_digest(degraded_namespace):
            raise ShardError(f"shard of {generator!r}: degraded copies {d.shape} for vectors {x.shape}")
        meta.update(copies=d.shape[1] // gamma, degraded_namespace=degraded_namespace)
        columns["degraded"] = matrix(d, d.shape[1])
    table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / shard_name(build, batch, generator)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def list_shards(staging: str | os.PathLike) -> list[Path]:
    """Every finished shard in ``staging`` (temporary files of interrupted writes are not listed), by name."""
    staging = Path(staging)
    if not staging.is_dir():
        raise UsageError(f"staging directory {staging} does not exist")
    return sorted(p for p in staging.iterdir() if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith("."))


def read_header(path: str | os.PathLike) -> ShardHeader:
    """A shard's declared metadata (footer only), checked for shape and type; :class:`ShardError` if unreadable."""
    _, pq = _pyarrow()
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one bad shard
        raise ShardError(f"{path}: not a readable Parquet shard ({type(exc).__name__}: {exc})") from None
    raw = (schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ShardError(f"{path}: not a resynth-index shard (no {_META_KEY.decode()} metadata)")
    try:
        meta: dict[str, Any] = json.loads(raw)
        header = ShardHeader(
            path=path, generator=str(meta["generator"]), namespace=str(meta["namespace"]), gamma=int(meta["gamma"]),
            dim=int(meta["dim"]), embedder=str(meta["embedder"]), build=str(meta["build"]),
            batch=int(meta["batch"]), prompts=int(meta["prompts"]), writer=str(meta.get("writer", "")),
            copies=int(meta.get("copies", 0)), degraded_namespace=str(meta.get("degraded_namespace", "")),
        )
        fmt = int(meta["format"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"{path}: malformed shard metadata ({exc})") from None
    if fmt != SHARD_FORMAT:
        raise ShardError(f"{path}: shard format {fmt}, this version reads {SHARD_FORMAT}")
    if not is_namespace_digest(header.namespace):
        raise ShardError(f"{path}: namespace {header.namespace!r} is not a namespace digest")
    if header.copies and not is_namespace_digest(header.degraded_namespace):
        raise ShardError(f"{path}: degraded namespace {header.degraded_namespace!r} is not a namespace digest")
    if not (1 <= header.gamma <= MAX_GAMMA and 1 <= header.dim <= MAX_DIM and header.prompts >= 0
            and 0 <= header.copies <= MAX_DEGRADED_COPIES):
        raise ShardError(f"{path}: implausible shape (gamma {header.gamma}, dim {header.dim}, {header.prompts} prompts)")
    return header


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Only the ``prompt`` column of a shard (what a resumed build needs to know is done)."""
    _, pq = _pyarrow()
    try:
        return [str(p) for p in pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()]
    except Exception as exc:  # noqa: BLE001
        raise ShardError(f"{path}: cannot read its prompts ({type(exc).__name__}: {exc})") from None


def read_shard(path: str | os.PathLike) -> Shard:
    """A whole shard, every column checked against its metadata; :class:`ShardError` when anything disagrees."""
    _, pq = _pyarrow()
    header = read_header(path)
    try:
        table = pq.read_table(path, columns=["prompt", "generator", "namespace", "seeds", "vectors"]
                              + (["degraded"] if header.copies else []))
        if table.num_rows != header.prompts:
            raise ShardError(f"{path}: {table.num_rows} rows, metadata says {header.prompts}")
        prompts = table.column("prompt").to_pylist()
        if any(not isinstance(p, str) for p in prompts):
            raise ShardError(f"{path}: a prompt is missing")
        if set(table.column("generator").to_pylist()) - {header.generator}:
            raise ShardError(f"{path}: rows of another generator than {header.generator!r}")
        if set(table.column("namespace").to_pylist()) - {header.namespace}:
            raise ShardError(f"{path}: rows of another namespace than {header.namespace[:12]}")
        seeds = table.column("seeds").to_pylist()
        if any(s is None or len(s) != header.gamma for s in seeds):
            raise ShardError(f"{path}: every row needs {header.gamma} seeds")
        vectors = _matrix(table, "vectors", header, header.gamma)
        degraded = _matrix(table, "degraded", header, header.gamma * header.copies) if header.copies else None
    except ShardError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ShardError(f"{path}: unreadable columns ({type(exc).__name__}: {exc})") from None
    return Shard(header, prompts, [[int(v) for v in s] for s in seeds], vectors, degraded)


def _matrix(table, column: str, header: ShardHeader, rows: int) -> np.ndarray:
    """Column ``column`` as (prompts, rows, dim) float32, checked against the header."""
    col = table.column(column).combine_chunks()
    flat = col.flatten().flatten().to_numpy(zero_copy_only=False)
    if col.null_count or flat.size != header.prompts * rows * header.dim:
        raise ShardError(f"{header.path}: {column} hold {flat.size} numbers, expected "
                         f"{header.prompts} x {rows} x {header.dim}")
    out = np.asarray(flat, dtype=np.float32).reshape(header.prompts, rows, header.dim)
    if not np.isfinite(out).all():
        raise ShardError(f"{header.path}: non-finite {column}")
    return out


__all__ = [
    "SHARD_FORMAT", "Shard", "ShardError", "ShardHeader", "list_shards", "read_header", "read_prompts", "read_shard",
    "shard_name", "write_shard",
]
