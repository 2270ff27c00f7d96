"""The models one engine configuration uses, each loaded on first use, in one object engines can share.

:meth:`Attributor.reopen <resynth_index.attribution.engine.Attributor.reopen>` hands the same
:class:`LoadedModels` to the new engine (same config: everything is shared, including what either engine loads
later); :meth:`~resynth_index.attribution.engine.Attributor.share_models_from` copies over, with
:meth:`LoadedModels.adopt`, only the models another config would load identically. Each model is built by its
kind's ``*_from_config`` factory, so the mapping from config keys to model options lives beside each model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..config import Config
from .resynthesis import cache_namespaces

if TYPE_CHECKING:
    from ..models.embedders import Embedder
    from ..models.fingerprints import Fingerprint
    from ..models.generators import Generator
    from ..models.inverters import Inverter
    from ..models.prompt_embedders import PromptEmbedder


@dataclass(eq=False)
class LoadedModels:
    """What ``config`` loads on ``device``. A field is None (``generators``: absent) until its ``get_*``
    method first loads it; ``namespaces`` is derived (it hashes generator sources and needs the embedder id),
    so it is kept here with the models it depends on."""

    config: Config
    device: torch.device
    embedder: Embedder | None = None
    inverter: Inverter | None = None
    fingerprint: Fingerprint | None = None
    prompt_embedder: PromptEmbedder | None = None
    generators: dict[str, Generator] = field(default_factory=dict)
    namespaces: dict[str, str] | None = None

    def get_embedder(self) -> Embedder:
        if self.embedder is None:
            from ..models.embedders import embedder_from_config

            self.embedder = embedder_from_config(self.config.embedder, self.device)
        return self.embedder

    def get_inverter(self) -> Inverter:
        if self.inverter is None:
            from ..models.inverters import inverter_from_config

            self.inverter = inverter_from_config(self.config.inverter, self.device)
        return self.inverter

    def get_fingerprint(self) -> Fingerprint | None:
        """None when ``gallery.fingerprint = "none"``."""
        if self.fingerprint is None and self.config.gallery.fingerprint != "none":
            from ..models.fingerprints import fingerprint_from_config

            self.fingerprint = fingerprint_from_config(self.config.gallery, self.device)
        return self.fingerprint

    def get_prompt_embedder(self) -> PromptEmbedder | None:
        """None when ``cache.prompt_embedder = "none"`` (no near-duplicate prompt reuse)."""
        if self.prompt_embedder is None and self.config.cache.prompt_embedder != "none":
            from ..models.prompt_embedders import prompt_embedder_from_config

            self.prompt_embedder = prompt_embedder_from_config(self.config.cache)
        return self.prompt_embedder

    def get_generator(self, name: str) -> Generator:
        if name not in self.generators:
            from ..models.generators import load_generator

            self.generators[name] = load_generator(self.config.generator(name), device=self.device)
        return self.generators[name]

    def get_namespaces(self) -> dict[str, str]:
        if self.namespaces is None:
            self.namespaces = cache_namespaces(self.config, self.device, self.get_embedder().id)
        return self.namespaces

    def adopt(self, other: LoadedModels) -> None:
        """Take over the generators ``other`` has loaded with identical settings, and its inverter and embedder
        when their config tables are identical and the device is the same; keep what is already loaded."""
        for name, gen in other.generators.items():
            mine = next((g for g in self.config.generators if g.name == name), None)
            if mine is not None and mine == other.config.generator(name):
                self.generators.setdefault(name, gen)
        if self.device != other.device:
            return
        if self.inverter is None and self.config.inverter == other.config.inverter:
            self.inverter = other.inverter
        if self.embedder is None and self.config.embedder == other.config.embedder:
            self.embedder = other.embedder
