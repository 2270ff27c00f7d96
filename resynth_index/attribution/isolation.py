"""Per-image isolation of a query batch: whatever one input raises becomes that input's own error result.

A batch (a CLI run, a stream batch, a server's dynamic batch) runs its images together for speed. When a batch
step raises, :func:`run_isolated` runs the batch's images again one at a time, so that only the image that
raises gets an error (``"<name>: <what went wrong>"``) and the others get their answers.

An error that is not about one input is raised as it is, for the caller to report once: the project's own
errors other than :class:`~resynth_index.errors.ImageError` (a bad config, a model that cannot load, a locked or
read-only index), ``OSError`` (a full disk, a read-only file system) and LMDB's errors. Retrying those image by
image would only repeat the failure (and any generation before it) once per image.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import ImageError, RindexError
from .results import Attribution

if TYPE_CHECKING:
    from ..images.decode import DecodedImage

log = logging.getLogger("resynth_index.attribution.isolation")

Pairs = Sequence[tuple[Attribution, "DecodedImage"]]


def describe_failure(name: str, exc: BaseException) -> str:
    """The error text of one input: the project's own messages as they are (they name the input), anything
    else as ``name: Type: message``."""
    if isinstance(exc, RindexError) and name in str(exc):
        return str(exc)
    if isinstance(exc, RindexError):
        return f"{name}: {exc}"
    msg = str(exc).strip()
    if isinstance(exc, RecursionError):
        msg = "input nested too deeply"
    return f"{name}: {type(exc).__name__}" + (f": {msg[:300]}" if msg else "")


def is_systemic(exc: BaseException) -> bool:
    """Whether ``exc`` is about the engine or its index rather than about one input (see the module docs)."""
    if isinstance(exc, RindexError):
        return not isinstance(exc, ImageError)
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] == "lmdb"


def _reset(res: Attribution, keep: dict[str, float]) -> None:
    """Forget what a failed batch wrote into ``res``, keeping its path and decode timing."""
    fresh = Attribution(path=res.path, timings=dict(keep))
    for f in dataclasses.fields(Attribution):
        setattr(res, f.name, getattr(fresh, f.name))


def run_isolated(run: Callable[[Pairs], None], pairs: Pairs) -> None:
    """``run(pairs)``; if it raises, ``run([pair])`` for each pair, and a pair that still raises gets its error
    in its result. Raises only what :func:`is_systemic` says is not about one input."""
    kept = [{k: v for k, v in res.timings.items() if k == "decode"} for res, _ in pairs]
    try:
        run(pairs)
        return
    except Exception as exc:  # noqa: BLE001 - retried image by image below
        if is_systemic(exc):
            raise
        if len(pairs) == 1:
            res = pairs[0][0]
            _reset(res, kept[0])
            res.error = describe_failure(res.path or "<image>", exc)
            log.info("input failed: %s", res.error)
            return
        log.info("a batch of %d images failed (%s: %s); retrying them one at a time", len(pairs),
                 type(exc).__name__, exc)
    for (res, image), keep in zip(pairs, kept):
        _reset(res, keep)
        run_isolated(run, [(res, image)])


__all__ = ["describe_failure", "is_systemic", "run_isolated"]
