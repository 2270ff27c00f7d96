"""What the provenance stage found in one image: typed records, and their JSON form in the result.

Each signal says what it proves and what it does not (README "Provenance"): a manifest is a signed statement
by whoever holds the key, a watermark is a pattern anyone with the public encoder can embed, a front end's claim
is plain text anyone can type, and a replay is a reproduction of the pixels from the stated settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: IPTC digital source types that say a trained model made the picture (the last part of the code's URL).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia",
                             "algorithmicallyEnhanced", "compositeSynthetic"})
#: IPTC digital source types of captured pictures (cameras, scanners).
CAPTURE_SOURCE_TYPES = frozenset({"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm",
                                  "print", "minorHumanEdits"})


@dataclass(frozen=True)
class ManifestEvidence:
    """The active C2PA manifest of a file and how it validated.

    ``state`` is the SDK's validation state: ``trusted`` (signature valid, hashes match, signer chains to a trust
    anchor), ``valid`` (signature and hashes hold, signer not trusted), ``invalid`` (something failed), or
    ``unreadable`` (the manifest store could not be parsed; ``note`` says why)."""

    state: str
    claim_generator: str | None = None
    software_agents: tuple[str, ...] = ()
    digital_source_type: str | None = None
    signer: str | None = None
    signature_valid: bool = False
    trusted: bool = False
    hashes_match: bool = False
    failures: tuple[str, ...] = ()
    generator: str | None = None  # the configured generator its claim generator or software agent names
    note: str = ""

    @property
    def says_ai(self) -> bool:
        return self.digital_source_type in AI_SOURCE_TYPES

    @property
    def says_capture(self) -> bool:
        return self.digital_source_type in CAPTURE_SOURCE_TYPES


@dataclass(frozen=True)
class WatermarkEvidence:
    """The best-agreeing known invisible watermark: ``agreeing`` of ``bits`` message bits decoded as embedded."""

    message: str  # "sdxl", "sd1" or "sd2"
    bits: int
    agreeing: int
    verdict: str  # "none", "partial", "likely", "very likely"
    decisive: bool  # agreement at or above the configured minimum
    generators: tuple[str, ...] = ()  # configured generators whose pipelines embed this message


@dataclass(frozen=True)
class Claim:
    """One unverified statement the file makes about its origin."""

    source: str  # "a1111", "comfyui", "invokeai", "novelai", "fooocus", "swarmui", "xmp", "exif", "png"
    kind: str  # "model", "software" or "digital_source_type"
    value: str
    model_hash: str | None = None
    generator: str | None = None  # the configured generator it names (None: none, or ambiguous)
    matched_by: str | None = None  # "name", "alias" or "hash"


@dataclass(frozen=True)
class GenerationParameters:
    """The settings a file states it was generated with (A1111 ``parameters``, a ComfyUI graph)."""

    source: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    sampler: str  # as the front end names it, e.g. "DPM++ 2M Karras" or "dpmpp_2m karras"
    negative_prompt: str | None = None
    not_replayable: str | None = None  # why an exact replay cannot work (img2img, hires fix...), else None


@dataclass(frozen=True)
class ReplayResult:
    """The stated settings replayed with every runnable generator: RMSE (0..1 pixel scale) per generator."""

    status: str  # "done" or "skipped"
    reason: str = ""
    scheduler: str | None = None  # the diffusers scheduler the stated sampler maps to
    distances: dict[str, float | None] = field(default_factory=dict)  # None: the generator could not replay
    generator: str | None = None  # the one generator that reproduced the image, if any
    seconds: float = 0.0


@dataclass
class Provenance:
    """Everything the provenance stage found for one image, and what (if anything) it decided."""

    manifest: ManifestEvidence | None = None
    watermark: WatermarkEvidence | None = None
    claims: list[Claim] = field(default_factory=list)
    parameters: GenerationParameters | None = None
    replay: ReplayResult | None = None
    decision: str | None = None  # a generator, or "real" (a trusted camera manifest)
    decided_by: str | None = None  # "c2pa", "replay" or "watermark"
    disagreements: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # a reader that failed on this file (the others still ran)

    @property
    def empty(self) -> bool:
        """Nothing worth reporting: no manifest, no watermark above "none", no claims, no parameters."""
        quiet_mark = self.watermark is None or self.watermark.verdict == "none"
        return (self.manifest is None and quiet_mark and not self.claims and self.parameters is None
                and self.replay is None and not self.errors)

    def to_dict(self) -> dict[str, Any]:
        """The result's ``provenance`` object (floats rounded to 6 decimals)."""
        d = asdict(self)
        if self.replay is not None:
            d["replay"]["distances"] = {g: None if v is None else round(v, 6) for g, v in self.replay.distances.items()}
            d["replay"]["seconds"] = round(self.replay.seconds, 6)
        return d
