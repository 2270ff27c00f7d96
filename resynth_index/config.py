"""The one TOML configuration, parsed strictly: every key has a default, and an unknown key is named.

No config at all means the embedded offline default: the four ``zoo:`` generators, the EfficientNet-Lite0
embedder with its real ImageNet weights, and metadata-first then ImageNet-label prompt inversion.

Example (every key, with its default unless marked)::

    device = "auto"                 # auto | cpu | cuda | cuda:N, for every model
    threads = 0                     # CPU threads for torch, FAISS and BLAS; 0 = automatic (README "Threads")

    [resynthesis]
    gamma = 1                       # candidates per generator per prompt, 1..256 (1 keeps the default build under 3 min)
    seed_base = 0                   # shifts every candidate seed (they are derived from the prompt)
    degraded_copies = 2             # degraded copies (JPEG, blur, down-and-up resize) of each candidate embedded
                                    # for the generator prototypes, so they hold on re-encoded images; 0 = none
    colour_copies = 1               # colour copies (greyscale or a hue/saturation shift) of each candidate, for
                                    # the prototypes too, so they hold on colour edits; 0 = none
    sibling_seeds = 3               # extra candidate seeds per prompt, for the prototypes only, of generators with
                                    # a fine-tune sibling in the index (README "How it works"); 0 = none

    [embedder]
    kind = "efficientnet-lite0"     # or "open_clip"
    model = ""                      # open_clip model name, e.g. "ViT-L-14-336"
    pretrained = ""                 # open_clip pretrained tag or "hf-hub:org/repo"; "" = random init
    layer = -1                      # -1: the kind's default (efficientnet-lite0: block stage 4; open_clip: final)
                                    # 0: the final embedding; N: block N (open_clip: CLS token of block N)
    batch_size = 32
    runtime = "auto"                # auto | torch | onnxruntime (auto: ONNX Runtime on the CPU for
                                    # efficientnet-lite0 when it exports there; else torch)
    share_forward = true            # one pass per image when the inverter runs the embedder's network
    fingerprint = "spectrum"        # spectrum | none: join a native-resolution noise-residual spectrum to each
                                    # embedding (fine-tunes differ in texture; README "How it works")
    fingerprint_window = 32         # its patch size (pixels, even, >= 16)
    fingerprint_weight = 0.375      # its share of the cosine, between 0 and 1
    fingerprint_colour = "mean+chroma"  # mean+chroma: the RGB residuals' spectrum (2/3) and the red-green and
                                    # blue-yellow ones (1/3) | mean: the first alone | opponent: luminance,
                                    # red-green, blue-yellow alike (README "Configuration reference")
    texture = "gram"                # gram | none: join native-resolution texture statistics (the channel means
                                    # and covariance of EfficientNet-Lite0's early block stages; README "How it works")
    texture_layers = [2]            # the block stages they are read at (1..7)
    texture_weight = 0.25           # their share of the cosine; the semantic features keep what the parts leave
    thumbnail = 32                  # side (pixels) of the whole image box-filtered small, joined to each embedding
                                    # for the fine-tune siblings' second stage (README "How it works"); 0 = none
    thumbnail_weight = 0.02         # its share of the cosine (kept small: only that stage reads it)

    [inverter]
    chain = ["metadata", "label"]   # tried in order per image: metadata | label | blip | clip-interrogator
    blip_model = "Salesforce/blip-image-captioning-base"
    clip_model = "ViT-L-14"         # clip-interrogator towers
    clip_pretrained = "openai"
    max_new_tokens = 30

    [cache]
    prompt_embedder = "minilm"      # minilm | clip | none (none disables near-duplicate reuse)
    near_threshold = 0.0            # 0 = the calibrated default of the cache module

    [scoring]
    mode = "both"                   # restricted | unrestricted | both
    aggregate = "max"               # max | mean | knn | softmax
    distance = "cosine"             # cosine | euclidean
    knn_k = 5                       # neighbours for the knn vote
    unrestricted_k = 10             # per-generator neighbours from the whole index
    unrestricted_weight = 0.5       # weight of the unrestricted score in mode "both"
    temperature = 0.05              # softmax aggregation temperature
    unknown_threshold = -inf        # best score below this -> "unknown" (-inf: use the open-set calibration)
    unknown_margin = 0.0            # best minus runner-up below this -> "unknown"
    open_set = true                 # "unknown" below the threshold calibrated on the cache itself (leave one
                                    # generator out over cached candidates and their degraded copies; README
                                    # "Open set"); false: the calibration is only reported
    target_fpr = 0.05               # rate of unknown-generator images that calibration lets through
    min_tpr = 0.99                  # ... but never rejecting more than 1 - min_tpr of indexed generators' own images
    prototype_weight = 0.8          # weight of the generator prototypes (whitened class means of all cached
                                    # candidates; README "How it works"); 0 = off, 1 = prototypes alone
    open_set_prototype_weight = 0.5 # their weight in the open-set statistic (README "Open set")
    sibling_thumbnail_weight = 0.25 # weight of the thumbnail discriminant against the prototypes among fine-tune
                                    # siblings (README "How it works"); 0 = off

    [build]
    prompts = ""                    # prompt list file; "" = the packaged list
    limit = 0                       # use the first N prompts; 0 = all (the embedded default, no config: 121)
    batch_size = 8                  # prompts per generation/commit batch
    workers = 0                     # generators resynthesizing at once (threads); 0 = automatic: on CPU the
                                    # CPUs available over the thread count, on a GPU 1; 1 = one at a time

    [serve]                         # rindex serve / query --stream (README "Serving")
    host = "127.0.0.1"              # bind address (loopback by default)
    port = 8000
    miss_policy = "queue"           # queue: answer misses from cached evidence, queue the prompt for the builder
                                    # inline: resynthesize within resynthesis_budget (the server is the writer)
    resynthesis_budget = 10.0       # seconds of inline resynthesis one batch may spend
    request_timeout = 30.0          # seconds before a request answers 504
    max_upload_bytes = 20971520     # request body limit (413 above)
    max_pixels = 40000000           # per image, checked in the header before decoding (413 above)
    max_images = 32                 # images per request
    max_batch = 16                  # dynamic batching: images per inversion/embedding batch
    max_wait_ms = 5.0               # dynamic batching: how long a batch waits to fill
    max_pending = 1024              # images waiting for a batch before requests get 503
    image_cache_size = 100000       # image-level cache entries (LRU)
    phash_distance = 4              # pHash Hamming distance for a perceptual repost match; -1 = exact only
    refresh_interval = 2.0          # seconds between checks for a newer index snapshot; 0 = only on request
    max_aspect = 50.0               # longest/shortest side above this is refused before decoding (413)
    max_request_pixels = 100000000  # decoded pixels of all images of one request together (413 above)
    max_queue_bytes = 16777216      # build queue file limit; past it misses are answered but not queued
    client_timeout = 10.0           # seconds a client may take to send its headers, its body (408); idle keep-alive
    api_key = ""                    # bearer token every endpoint but /v1/health requires ("" = none;
                                    # $RINDEX_API_KEY overrides it)

    [gallery]                       # enrolled reference images (rindex enroll; README "Reference galleries")
    fingerprint = "spectrum"        # spectrum | bitplane | none: the fingerprint matched against references
    weight = 0.5                    # weight of the fingerprint score in the fused score
    semantic = true                 # references also join the unrestricted evidence in the embedder's space
    open_set = true                 # "unknown" below the calibrated threshold (when every generator is enrolled)
    real_gate = true                # "real" above the calibrated real margin (when every generator is enrolled)
    target_fpr = 0.05               # false-positive rate both thresholds are calibrated at
    backbone = "efficientnet-lite0" # bitplane CNN: efficientnet-lite0 (packaged weights) or "timm:NAME"
    layer = 2                       # bitplane: pool the output of this block stage
    bits = 3                        # bitplane: lowest bit planes kept per channel
    patch = 256                     # bitplane: native-resolution patch size
    window = 64                     # spectrum: native-resolution window size
    patches = 8                     # patches kept per image, most high-frequency energy first

    [provenance]                    # what the file says about its origin (README "Provenance")
    c2pa = true                     # read and verify C2PA manifests
    c2pa_trust_anchors = ""         # PEM file of extra root certificates to trust (beside the SDK's own list)
    c2pa_trusted_only = true        # a manifest decides only when its signer is trusted; false: any valid one
    watermark = true                # decode the invisible DWT-DCT watermarks (SDXL, SD 1.x, SD 2.x scripts)
    watermark_min_agreement = 0.75  # share of message bits that must agree to decide (36 of 48: "very likely")
    claims = true                   # IPTC/XMP DigitalSourceType and front-end claims (A1111, ComfyUI, ...)
    replay = true                   # regenerate with the parameters a file states, with every generator
    replay_max_distance = 0.02      # RMSE (0..1 pixel scale) under which a replay counts as a reproduction

    [[generators]]                  # repeat per candidate generator
    name = "sd15"
    source = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # hub id, local directory, or zoo:NAME;
                                    # empty or omitted: gallery-only (attributed from enrolled references)
    steps = 25
    guidance = 7.5
    height = 512
    width = 512
    scheduler = "DPMSolverMultistepScheduler"
    revision = "main"
    dtype = "auto"
    batch_size = 4
    batch_invariant = true          # (default: true on CPU, false on CUDA) one pipeline call per image, so the
                                    # images do not depend on the batch; false on CPU: batch_size per call
    call = { negative_prompt = "blurry", clip_skip = 1 }   # (default: {}) more arguments of the pipeline
                                    # call, checked against its signature when it loads; or a [generators.call]
                                    # table after the [[generators]] entry (README "How a generator is called")
    aliases = ["v1-5-pruned-emaonly", "SD 1.5"]   # names front ends and manifests give this model (default: none)
    weight_hashes = ["6ce0161689"]  # A1111 model hashes (10 or 8 hex digits) or full SHA-256 (default: none)
    weights_file = ""               # a single-file checkpoint whose hashes are computed (default: none)
    watermark = ""                  # the invisible watermark its pipeline embeds: sdxl | sd1 | sd2 (default: none)

    [[generators.variants]]         # (default: none) the same model called another way, built as "sd15~1" and
    steps = 50                      # attributed to "sd15": steps, guidance, height, width, scheduler, call (merged
    scheduler = "EulerDiscreteScheduler"   # over the generator's); README "Settings variants"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .generator_call import VARIANT_KEYS, check_call, variant_tables

INDEX_ENV_VAR = "RINDEX_INDEX"
DEFAULT_INDEX_DIR = "cache"
#: prompts of the packaged list (241) the embedded default builds: its first 121 keep the README's first command
#: within about 3 minutes on 2 cores. A config of one's own builds them all, which tells fine-tunes apart better:
#: their class means are estimated over twice the prompts (README "Why 241 build prompts")
EMBEDDED_BUILD_LIMIT = 121

#: The most candidates per generator per prompt (``resynthesis.gamma``). Candidate seeds are consecutive from a
#: prompt-derived start spaced 2**8 apart, so more than 256 would let two prompts' seed ranges overlap.
MAX_GAMMA = 256
#: The most degraded copies per candidate (``resynthesis.degraded_copies``; each costs one embedding at build time).
MAX_DEGRADED_COPIES = 16
#: The most colour copies per candidate (``resynthesis.colour_copies``; each costs one embedding at build time).
MAX_COLOUR_COPIES = 16
#: The most extra seeds per prompt for a fine-tune sibling's prototype (``resynthesis.sibling_seeds``; each costs
#: one generation per prompt and sibling at build time).
MAX_SIBLING_SEEDS = 16


@dataclass(frozen=True)
class ResynthesisConfig:
    gamma: int = 1
    seed_base: int = 0
    degraded_copies: int = 2
    colour_copies: int = 1
    sibling_seeds: int = 3

    @property
    def copies(self) -> int:
        """Copies of each candidate embedded for the prototypes: the degraded ones, then the colour ones."""
        return self.degraded_copies + self.colour_copies

    @property
    def sibling_positions(self) -> range:
        """The candidate positions of a sibling's extra seeds: those after the γ candidates, within the prompt's
        :data:`MAX_GAMMA` seeds (fewer than ``sibling_seeds`` when γ leaves less room)."""
        return range(self.gamma, min(self.gamma + self.sibling_seeds, MAX_GAMMA))


@dataclass(frozen=True)
class EmbedderConfig:
    kind: str = "efficientnet-lite0"
    model: str = ""
    pretrained: str = ""
    layer: int = -1
    batch_size: int = 32
    runtime: str = "auto"
    share_forward: bool = True
    fingerprint: str = "spectrum"
    fingerprint_window: int = 32
    fingerprint_weight: float = 0.375
    fingerprint_colour: str = "mean+chroma"
    texture: str = "gram"
    texture_layers: tuple[int, ...] = (2,)
    texture_weight: float = 0.25
    thumbnail: int = 32
    thumbnail_weight: float = 0.02


@dataclass(frozen=True)
class InverterConfig:
    chain: tuple[str, ...] = ("metadata", "label")
    blip_model: str = "Salesforce/blip-image-captioning-base"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    max_new_tokens: int = 30


@dataclass(frozen=True)
class CacheConfig:
    prompt_embedder: str = "minilm"
    near_threshold: float = 0.0


@dataclass(frozen=True)
class ScoringConfig:
    mode: str = "both"
    aggregate: str = "max"
    distance: str = "cosine"
    knn_k: int = 5
    unrestricted_k: int = 10
    unrestricted_weight: float = 0.5
    temperature: float = 0.05
    unknown_threshold: float = float("-inf")
    unknown_margin: float = 0.0
    open_set: bool = True
    target_fpr: float = 0.05
    min_tpr: float = 0.99
    prototype_weight: float = 0.8
    open_set_prototype_weight: float = 0.5
    sibling_thumbnail_weight: float = 0.25


@dataclass(frozen=True)
class BuildConfig:
    prompts: str = ""
    limit: int = 0
    batch_size: int = 8
    workers: int = 0


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    miss_policy: str = "queue"
    resynthesis_budget: float = 10.0
    request_timeout: float = 30.0
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_images: int = 32
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_pending: int = 1024
    image_cache_size: int = 100_000
    phash_distance: int = 4
    refresh_interval: float = 2.0
    max_aspect: float = 50.0
    max_request_pixels: int = 100_000_000
    max_queue_bytes: int = 16 * 1024 * 1024
    client_timeout: float = 10.0
    api_key: str = ""


@dataclass(frozen=True)
class ProvenanceConfig:
    """Switches and thresholds of the provenance stage (:mod:`resynth_index.provenance`)."""

    c2pa: bool = True
    c2pa_trust_anchors: str = ""
    c2pa_trusted_only: bool = True
    watermark: bool = True
    watermark_min_agreement: float = 0.75
    claims: bool = True
    replay: bool = True
    replay_max_distance: float = 0.02


@dataclass(frozen=True)
class GalleryConfig:
    fingerprint: str = "spectrum"
    weight: float = 0.5
    semantic: bool = True
    open_set: bool = True
    real_gate: bool = True
    target_fpr: float = 0.05
    backbone: str = "efficientnet-lite0"
    layer: int = 2
    bits: int = 3
    patch: int = 256
    window: int = 64
    patches: int = 8


GENERATOR_DTYPES = ("auto", "float32", "float16", "bfloat16")

@dataclass(frozen=True)
class GeneratorSettings:
    """How to load and sample one candidate generator. Only ``name`` is required.

    An empty ``source`` makes a **gallery-only** generator: nothing to run, attributed from its enrolled
    reference images (``rindex enroll``) alone.

    ``source`` is a hub id (``"stable-diffusion-v1-5/stable-diffusion-v1-5"``), a local ``save_pretrained``
    directory, or ``"zoo:NAME"``. ``steps``/``guidance``/``height``/``width`` left at None take the zoo entry's
    defaults (or those an exported zoo directory carries), else 25 steps, guidance 7.5 and the pipeline's own
    size. ``scheduler`` is a diffusers scheduler class name (``"DPMSolverMultistepScheduler"``) built from the
    pipeline's scheduler config; None keeps the pipeline's. ``dtype`` ``auto`` means bf16/fp16 on CUDA, fp32 on
    CPU. ``batch_size`` is how many images one pipeline call makes when batches run whole.
    ``batch_invariant`` (None: True on CPU, False on CUDA) runs one pipeline call per image, so that an image is
    bit-identical whatever the batch size; False on CPU batches ``batch_size`` images per call, faster but equal
    to single calls only up to floating-point rounding (it then enters the cache namespace).
    ``call`` holds further keyword arguments of the pipeline call (``{"negative_prompt": "blurry",
    "use_resolution_binning": False}``): scalars or flat lists of them, checked against the pipeline's
    signature when it loads; they override the engine's own per-pipeline choices and enter the cache namespace.
    Arguments the engine sets itself (prompt, steps, guidance, size, seeds, output) are refused here.

    ``variant_of`` names the generator this entry is a **settings variant** of: the same model sampled another
    way (other steps, guidance, scheduler, size or call), built and cached under its own name and namespace, but
    attributed to ``variant_of``. Variants are written as ``[[generators.variants]]`` tables under their
    generator (each may set ``steps``, ``guidance``, ``height``, ``width``, ``scheduler`` and ``call``; the rest
    is the generator's, ``call`` merged over its call) and are named ``NAME~1``, ``NAME~2``, ... in that order.

    Provenance (none of these enter the cache namespace): ``aliases`` are the names front ends and manifests
    give this model (A1111 ``Model``, ComfyUI ``ckpt_name``, a C2PA software agent); ``weight_hashes`` its
    A1111 model hashes or SHA-256 digests; ``weights_file`` a single-file checkpoint whose hashes are computed
    on first need; ``watermark`` the invisible watermark its pipeline embeds (``sdxl``, ``sd1``, ``sd2``).
    """

    name: str
    source: str = ""
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    batch_size: int = 4
    batch_invariant: bool | None = None
    call: dict[str, Any] = field(default_factory=dict, hash=False)  # a dict is unhashable: not in hash()
    aliases: tuple[str, ...] = ()
    weight_hashes: tuple[str, ...] = ()
    weights_file: str = ""
    watermark: str = ""
    variant_of: str = ""

    def __post_init__(self) -> None:
        label = f"generator {self.name!r}" if isinstance(self.name, str) and self.name else "generator"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("generator: 'name' must be a non-empty string")
        if not isinstance(self.source, str):
            raise ConfigError(f"{label}: 'source' must be a string (hub id, directory, zoo:NAME, or empty)")
        for key in ("steps", "height", "width"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{label}: '{key}' must be a positive integer, got {value!r}")
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and value % 8:
                raise ConfigError(f"{label}: '{key}' must be a multiple of 8, got {value}")
        if self.guidance is not None and (
            isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or self.guidance < 0
        ):
            raise ConfigError(f"{label}: 'guidance' must be a number >= 0, got {self.guidance!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ConfigError(f"{label}: 'batch_size' must be a positive integer, got {self.batch_size!r}")
        if self.batch_invariant is not None and not isinstance(self.batch_invariant, bool):
            raise ConfigError(f"{label}: 'batch_invariant' must be true or false, got {self.batch_invariant!r}")
        if self.dtype not in GENERATOR_DTYPES:
            raise ConfigError(f"{label}: 'dtype' must be one of {', '.join(GENERATOR_DTYPES)}; got {self.dtype!r}")
        for key in ("scheduler", "revision"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{label}: '{key}' must be a non-empty string or absent, got {value!r}")
        object.__setattr__(self, "call", check_call(label, self.call))

    @property
    def attributed_to(self) -> str:
        """The name an image this entry resynthesizes is attributed to: its own, or the one it is a variant of."""
        return self.variant_of or self.name


ZOO_DEFAULT_GENERATORS = ("tiny-sd", "tiny-sd-wide", "tiny-sdxl", "tiny-pixart")


def _default_generators() -> tuple[GeneratorSettings, ...]:
    return tuple(GeneratorSettings(name=n, source=f"zoo:{n}") for n in ZOO_DEFAULT_GENERATORS)


@dataclass(frozen=True)
class Config:
    device: str = "auto"
    threads: int = 0
    resynthesis: ResynthesisConfig = field(default_factory=ResynthesisConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    inverter: InverterConfig = field(default_factory=InverterConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    generators: tuple[GeneratorSettings, ...] = field(default_factory=_default_generators)

    def generator(self, name: str) -> GeneratorSettings:
        for g in self.generators:
            if g.name == name:
                return g
        raise ConfigError(f"no generator named {name!r} (configured: {', '.join(g.name for g in self.generators)})")

    @property
    def attribution_names(self) -> list[str]:
        """The names an image can be attributed to: every configured generator but the settings variants."""
        return [g.name for g in self.generators if not g.variant_of]

    @property
    def attributed_to(self) -> dict[str, str]:
        """Generator (variants included) -> the name its images are attributed to."""
        return {g.name: g.attributed_to for g in self.generators}


_CHOICES = {
    "embedder.kind": ("efficientnet-lite0", "open_clip"),
    "embedder.runtime": ("auto", "torch", "onnxruntime"),
    "embedder.fingerprint": ("spectrum", "none"),
    "embedder.fingerprint_colour": ("mean", "opponent", "mean+chroma"),
    "embedder.texture": ("gram", "none"),
    "inverter.chain": ("metadata", "label", "blip", "clip-interrogator"),
    "cache.prompt_embedder": ("minilm", "clip", "none"),
    "scoring.mode": ("restricted", "unrestricted", "both"),
    "scoring.aggregate": ("max", "mean", "knn", "softmax"),
    "scoring.distance": ("cosine", "euclidean"),
    "generators.dtype": GENERATOR_DTYPES,
    "serve.miss_policy": ("queue", "inline"),
    "gallery.fingerprint": ("spectrum", "bitplane", "none"),
    "generators.watermark": ("", "sdxl", "sd1", "sd2"),
}

#: List keys that may be empty (the others, like inverter.chain, need at least one item).
_MAY_BE_EMPTY = {"generators.aliases", "generators.weight_hashes"}

_POSITIVE = {
    "embedder.batch_size", "inverter.max_new_tokens", "scoring.knn_k", "scoring.unrestricted_k",
    "build.batch_size", "generators.batch_size", "generators.steps", "generators.height", "generators.width",
    "serve.request_timeout", "serve.max_upload_bytes", "serve.max_pixels", "serve.max_images",
    "serve.max_batch", "serve.max_pending", "serve.image_cache_size", "serve.max_aspect",
    "serve.max_request_pixels", "serve.max_queue_bytes", "serve.client_timeout",
    "gallery.layer", "gallery.bits", "gallery.patch", "gallery.window", "gallery.patches", "gallery.target_fpr",
    "scoring.target_fpr",
    "provenance.watermark_min_agreement", "provenance.replay_max_distance",
}

#: Most CPU threads the ``threads`` key accepts (0 = automatic; see devices.apply_thread_policy).
MAX_THREADS = 4096

_RANGES = {"resynthesis.gamma": (1, MAX_GAMMA), "resynthesis.degraded_copies": (0, MAX_DEGRADED_COPIES),
           "resynthesis.colour_copies": (0, MAX_COLOUR_COPIES),
           "resynthesis.sibling_seeds": (0, MAX_SIBLING_SEEDS),
           "threads": (0, MAX_THREADS), "build.workers": (0, 256), "scoring.prototype_weight": (0, 1),
           "scoring.open_set_prototype_weight": (0, 1), "scoring.target_fpr": (0, 1), "scoring.min_tpr": (0, 1),
           "scoring.sibling_thumbnail_weight": (0, 4), "embedder.fingerprint_window": (16, 512),
           "embedder.texture_layers": (1, 7), "embedder.thumbnail": (0, 128),
           "provenance.watermark_min_agreement": (0.5, 1.0)}  # inclusive bounds


def _check_value(where: str, name: str, expected: Any, value: Any, origin: str) -> Any:
    """Check one scalar (or list of str) value against a dataclass field type; return it normalised."""
    key = f"{where}.{name}" if where else name
    base = key.split("[")[0] if "[" in key else key
    args = typing.get_args(expected)
    optional = type(None) in args
    if value is None and optional:
        return None
    target = next((a for a in args if a is not type(None)), expected) if args and optional else expected
    if typing.get_origin(target) is tuple:
        item = typing.get_args(target)[0]
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{origin}: key '{key}' must be a list of {'integers' if item is int else 'strings'}, "
                              f"got {value!r}")
        value = tuple(value)
        allowed = _CHOICES.get(base)
        for v in value:
            if allowed and v not in allowed:
                raise ConfigError(f"{origin}: key '{key}' has {v!r}; choose from {', '.join(allowed)}")
            if base in _RANGES and not _RANGES[base][0] <= v <= _RANGES[base][1]:
                raise ConfigError(f"{origin}: key '{key}' has {v!r}; each must be between {_RANGES[base][0]} and "
                                  f"{_RANGES[base][1]}")
        if not value and base not in _MAY_BE_EMPTY:
            raise ConfigError(f"{origin}: key '{key}' must not be empty")
        return value
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: key '{key}' must be a number, got {value!r}")
        value = float(value)
    elif target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: key '{key}' must be an integer, got {value!r}")
    elif target is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: key '{key}' must be true or false, got {value!r}")
    elif target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: key '{key}' must be a string, got {value!r}")
    allowed = _CHOICES.get(base)
    if allowed and value not in allowed:
        raise ConfigError(f"{origin}: key '{key}' is {value!r}; choose from {', '.join(allowed)}")
    if base in _POSITIVE and value is not None and value <= 0:
        raise ConfigError(f"{origin}: key '{key}' must be positive, got {value!r}")
    if base in _RANGES and value is not None and not _RANGES[base][0] <= value <= _RANGES[base][1]:
        low, high = _RANGES[base]
        raise ConfigError(f"{origin}: key '{key}' must be between {low} and {high}, got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], where: str, origin: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: '{where}' must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            label = f"{where}.{key}" if where else key
            raise ConfigError(
                f"{origin}: unknown key '{label}' (known keys{' in [' + where + ']' if where else ''}: "
                f"{', '.join(sorted(known))})"
            )
    kwargs = {}
    for name, value in data.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            kwargs[name] = _build(expected, value, name, origin)
        elif name == "generators" and cls is Config:
            kwargs[name] = _build_generators(value, origin)
        else:
            kwargs[name] = _check_value(where.split("[")[0] if where else "", name, expected, value, origin)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{origin}: '{where or 'config'}' is incomplete: {exc}") from None


def _build_generators(value: Any, origin: str) -> tuple[GeneratorSettings, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{origin}: 'generators' must be a non-empty list of [[generators]] tables")
    out, seen = [], set()
    for i, table in enumerate(value):
        where = f"generators[{i}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{origin}: '{where}' must be a table")
        if not table.get("name"):
            raise ConfigError(f"{origin}: '{where}' needs a 'name'")
        table = dict(table)
        variants = table.pop("variants", [])
        gen = _build(GeneratorSettings, table, "generators", origin)
        entries = [gen] + _build_variants(gen, table, variants, origin)
        for entry in entries:
            if entry.name in seen or entry.name in ("unknown", "real"):
                raise ConfigError(f"{origin}: generator name {entry.name!r} is duplicated or reserved")
            seen.add(entry.name)
        out.extend(entries)
    names = {g.name: g for g in out}
    for g in out:
        parent = names.get(g.variant_of) if g.variant_of else None
        if g.variant_of and (parent is None or parent.variant_of or parent is g):
            raise ConfigError(f"{origin}: generator {g.name!r}: 'variant_of' must name another configured generator "
                              f"that is not itself a variant, got {g.variant_of!r}")
    return tuple(out)


def _build_variants(gen: GeneratorSettings, table: Mapping[str, Any], variants: Any, origin: str) -> list[GeneratorSettings]:
    """The settings of one generator's ``[[generators.variants]]`` (:func:`~.generator_call.variant_tables`)."""
    if variants and (gen.variant_of or not gen.source.strip()):
        raise ConfigError(f"{origin}: 'generators.{gen.name}.variants': only a runnable generator (with a source) "
                          "that is not itself a variant can have variants")
    out = []
    for k, merged in enumerate(variant_tables(gen.name, table, variants, origin), start=1):
        variant = _build(GeneratorSettings, merged, "generators", origin)
        if all(getattr(variant, key) == getattr(gen, key) for key in VARIANT_KEYS):
            raise ConfigError(f"{origin}: 'generators.{gen.name}.variants[{k}]' calls {gen.name!r} exactly as its own "
                              "entry does: a variant must change at least one of " + ", ".join(VARIANT_KEYS))
        out.append(variant)
    return out


def load_config(source: str | os.PathLike | Mapping[str, Any] | Config | None = None) -> Config:
    """Load a :class:`Config` from a TOML path, a dict with the same shape, an existing Config, or None (the embedded
    default, which builds the first :data:`EMBEDDED_BUILD_LIMIT` packaged prompts)."""
    if source is None:
        return Config(build=BuildConfig(limit=EMBEDDED_BUILD_LIMIT))
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return _build(Config, source, "", "config")
    path = Path(source)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _build(Config, data, "", str(path))


def default_index_dir() -> Path:
    """``$RINDEX_INDEX`` when set, else ``cache/`` under the working directory."""
    return Path(os.environ.get(INDEX_ENV_VAR) or DEFAULT_INDEX_DIR)
