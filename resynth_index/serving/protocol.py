"""What the serving layer needs from an attribution engine, as typed protocols.

Serving constructs its engines (:class:`~resynth_index.attribution.engine.Attributor`, a downward import) and
otherwise talks to them only through the public methods and attributes named here: nothing in serving reads
or sets an engine attribute starting with ``_``. Any object with these members can serve (the tests' fakes,
a remote engine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..config import Config
    from ..images.decode import DecodedImage


class ServedResult(Protocol):
    """One image's answer as serving reads it (an :class:`~resynth_index.attribution.engine.Attribution`)."""

    prompt: str | None
    cache: str | None  # hit | near | miss
    timings: dict[str, float]

    @property
    def ok(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]:
        """The JSONL contract object."""
        ...


class BuildSummary(Protocol):
    """What a build reports (:class:`~resynth_index.attribution.engine.BuildReport`)."""

    built: int
    skipped: int
    seconds: float


class CandidateIndex(Protocol):
    """The engine's candidate cache, as far as serving warms it, reads its snapshot id and persists it."""

    def namespaces(self) -> Mapping[str, Mapping[str, Any]]:
        """namespace -> its stats, among them ``dim`` and ``last_record_id``."""
        ...

    def knn(self, generator: str, namespace: str, queries: np.ndarray, k: int) -> Any: ...

    def lookup(self, prompt: str, namespaces: Mapping[str, str]) -> Any: ...

    def flush(self) -> None: ...


class ServingEngine(Protocol):
    """An engine serving one snapshot of an index."""

    config: Config
    index_dir: Path

    @property
    def cache(self) -> CandidateIndex: ...

    @property
    def namespaces(self) -> Mapping[str, str]:
        """generator -> namespace digest the engine reads."""
        ...

    @property
    def inverter(self) -> object:
        """Loaded on first access (serving touches it to load the model before the first request)."""
        ...

    @property
    def embedder(self) -> object:
        """Loaded on first access, like :attr:`inverter`."""
        ...

    def attribute_decoded(
        self,
        images: Sequence[DecodedImage],
        *,
        names: Sequence[str | None] | None = None,
        resynthesize: bool = True,
        resynthesis_budget: float | None = None,
        top_k: int = 3,
    ) -> Sequence[ServedResult]: ...

    def build(self, prompts: Sequence[str], *, progress: bool = True) -> BuildSummary: ...

    def reopen(self, index: str | os.PathLike | None = None) -> ServingEngine:
        """A new engine on a fresh snapshot of the same index (or on ``index``, an exported snapshot of it),
        sharing this one's loaded models."""
        ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


__all__ = ["BuildSummary", "CandidateIndex", "ServedResult", "ServingEngine"]
