"""The reference gallery's storage: a few enrolled images per generator (see :mod:`.matching` for how they match).

"Attribution as Retrieval: Model-Agnostic AI-Generated Image Attribution" (Wang, Cheng, Han, Gui, CVPR 2026;
LIDA) treats attribution as instance retrieval, and it is the only option for a generator that cannot be run
locally: enrol a handful of its images, then the nearest references name the generator of a query.

Storage (``INDEX/gallery/``, an LMDB environment beside the candidate cache)
---------------------------------------------------------------------------
The **original file bytes** of every reference are the source of truth (so any future feature can be computed
from them and nothing is lost); feature vectors are derived and stored per feature id, computed at enrolment
for the configured features and on first use for any other. Sub-databases (integers big-endian)::

    meta       next_ref_id, version (bumped by every write), schema
    refs       ref id -> msgpack {g: generator, path, sha: pixel sha256, w, h, t: time}
    blobs      ref id -> the file's bytes
    by_sha     generator NUL pixel sha256 -> ref id (an image is enrolled once per generator)
    features   sha256(feature id)[:16] + ref id -> float32 vector

Every enrolment batch (and every removal) is one LMDB write transaction that also bumps ``version``: a crash
leaves all of it or none of it. LMDB serialises writers across processes itself, so ``rindex enroll`` may run
while a server reads. The environment is opened through :mod:`resynth_index.store.environment` (one per path
per process, fork-aware, map growth); a writer creates it and writes ``schema`` in its first transaction.

**Read-only** (``Gallery(index, readonly=True)``, what a read-only engine and the server use): LMDB is opened
read-only and no write transaction is ever begun, so a gallery on read-only storage works; features computed
on first use are kept in memory only. An index without a gallery reads as an empty gallery, and nothing is
created (no ``gallery/`` directory): the gallery appears to readers opened after a writer created it.

Example::

    from resynth_index.gallery.references import Gallery
    with Gallery("cache") as gallery:
        report = gallery.enroll("midjourney-v6", ["refs/mj/"])
        print(report.added, report.errors, gallery.generators())
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import msgpack
import numpy as np
from PIL import Image

from ..errors import ImageError, RindexError
from ..store.environment import Environment, EnvironmentMissing
from .names import RESERVED_REAL, check_generator_name

REAL = RESERVED_REAL  # the user's real photos: they calibrate the real/AI gate
GALLERY_SCHEMA = 1
MAX_REFERENCE_BYTES = 64 * 1024 * 1024
_U64 = struct.Struct(">Q")
_DBS = ("meta", "refs", "blobs", "by_sha", "features")

#: scikit-image sample photos used as the default real set (colour and grey photographs; no drawings).
DEFAULT_REAL_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
    "retina.jpg", "hubble_deep_field.jpg", "ihc.png", "camera.png", "moon.png", "coins.png", "brick.png",
    "grass.png", "gravel.png", "cell.png",
)
DEFAULT_REAL_CROP = 128  # native-resolution crops per photo: many real samples without any resizing
DEFAULT_REAL_CROPS_PER_PHOTO = 8

FeatureFn = Callable[[Sequence[Image.Image]], np.ndarray]


@dataclass(frozen=True)
class Reference:
    id: int
    generator: str
    path: str | None
    sha256: str
    width: int
    height: int
    enrolled: float


@dataclass
class EnrollReport:
    generator: str
    added: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- environment
_MAP_SIZE = 1 << 30  # to start (sparse); doubled whenever it fills


def _init_schema(txn, dbs) -> None:
    """A writer's first transaction on the environment."""
    if txn.get(b"schema", db=dbs["meta"]) is None:
        txn.put(b"schema", _U64.pack(GALLERY_SCHEMA), db=dbs["meta"])


def _feature_key(feature_id: str) -> bytes:
    return hashlib.sha256(feature_id.encode()).digest()[:16]


