"""Built-in offline generators: tiny, **randomly initialised** stand-ins for real text-to-image models.

No real Stable Diffusion, SDXL or PixArt weights can be had offline, so the zoo builds pipelines of the same
architecture families in code, with real diffusers and transformers classes and tiny configurations, their
weights drawn deterministically from a fixed seed per generator. They are **not** models of anything: their
images are structured noise, not pictures. They exist so that tests, demos and the embedded default
configuration can exercise the whole resynthesis engine (load, generate, cache, attribute) with no network,
and so that attribution has distinct "generator styles" to tell apart.

>>> zoo_names()
['tiny-pixart', 'tiny-sd', 'tiny-sd-wide', 'tiny-sdxl']
>>> pipe = build_zoo_pipeline("tiny-sd")            # doctest: +SKIP
>>> export_zoo("tiny-sd", "models/tiny-sd")         # doctest: +SKIP  (a standard save_pretrained directory)

In a configuration a zoo generator is named ``source = "zoo:tiny-sd"``; an exported directory loads anywhere
with ``DiffusionPipeline.from_pretrained(DIR)``.

Tokenizers are built offline too: the CLIP BPE vocabulary that open_clip ships becomes a real
:class:`~transformers.CLIPTokenizer` (77 tokens), and PixArt's T5 side gets a :class:`~transformers.T5Tokenizer`
(Unigram) whose pieces are derived from the same vocabulary. Both round-trip through ``save_pretrained``.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._quiet import quiet_loading
from ..errors import ConfigError, ModelNotAvailableError

__all__ = ["ZOO_VERSION", "build_zoo_pipeline", "export_zoo", "zoo_defaults", "zoo_names"]

#: Bumped whenever a zoo build changes its weights or configuration, so that caches keyed on it never go stale.
ZOO_VERSION = "zoo-v1"

_CLIP_MAX_LENGTH = 77
_T5_MAX_PIECES = 8000


@dataclass(frozen=True)
class _ZooEntry:
    family: str
    seed: int
    build: Callable[[int], Any]
    defaults: dict = field(default_factory=dict)
    description: str = ""


# --------------------------------------------------------------------------------------------- tokenizers


def _bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locate the package without importing it (it pulls torchvision)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError("the built-in zoo needs open_clip's CLIP BPE vocabulary; install open_clip_torch")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelNotAvailableError(f"open_clip's CLIP BPE vocabulary is missing: {path}")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable-character table of GPT-2/CLIP byte-level BPE.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


_VOCAB_LOCK = threading.Lock()
_VOCAB_CACHE: dict[str, Any] = {}


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-token vocabulary and 48,894 merges, built exactly as CLIP (and open_clip) build them."""
    with _VOCAB_LOCK:
        if "clip" not in _VOCAB_CACHE:
            with gzip.open(_bpe_vocab_path()) as handle:
                lines = handle.read().decode("utf-8").split("\n")
            merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
            vocab = list(_bytes_to_unicode().values())
            vocab = vocab + [v + "</w>" for v in vocab]
            vocab += ["".join(m) for m in merges]
            vocab += ["<|startoftext|>", "<|endoftext|>"]
            _VOCAB_CACHE["clip"] = ({tok: i for i, tok in enumerate(vocab)}, merges)
        return _VOCAB_CACHE["clip"]


