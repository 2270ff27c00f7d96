"""``rindex query --stream``: attribute images named on stdin, one JSONL result per input as results come.

Each input line is either a path, or a JSON object ``{"path": "a.png"}`` / ``{"image": "<base64>"}`` with an
optional ``"id"`` (echoed in the result) and ``"name"``. Images go through the same batcher as the HTTP
service (:mod:`resynth_index.serving.batcher`): lines that arrive together are coalesced into one batch (up to
``serve.max_batch``, waiting at most ``serve.max_wait_ms`` for more), and an image-level cache (exact pixels
and pHash, :mod:`resynth_index.serving.image_cache`) answers reposts without inversion. Each output line is the
JSONL contract object plus ``image_cache`` (``exact``, ``perceptual`` or ``none``; an image identical to an
earlier one of its batch is ``exact``); a bad line or image gets ``{"path"..., "error"...}`` and the stream goes
on. Results are written in input order and flushed as they are written; the next lines are decoded while a
batch runs.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures as cf
import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from ..attribution.isolation import describe_failure
from ..errors import ImageError
from ..images.decode import decode_image
from .batcher import Answer, Batcher, FixedEngine, TimedImage, coalesce
from .image_cache import ImageCache
from .protocol import ServingEngine

#: stages the stream reports for a computed image: its decode and the engine's, not the batcher's own
_NOT_REPORTED = ("image_cache", "queue_wait")


@dataclass
class _Line:
    """One input line on its way out: an error already, or a decoded image waiting for its answer."""

    ident: Any
    name: str
    error: str | None = None
    decode_seconds: float = 0.0
    image: TimedImage | None = None  # until submitted
    future: cf.Future | None = None


def _parse(line: str, n: int):
    """-> (id, name, source) or raises ValueError."""
    text = line.strip()
    if not text.startswith("{"):
        return None, text, text
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("a JSON input line must be an object")
    ident = doc.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int, float))):
        raise ValueError('"id" must be a string or a number')
    if "path" in doc:
        return ident, str(doc.get("name") or doc["path"]), str(doc["path"])
    if "image" in doc:
        try:
            data = base64.b64decode(str(doc["image"]).split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("'image' is not valid base64") from None
        return ident, str(doc.get("name") or f"<line {n}>"), data
    raise ValueError('a JSON input line needs "path" or "image"')


def _decode(line: str, n: int, max_pixels: int, max_aspect: float) -> _Line:
    """Parse and decode input line ``n``; a bad line or image is an error line."""
    ident, name = None, f"<line {n}>"
    try:
        ident, name, source = _parse(line, n)
        t0 = time.perf_counter()
        d = decode_image(source, max_pixels=max_pixels, name=name, max_aspect=max_aspect)
        decode_s = time.perf_counter() - t0
    except (ValueError, ImageError) as exc:
        msg = str(exc) if isinstance(exc, ImageError) else f"{name}: {exc}"
        return _Line(ident, name, error=msg)
    except Exception as exc:  # noqa: BLE001 - a JSON line nested too deeply, say: this line's error only
        return _Line(ident, name, error=describe_failure(name, exc))
    return _Line(ident, name, decode_seconds=decode_s, image=TimedImage(d, decode_s))


def _coalesce(lines: queue.Queue[str | None], max_batch: int, max_wait: float) -> tuple[list[str], bool]:
    """The lines that arrive together: up to ``max_batch``, waiting at most ``max_wait`` seconds after the
    first; and whether the input ended."""
    first = lines.get()
    if first is None:
        return [], True
    return coalesce(lines, first, max_batch, max_wait)


def _output(line: _Line) -> dict:
    """The output object of one line (waits for its answer)."""
    if line.error is not None:
        return _with_id({"path": line.name, "error": line.error}, line.ident)
    try:
        answer: Answer = line.future.result()
    except Exception as exc:  # noqa: BLE001 - a failed batch fails its lines, never the stream
        return _with_id({"path": line.name, "error": describe_failure(line.name, exc)}, line.ident)
    out = answer.result
    if answer.image_cache == "none" and not answer.shared:
        if "timings" in out:  # an error result carries none
            out["timings"] = {k: round(v, 6) for k, v in answer.timings.items() if k not in _NOT_REPORTED}
        out["image_cache"] = "none"
    else:  # the image cache, or identical pixels earlier in the batch, answered: no inversion for this one
        out.update(path=line.name, image_cache="exact" if answer.shared else answer.image_cache,
                   timings={"decode": round(line.decode_seconds, 6)})
    return _with_id(out, line.ident)


def run_stream(engine: ServingEngine, stdin: IO[str], stdout: IO[str], *, resynthesize: bool = True,
               top_k: int = 3) -> int:
    """Process ``stdin`` until EOF; returns the number of failed inputs."""
    sc = engine.config.serve
    try:
        import imagehash  # noqa: F401 - the optional [serve] extra
        distance = sc.phash_distance
    except ImportError:
        distance = -1  # exact repost matching only
    cache: ImageCache[str] = ImageCache(sc.image_cache_size, distance)
    batcher: Batcher[Answer] = Batcher(FixedEngine(engine, resynthesize=resynthesize), cache,
                                       max_batch=sc.max_batch, max_wait_ms=sc.max_wait_ms, top_k=top_k)
    raw: queue.Queue[str | None] = queue.Queue()
    # Decoded lines in input order; bounded so that decoded images wait for the batcher, not pile up in memory.
    out: queue.Queue[_Line | BaseException | None] = queue.Queue(maxsize=2 * batcher.max_batch)
    stop = threading.Event()

    def read_stdin() -> None:
        for line in stdin:
            if line.strip():
                raw.put(line)
        raw.put(None)

    def put(item: _Line | BaseException | None) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def decode_lines() -> None:
        """Lines that arrive together are decoded, then submitted together, so that they share a batch."""
        try:
            n, eof = 0, False
            while not eof and not stop.is_set():
                group, eof = _coalesce(raw, batcher.max_batch, batcher.max_wait)
                decoded = [_decode(line, n + k + 1, sc.max_pixels, sc.max_aspect) for k, line in enumerate(group)]
                n += len(group)
                images = [d for d in decoded if d.image is not None]
                futures = batcher.submit([d.image for d in images], [d.name for d in images]) if images else []
                for d, future in zip(images, futures):
                    d.image, d.future = None, future
                for d in decoded:
                    put(d)
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which raises it
            put(exc)

    failed = 0
    with batcher:
        threading.Thread(target=read_stdin, name="rindex-stdin", daemon=True).start()
        threading.Thread(target=decode_lines, name="rindex-stream-decode", daemon=True).start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                result = _output(item)
                failed += "error" in result
                stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
                stdout.flush()
        finally:
            stop.set()
    return failed


def _with_id(d: dict, ident) -> dict:
    return {"id": ident, **d} if ident is not None else d


__all__ = ["run_stream"]