class Gallery:
    """The enrolled references under ``INDEX/gallery``. ``readonly`` refuses writes (and features computed on
    first use are then kept in memory only). A gallery that does not exist yet reads as empty."""

    def __init__(self, index_dir: str | os.PathLike, *, readonly: bool = False) -> None:
        self.path = str(Path(index_dir) / "gallery")
        self.readonly = readonly
        self._env: Environment | None = None
        self._dbs: dict | None = None
        try:
            self._env = Environment.open(self.path, _DBS, readonly=readonly, map_size=_MAP_SIZE, init=_init_schema)
        except EnvironmentMissing:
            pass  # read-only and no writer created it: an empty gallery
        else:
            self._dbs = self._env.dbs
        self._memo: dict[str, tuple[int, list[Reference], np.ndarray]] = {}

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = self._dbs = None

    def copy_to(self, directory: str | os.PathLike) -> bool:
        """A compacting copy of the gallery's LMDB environment into ``directory``; False when there is none."""
        from ..store.export import copy_environment

        if self._env is None:
            return False
        copy_environment(self._env, directory)
        return True

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- reading
    def version(self) -> int:
        """Changes whenever references are added or removed (cheap; used to refresh in-memory matrices)."""
        if self._env is None:
            return 0
        with self._env.read() as txn:
            raw = txn.get(b"version", db=self._dbs["meta"])
        return _U64.unpack(raw)[0] if raw else 0

    def references(self, generator: str | None = None) -> list[Reference]:
        if self._env is None:
            return []
        out = []
        with self._env.read() as txn:
            for key, value in txn.cursor(db=self._dbs["refs"]):
                r = msgpack.unpackb(value)
                if generator is None or r["g"] == generator:
                    out.append(Reference(_U64.unpack(key)[0], r["g"], r["path"], r["sha"], r["w"], r["h"], r["t"]))
        return out

    def generators(self) -> dict[str, int]:
        """Enrolled name -> number of references (``real`` included when the user enrolled real photos)."""
        counts: dict[str, int] = {}
        for r in self.references():
            counts[r.generator] = counts.get(r.generator, 0) + 1
        return dict(sorted(counts.items()))

    def image(self, ref_id: int) -> Image.Image:
        """A reference decoded again from its stored bytes."""
        from ..images.decode import decode_image

        blob = None
        if self._env is not None:
            with self._env.read() as txn:
                blob = txn.get(_U64.pack(ref_id), db=self._dbs["blobs"])
        if blob is None:
            raise RindexError(f"gallery: reference {ref_id} has no stored image")
        return decode_image(blob, name=f"gallery reference {ref_id}").image

    def vectors(self, feature_id: str, fn: FeatureFn, *, generator: str | None = None) -> tuple[list[Reference], np.ndarray]:
        """Every reference (of ``generator``, or all) and its ``feature_id`` vector, computing with ``fn`` (and
        storing, unless read-only) those not computed yet. Rows follow the references' order."""
        version = self.version()
        memo = self._memo.get(feature_id)
        if memo is None or memo[0] != version:
            refs = self.references()
            vecs = self._load_features(feature_id, refs, fn)
            self._memo[feature_id] = memo = (version, refs, vecs)
        _, refs, vecs = memo
        if generator is None:
            return refs, vecs
        keep = [i for i, r in enumerate(refs) if r.generator == generator]
        return [refs[i] for i in keep], vecs[keep]

    def _load_features(self, feature_id: str, refs: list[Reference], fn: FeatureFn) -> np.ndarray:
        if not refs:
            return np.zeros((0, 0), np.float32)
        fk = _feature_key(feature_id)
        rows: list[np.ndarray | None] = []
        with self._env.read() as txn:
            for r in refs:
                raw = txn.get(fk + _U64.pack(r.id), db=self._dbs["features"])
                rows.append(None if raw is None else np.frombuffer(raw, dtype=np.float32))
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            computed = fn([self.image(refs[i].id) for i in todo])
            for i, v in zip(todo, computed):
                rows[i] = np.asarray(v, dtype=np.float32)
            if not self.readonly:
                self._write(lambda txn: [txn.put(fk + _U64.pack(refs[i].id), rows[i].tobytes(), db=self._dbs["features"])
                                         for i in todo], bump=False)
        return np.stack(rows)

    # -------------------------------------------------------------------------------------------- writing
    def _write(self, fn, *, bump: bool = True):
        if self.readonly or self._env is None:
            raise RindexError("the gallery is open read-only")

        def txn_fn(txn):
            out = fn(txn)
            if bump:
                raw = txn.get(b"version", db=self._dbs["meta"])
                txn.put(b"version", _U64.pack((_U64.unpack(raw)[0] if raw else 0) + 1), db=self._dbs["meta"])
            return out

        return self._env.write(txn_fn)  # grows the map and runs txn_fn again when it is full

    def enroll(
        self,
        generator: str,
        inputs: Iterable[str | os.PathLike | bytes],
        *,
        features: Mapping[str, FeatureFn] | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> EnrollReport:
        """Add reference images (files, directories, or encoded bytes) to ``generator``'s gallery.

        Each image is decoded first: one that fails is reported in ``errors`` with its name and not enrolled
        (the others still are). An image already enrolled for this generator (same pixels) counts as a
        duplicate. ``features`` (feature id -> function of PIL images) are computed now and stored with it.
        """
        from tqdm.auto import tqdm

        from ..images.decode import _read_file, decode_image, iter_image_paths

        check_generator_name(generator)
        report = EnrollReport(generator)
        items: list[tuple[str, str | os.PathLike | bytes]] = []
        for n, item in enumerate(inputs):
            if isinstance(item, (bytes, bytearray)):
                items.append((f"<bytes {n}>", bytes(item)))
            elif Path(item).is_dir():
                items.extend((str(p), p) for p in iter_image_paths([item]))
            else:
                items.append((str(item), item))
        features = dict(features or {})
        with tqdm(total=len(items), unit="image", desc=f"enroll {generator}", disable=not progress,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(items), batch_size):
                batch = []
                for label, item in items[start : start + batch_size]:
                    try:
                        data = item if isinstance(item, bytes) else _read_file(os.fspath(item), label)
                        if len(data) > MAX_REFERENCE_BYTES:
                            raise ImageError(f"{label}: {len(data):,} bytes, above the {MAX_REFERENCE_BYTES:,} limit")
                        decoded = decode_image(data, name=label)
                    except ImageError as exc:
                        report.errors.append(str(exc))
                        continue
                    batch.append((None if isinstance(item, bytes) else os.path.abspath(item), data, decoded))
                bar.update(min(batch_size, len(items) - start))
                if not batch:
                    continue
                vectors = {fid: fn([d.image for _, _, d in batch]) for fid, fn in features.items()}
                added, dup = self._write(lambda txn: self._put_batch(txn, generator, batch, vectors))
                report.added += added
                report.duplicates += dup
        return report

    def _put_batch(self, txn, generator, batch, vectors) -> tuple[int, int]:
        dbs = self._dbs
        raw = txn.get(b"next_ref_id", db=dbs["meta"])
        next_id = _U64.unpack(raw)[0] if raw else 1
        added = dup = 0
        for j, (path, data, decoded) in enumerate(batch):
            sha_key = generator.encode() + b"\0" + decoded.pixel_sha256.encode()
            if txn.get(sha_key, db=dbs["by_sha"]) is not None:
                dup += 1
                continue
            rid = _U64.pack(next_id)
            next_id += 1
            txn.put(rid, msgpack.packb({"g": generator, "path": path, "sha": decoded.pixel_sha256,
                                        "w": decoded.image.width, "h": decoded.image.height, "t": time.time()}),
                    db=dbs["refs"])
            txn.put(rid, data, db=dbs["blobs"])
            txn.put(sha_key, rid, db=dbs["by_sha"])
            for fid, vecs in vectors.items():
                txn.put(_feature_key(fid) + rid, np.asarray(vecs[j], dtype=np.float32).tobytes(), db=dbs["features"])
            added += 1
        txn.put(b"next_ref_id", _U64.pack(next_id), db=dbs["meta"])
        return added, dup

    def remove(self, generator: str) -> int:
        """Delete ``generator``'s references (images and features); returns how many."""
        refs = self.references(generator)
        if not refs:
            return 0

        def fn(txn):
            dbs = self._dbs
            for r in refs:
                rid = _U64.pack(r.id)
                txn.delete(rid, db=dbs["refs"])
                txn.delete(rid, db=dbs["blobs"])
                txn.delete(generator.encode() + b"\0" + r.sha256.encode(), db=dbs["by_sha"])
            with txn.cursor(db=dbs["features"]) as cur:
                ids = {_U64.pack(r.id) for r in refs}
                doomed = [k for k in cur.iternext(keys=True, values=False) if k[16:] in ids]
            for k in doomed:
                txn.delete(k, db=dbs["features"])

        self._write(fn)
        return len(refs)


# ------------------------------------------------------------------------------------------- real photos
def default_real_photos() -> list[tuple[str, Image.Image]]:
    """(photo name, crop) pairs: up to :data:`DEFAULT_REAL_CROPS_PER_PHOTO` native-resolution crops of
    :data:`DEFAULT_REAL_CROP` px per scikit-image sample photo (the most detailed ones). The photos ship inside
    the scikit-image wheel; skimage itself is never imported."""
    from ..models.fingerprints import select_patches

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RindexError("the default real-photo set needs scikit-image (pip install scikit-image), "
                          "or enrol your own: rindex enroll real PHOTOS...")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in DEFAULT_REAL_PHOTOS:
        path = data_dir / name
        if not path.is_file():
            continue
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        for crop in select_patches(pixels, DEFAULT_REAL_CROP, DEFAULT_REAL_CROPS_PER_PHOTO):
            out.append((name, Image.fromarray(np.ascontiguousarray(crop))))
    if not out:
        raise RindexError(f"no default real photos found in {data_dir}")
    return out


_DEFAULT_REAL_MEMO: dict[str, tuple[list[str], np.ndarray]] = {}


def real_set(gallery: Gallery, feature_id: str, fn: FeatureFn) -> tuple[list[str], np.ndarray, str]:
    """(group per row, raw vectors, source) of the real-photo set: the user's ``real`` gallery when it has at
    least 2 photos, else the packaged default (computed once per process per feature)."""
    refs, vecs = gallery.vectors(feature_id, fn, generator=REAL)
    if len(refs) >= 2:
        return [str(r.id) for r in refs], vecs, "enrolled"
    if feature_id not in _DEFAULT_REAL_MEMO:
        photos = default_real_photos()
        _DEFAULT_REAL_MEMO[feature_id] = ([g for g, _ in photos], np.asarray(fn([im for _, im in photos]), np.float32))
    groups, vecs = _DEFAULT_REAL_MEMO[feature_id]
    return groups, vecs, "default"
