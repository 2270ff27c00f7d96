"""Provenance: what a file says about its origin, and what can be verified, before any resynthesis.

Layer: after ``images/`` and ``models/`` (the replay runs generators), before ``attribution/``, which calls it.
One image::

    read_provenance(decoded, settings, names)   C2PA manifest (manifest.py), invisible watermark (watermark.py),
                                                XMP and front-end claims, stated generation settings (claims.py)
    replay(...)                                 regenerate the stated settings with every generator (replay.py)
    decide(provenance, settings)                verified evidence: a trusted manifest > a replay > a watermark

Each signal has a switch in ``[provenance]``. Claims never decide; the attribution stage reports them beside the
verdict and flags disagreement.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..config import ProvenanceConfig
from ..images.decode import DecodedImage
from .claims import (
    container_fingerprint,
    generation_parameters,
    read_claims,
    xmp_packet,
)
from .evidence import (
    Claim,
    GenerationParameters,
    ManifestEvidence,
    Provenance,
    ReplayResult,
    WatermarkEvidence,
)
from .manifest import read_manifest
from .names import GeneratorNames, normalize_name, weight_hashes
from .replay import image_distance, replay
from .watermark import detect

__all__ = [
    "Claim", "GenerationParameters", "GeneratorNames", "ManifestEvidence", "Provenance", "ReplayResult",
    "WatermarkEvidence", "container_fingerprint", "decide", "image_distance", "normalize_name", "read_provenance",
    "replay", "weight_hashes",
]

#: what ``decided_by`` says when provenance decided
DECIDERS = ("c2pa", "replay", "watermark")


def read_provenance(decoded: DecodedImage, settings: ProvenanceConfig, names: GeneratorNames) -> Provenance:
    """Everything but the replay (which generates): manifest, watermark, claims and stated settings, with the
    decision the verified part of it makes (see :func:`decide`)."""
    prov = Provenance()
    if settings.c2pa:
        manifest = read_manifest(decoded.data, decoded.format, trust_anchors=settings.c2pa_trust_anchors)
        if manifest is not None:
            for name in (*manifest.software_agents, manifest.claim_generator):
                found = names.by_name(name) if name else None
                if found is not None:
                    manifest = replace(manifest, generator=found[0])
                    break
        prov.manifest = manifest
    if settings.watermark:
        prov.watermark = detect(np.asarray(decoded.image), min_agreement=settings.watermark_min_agreement,
                                generators_by_message=names.watermarks())
    if settings.claims:
        prov.claims = [names.match(c) for c in read_claims(decoded.metadata, xmp_packet(decoded.data))]
    if settings.replay:
        prov.parameters = generation_parameters(decoded.metadata)
    decide(prov, settings)
    return prov


def decide(prov: Provenance, settings: ProvenanceConfig) -> None:
    """Set ``prov.decision``/``decided_by`` from verified evidence, strongest first:

    1. a manifest whose signature and hashes hold, from a trusted signer (any signer when
       ``c2pa_trusted_only`` is false), that names a configured generator and an AI source type; or a capture
       source type (a signed camera picture: ``real``);
    2. a replay that reproduced the image with exactly one generator;
    3. a watermark at or above the decisive agreement whose message exactly one configured generator embeds.
    """
    prov.decision = prov.decided_by = None
    m = prov.manifest
    if m is not None and m.signature_valid and m.hashes_match and (m.trusted or not settings.c2pa_trusted_only):
        if m.says_ai and m.generator is not None:
            prov.decision, prov.decided_by = m.generator, "c2pa"
            return
        if m.says_capture:
            prov.decision, prov.decided_by = "real", "c2pa"
            return
    if prov.replay is not None and prov.replay.generator is not None:
        prov.decision, prov.decided_by = prov.replay.generator, "replay"
        return
    w = prov.watermark
    if w is not None and w.decisive and len(w.generators) == 1:
        prov.decision, prov.decided_by = w.generators[0], "watermark"
