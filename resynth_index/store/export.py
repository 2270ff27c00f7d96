"""Consistent, compact copies of an index for serving replicas, and their manifest of ids and checksums.

:func:`export_cache` copies the candidate cache as of **one read transaction** (LMDB's compacting copy, so the
copy holds exactly the commits that transaction saw and no free pages), then brings its FAISS indexes level with
that copy: the source's snapshot files are copied, and a writer opened on the copy catches them up from the
copied records (or rebuilds one the writer had already moved past) and saves them. The copy is made under a
temporary name by the caller and renamed when whole (:mod:`resynth_index.serving.snapshots`), so a replica never
opens half a snapshot.

The manifest (``manifest.json``, written last) names the snapshot id (the highest committed record id), the
namespaces with their record and vector counts and id ranges, and every file with its size and SHA-256;
:func:`verify_files` checks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RindexError
from .environment import Environment

if TYPE_CHECKING:
    from ..models.prompt_embedders import PromptEmbedder
    from .cache import CandidateCache

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: Process state, never part of a snapshot (LMDB's reader table, our writer lock).
_EPHEMERAL = {"lock.mdb", "writer.lock", MANIFEST}


def copy_environment(env: Environment, directory: str | os.PathLike, txn=None) -> None:
    """LMDB's compacting copy of ``env`` into ``directory`` (``data.mdb``), as of ``txn`` when given."""
    os.makedirs(directory, exist_ok=True)
    if txn is None:
        env.env.copy(os.fspath(directory), compact=True)
    else:
        env.env.copy(os.fspath(directory), compact=True, txn=txn)


def export_cache(cache: CandidateCache, directory: str | os.PathLike,
                 prompt_embedder: PromptEmbedder | None) -> dict[str, Any]:
    """Copy ``cache`` into the empty ``directory`` with FAISS indexes covering exactly the copy; returns the
    copy's namespaces (``namespaces()`` of the copy) and its snapshot id."""
    from .cache import CandidateCache

    directory = Path(directory)
    cache.copy_to(directory)
    src_faiss = Path(cache.path) / "faiss"
    if src_faiss.is_dir():  # a head start for catch-up; a snapshot newer than the copy is skipped on open
        shutil.copytree(src_faiss, directory / "faiss", ignore=shutil.ignore_patterns("*.tmp"))
    with CandidateCache(directory, prompt_embedder=prompt_embedder, vector_dtype=cache.vector_dtype,
                        index_policy=cache.index_policy) as copy:
        namespaces = copy.namespaces()
        copy.verify()
    for name in ("writer.lock", "lock.mdb"):
        (directory / name).unlink(missing_ok=True)
    sid = max((st["last_record_id"] for st in namespaces.values()), default=0)
    return {"snapshot_id": sid, "namespaces": namespaces}


def file_digests(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Relative path -> {bytes, sha256} of every file under ``root`` except process state and the manifest."""
    root = Path(root)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name in _EPHEMERAL:
            continue
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[rel] = {"bytes": path.stat().st_size, "sha256": h.hexdigest()}
    return out


def write_manifest(root: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Write ``doc`` plus the file list as ``root/manifest.json`` (atomically, fsync'ed: it marks completeness)."""
    root = Path(root)
    doc = {"format": MANIFEST_FORMAT, **doc, "files": file_digests(root)}
    tmp = root / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MANIFEST)
    return root / MANIFEST


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the snapshot at ``root``; :class:`RindexError` when missing or unreadable."""
    path = Path(root) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RindexError(f"{root} is not a complete snapshot: cannot read {MANIFEST} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("files"), dict):
        raise RindexError(f"{path}: not a snapshot manifest of format {MANIFEST_FORMAT}")
    return doc


def verify_files(root: str | os.PathLike) -> list[str]:
    """Problems found comparing the files under ``root`` with its manifest (empty: intact)."""
    listed = read_manifest(root)["files"]
    actual = file_digests(root)
    problems = [f"{rel}: missing" for rel in listed if rel not in actual]
    problems += [f"{rel}: not in the manifest" for rel in actual if rel not in listed]
    problems += [f"{rel}: checksum or size differs" for rel, want in listed.items()
                 if rel in actual and actual[rel] != want]
    return problems


__all__ = ["MANIFEST", "copy_environment", "export_cache", "file_digests", "read_manifest", "verify_files",
           "write_manifest"]