def clip_tokenizer():
    """A real CLIP tokenizer (lower-cased byte-level BPE, 49,408 tokens, 77 positions), built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=_CLIP_MAX_LENGTH)


def t5_tokenizer():
    """A T5-style Unigram tokenizer (pad/eos/unk, sentencepiece ``▁`` word starts), built offline.

    Its pieces are the most frequent alphanumeric CLIP BPE tokens (a whole word ``cat</w>`` becomes ``▁cat``,
    a word-internal piece stays as it is) plus every single character, so any ASCII prompt tokenizes into
    meaningful, prompt-dependent ids. Scores favour longer pieces.
    """
    from transformers import T5Tokenizer

    vocab, _ = _clip_vocab_and_merges()
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -8.0)]
    seen = {p for p, _ in pieces}
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    for ch in chars + ".,;:!?'\"-()/&%$#@+*=":
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -7.0))
    for rank, token in enumerate(vocab):  # CLIP ids follow merge order, i.e. roughly frequency
        if len(pieces) >= _T5_MAX_PIECES:
            break
        word = token.removesuffix("</w>")
        if not word or not all(c in chars for c in word) or len(word) < 2:
            continue
        piece = "▁" + word if token.endswith("</w>") else word
        if piece in seen:
            continue
        seen.add(piece)
        pieces.append((piece, -3.0 - 2.0 * rank / len(vocab)))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=120)


# --------------------------------------------------------------------------------------------- builders


def _seeded(seed: int, offset: int) -> None:
    torch.manual_seed(seed * 1000 + offset)


#: Gain on the text encoders' final LayerNorm (see :func:`_amplify_text`).
_TEXT_GAIN = 8.0


def _amplify_text(encoder, gain: float = _TEXT_GAIN):
    # A randomly initialised text encoder ends in a unit-scale LayerNorm, so the cross-attention values it feeds
    # are small next to the denoiser's own residual stream and the prompt barely changes the image (mean |delta|
    # ~2 on 0-255 between prompts, against ~45 between seeds). Scaling that LayerNorm deterministically makes the
    # prompt matter (~10 on 0-255), as it does in trained models. Images are not degenerate without it: random
    # VAE decoders already give a pixel std of 40-50, so the decoders are left as initialised.
    found = [m for n, m in encoder.named_modules() if n.split(".")[-1] == "final_layer_norm"]
    if len(found) != 1:
        raise RuntimeError(f"expected one final_layer_norm in {type(encoder).__name__}, found {len(found)}")
    with torch.no_grad():
        for p in found[0].parameters():
            p.mul_(gain)
    return encoder


def _clip_text_config(hidden: int, layers: int, heads: int, **extra):
    from transformers import CLIPTextConfig

    vocab, _ = _clip_vocab_and_merges()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        layer_norm_eps=1e-5,
        **extra,
    )


def _vae(seed: int, channels: tuple[int, ...], latent_channels: int = 4, norm_groups: int = 32):
    from diffusers import AutoencoderKL

    _seeded(seed, 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=norm_groups,
        sample_size=64,
    )
    return vae


def _build_sd(
    seed: int, unet_channels: tuple[int, int], vae_channels: tuple[int, ...], text_hidden: int, scheduler_name: str
):
    import diffusers
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    _seeded(seed, 1)
    unet = UNet2DConditionModel(
        sample_size=64 // 2 ** (len(vae_channels) - 1),
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=unet_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    _seeded(seed, 2)
    text_encoder = _amplify_text(CLIPTextModel(_clip_text_config(text_hidden, 4, 4)))
    vae = _vae(seed, vae_channels)
    extra = (
        {"clip_sample": False, "set_alpha_to_one": False}
        if scheduler_name == "DDIMScheduler"
        else {"skip_prk_steps": True}
    )
    scheduler = getattr(diffusers, scheduler_name)(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        **extra,
    )
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tiny_sd(seed: int):
    return _build_sd(seed, (32, 64), (32, 64), 32, scheduler_name="PNDMScheduler")


def _build_tiny_sd_wide(seed: int):
    return _build_sd(seed, (64, 128), (32, 64, 64), 64, scheduler_name="DDIMScheduler")


def _build_tiny_sdxl(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed, 1)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text_encoder_2 output + 6 size/crop ids
        cross_attention_dim=32 + 32,  # the two encoders' hidden states, concatenated
        norm_num_groups=32,
    )
    _seeded(seed, 2)
    text_encoder = _amplify_text(CLIPTextModel(_clip_text_config(32, 3, 4)))
    _seeded(seed, 4)
    text_encoder_2 = _amplify_text(CLIPTextModelWithProjection(_clip_text_config(32, 3, 4, projection_dim=32)))
    vae = _vae(seed, (32, 64))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_tiny_pixart(seed: int):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    _seeded(seed, 1)
    transformer = PixArtTransformer2DModel(
        sample_size=16,  # 64 px / VAE factor 4; not a PixArt resolution bin, so no binning applies
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=32,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    _seeded(seed, 2)
    text_encoder = _amplify_text(
        T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
            )
        )
    )
    vae = _vae(seed, (32, 64, 64))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000
    )
    return PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=scheduler,
    )


_ZOO: dict[str, _ZooEntry] = {
    "tiny-sd": _ZooEntry(
        "stable-diffusion-1.x",
        101,
        _build_tiny_sd,
        {"steps": 10, "guidance": 7.5, "height": 64, "width": 64},
        "SD-1.x architecture: UNet (32, 64), CLIP text encoder, KL-VAE x2, PNDM",
    ),
    "tiny-sd-wide": _ZooEntry(
        "stable-diffusion-1.x",
        202,
        _build_tiny_sd_wide,
        {"steps": 10, "guidance": 7.5, "height": 64, "width": 64},
        "wider SD-1.x: UNet (64, 128), CLIP text encoder, KL-VAE x4, DDIM",
    ),
    "tiny-sdxl": _ZooEntry(
        "stable-diffusion-xl",
        303,
        _build_tiny_sdxl,
        {"steps": 10, "guidance": 5.0, "height": 64, "width": 64},
        "SDXL architecture: two CLIP text encoders, text_time addition embeds, KL-VAE x2, Euler",
    ),
    "tiny-pixart": _ZooEntry(
        "pixart-alpha",
        404,
        _build_tiny_pixart,
        {"steps": 10, "guidance": 4.5, "height": 64, "width": 64},
        "PixArt-alpha architecture: DiT transformer, T5 text encoder, KL-VAE x4, DPM-Solver++",
    ),
}

_BUILD_LOCK = threading.Lock()
_BUILT: dict[str, Any] = {}


def zoo_names() -> list[str]:
    """Names of the built-in generators, sorted (use them as ``source = "zoo:NAME"``)."""
    return sorted(_ZOO)


def _entry(name: str) -> _ZooEntry:
    key = name.removeprefix("zoo:")
    if key not in _ZOO:
        raise ConfigError(f"unknown zoo generator {name!r}; the zoo has: {', '.join(zoo_names())}")
    return _ZOO[key]


def zoo_defaults(name: str) -> dict:
    """Sampling defaults of a zoo generator: ``steps``, ``guidance``, ``height``, ``width`` (plus its
    ``family``, ``seed``, ``description`` and the ``zoo_version``)."""
    entry = _entry(name)
    return {
        **entry.defaults,
        "family": entry.family,
        "seed": entry.seed,
        "description": entry.description,
        "zoo_version": ZOO_VERSION,
    }


def build_zoo_pipeline(name: str, *, cached: bool = True):
    """A fresh diffusers pipeline for the zoo generator ``name`` (with or without the ``zoo:`` prefix).

    The build is deterministic (float32, on CPU, each component seeded, the caller's global RNG state left
    untouched), so by default it is done once per process and each call returns an independent deep copy:
    callers may move it to a device or swap its scheduler freely. ``cached=False`` builds from scratch.
    """
    entry = _entry(name)
    key = name.removeprefix("zoo:")
    if not cached:
        return _build(entry)
    with _BUILD_LOCK:
        if key not in _BUILT:
            _BUILT[key] = _build(entry)
        pipe = copy.deepcopy(_BUILT[key])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _build(entry: _ZooEntry):
    # fork_rng: the seeds set while building must not disturb the caller's global RNG
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        pipe = entry.build(entry.seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_zoo(name: str, directory: str | os.PathLike) -> Path:
    """Write the zoo generator ``name`` as a standard diffusers ``save_pretrained`` directory (safetensors),
    loadable offline with ``DiffusionPipeline.from_pretrained(directory)``. Returns the directory."""
    _entry(name)  # fail on an unknown name before touching the directory
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"export directory {str(directory)!r} exists and is not empty")
    pipe = build_zoo_pipeline(name)
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_loading():
        pipe.save_pretrained(directory, safe_serialization=True)
    key = name.removeprefix("zoo:")
    info = {"zoo_name": key, "zoo_version": ZOO_VERSION, **zoo_defaults(key)}
    (directory / "rindex_zoo.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory
