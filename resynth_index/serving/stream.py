"""``rindex query --stream``: attribute images named on stdin, one JSONL result per input as results come.

Each input line is either a path, or a JSON object ``{"path": "a.png"}`` / ``{"image": "<base64>"}`` with an
optional ``"id"`` (echoed in the result) and ``"name"``. Lines that arrive together are coalesced into one
batch (up to ``serve.max_batch``, waiting at most ``serve.max_wait_ms`` for more), and an image-level cache
(exact pixels and pHash, :mod:`resynth_index.serving.image_cache`) answers reposts without inversion. Each output line
is the JSONL contract object plus ``image_cache`` (``exact``, ``perceptual`` or ``none``); a bad line or image
gets ``{"path"..., "error"...}`` and the stream goes on. Output is flushed after every batch.
"""

from __future__ import annotations

import base64
import binascii
import json
import queue
import threading
import time
from typing import IO

from ..errors import ImageError
from .image_cache import ImageCache, perceptual_hash
from ..images.decode import decode_image


def _parse(line: str, n: int):
    """-> (id, name, source) or raises ValueError."""
    text = line.strip()
    if not text.startswith("{"):
        return None, text, text
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("a JSON input line must be an object")
    ident = doc.get("id")
    if "path" in doc:
        return ident, str(doc.get("name") or doc["path"]), str(doc["path"])
    if "image" in doc:
        try:
            data = base64.b64decode(str(doc["image"]).split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'image' is not valid base64") from None
        return ident, str(doc.get("name") or f"<line {n}>"), data
    raise ValueError('a JSON input line needs "path" or "image"')


def run_stream(engine, stdin: IO[str], stdout: IO[str], *, resynthesize: bool = True, top_k: int = 3) -> int:
    """Process ``stdin`` until EOF; returns the number of failed inputs."""
    sc = engine.config.serve
    try:
        import imagehash  # noqa: F401 - the optional [serve] extra
        distance = sc.phash_distance
    except ImportError:
        distance = -1  # exact repost matching only
    cache = ImageCache(sc.image_cache_size, distance)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader():
        for line in stdin:
            if line.strip():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, name="rindex-stdin", daemon=True).start()
    failed = 0
    n = 0
    eof = False
    while not eof:
        first = lines.get()
        if first is None:
            break
        batch = [first]
        end = time.monotonic() + sc.max_wait_ms / 1000.0
        while len(batch) < sc.max_batch:
            try:
                item = lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                eof = True
                break
            batch.append(item)
        outputs: list[dict | None] = []
        todo = []  # (position, id, name, decoded, phash, decode seconds)
        in_batch: dict[str, int] = {}  # pixel hash -> position of its first occurrence in this batch
        dups = []  # (position, id, name, position of the first occurrence, decode seconds)
        for line in batch:
            n += 1
            ident, name = None, f"<line {n}>"
            try:
                ident, name, source = _parse(line, n)
                t0 = time.perf_counter()
                d = decode_image(source, max_pixels=sc.max_pixels, name=name)
                decode_s = time.perf_counter() - t0
            except (ValueError, ImageError) as exc:
                msg = str(exc) if isinstance(exc, ImageError) else f"{name}: {exc}"
                outputs.append(_with_id({"path": name, "error": msg}, ident))
                continue
            ph = perceptual_hash(d.image) if cache.perceptual else None
            hit = cache.get(d.pixel_sha256, ph)
            if hit is None and d.pixel_sha256 in in_batch:  # the same pixels earlier in this batch
                outputs.append(None)
                dups.append((len(outputs) - 1, ident, name, in_batch[d.pixel_sha256], decode_s))
                continue
            if hit is not None:
                out = dict(hit.value)
                out.update(path=name, image_cache=hit.kind, timings={"decode": round(decode_s, 6)})
                outputs.append(_with_id(out, ident))
            else:
                outputs.append(None)
                in_batch[d.pixel_sha256] = len(outputs) - 1
                todo.append((len(outputs) - 1, ident, name, d, ph, decode_s))
        if todo:
            results = engine.attribute_decoded([t[3] for t in todo], names=[t[2] for t in todo],
                                               resynthesize=resynthesize, top_k=top_k)
            for (pos, ident, _name, d, ph, decode_s), res in zip(todo, results):
                res.timings = {"decode": decode_s, **res.timings}
                out = res.to_dict()
                cache.put(d.pixel_sha256, ph, out)
                outputs[pos] = _with_id({**out, "image_cache": "none"}, ident)
        for pos, ident, name, first, decode_s in dups:
            out = {k: v for k, v in outputs[first].items() if k != "id"}
            out.update(path=name, image_cache="exact", timings={"decode": round(decode_s, 6)})
            outputs[pos] = _with_id(out, ident)
        for out in outputs:
            failed += "error" in out
            stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        stdout.flush()
    return failed


def _with_id(d: dict, ident) -> dict:
    return {"id": ident, **d} if ident is not None else d


__all__ = ["run_stream"]
