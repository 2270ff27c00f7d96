"""What a file's metadata claims about its origin, parsed without trusting it.

* IPTC ``DigitalSourceType`` and ``CreatorTool`` in the XMP packet (PNG ``iTXt``, JPEG ``APP1``, WebP ``XMP ``),
  found in the file's bytes;
* front-end claims: A1111/Forge/SD.Next ``parameters`` (``Model``, ``Model hash`` and the generation settings),
  ComfyUI ``prompt`` graphs (``ckpt_name``/``unet_name`` of loader nodes, the KSampler's settings), InvokeAI
  ``invokeai_metadata``, NovelAI ``Software``/``Source``, Fooocus and SwarmUI JSON ``parameters``, and the EXIF
  or PNG ``Software`` tag.

:func:`generation_parameters` returns the settings an exact replay needs when the file states all of them.
Everything here is text anyone can write; the engine reports claims and flags disagreement, never decides on them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..images.metadata import (
    collapse_whitespace,
    parse_a1111_parameters,
    parse_comfyui_prompt,
)
from .evidence import Claim, GenerationParameters

_XMP_START, _XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"
_MAX_XMP = 1 << 20  # bytes of one XMP packet we look at
_XMP_FIELD = r"(?:{name})\s*=\s*\"([^\"<>]{{1,400}})\"|<(?:{name})[^>]{{0,200}}?(?:rdf:resource=\"([^\"<>]{{1,400}})\"[^>]{{0,50}}/>|>\s*(?:<rdf:Alt>\s*<rdf:li[^>]{{0,100}}>)?([^<]{{1,400}})<)"
_XMP_SOURCE_TYPE = re.compile(_XMP_FIELD.format(name=r"Iptc4xmpExt:DigitalSourceType"))
_XMP_CREATOR_TOOL = re.compile(_XMP_FIELD.format(name=r"xmp:CreatorTool|xap:CreatorTool"))
# A1111's settings line: "Key: value" pairs separated by commas; a value may be a quoted string with commas.
_A1111_PARAM = re.compile(r'\s*([A-Za-z][\w \-/]{0,40}):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_A1111_SETTINGS = re.compile(r"^\s*Steps:\s*\d", re.MULTILINE)
#: metadata keys whose presence means a front end wrote generation details (the image cache keys on them)
_CLAIM_KEYS = ("invokeai_metadata", "software", "source", "exif:software", "fooocus_scheme", "sui_image_params")


def xmp_packet(data: bytes | None) -> str | None:
    """The first XMP packet in a file's bytes (as text), or None."""
    if not data:
        return None
    start = data.find(_XMP_START)
    if start < 0:
        return None
    end = data.find(_XMP_END, start, start + _MAX_XMP)
    if end < 0:
        return None
    return data[start : end + len(_XMP_END)].decode("utf-8", errors="replace")


def _xmp_value(pattern: re.Pattern, xmp: str) -> str | None:
    m = pattern.search(xmp)
    if not m:
        return None
    value = next((g for g in m.groups() if g), "").strip()
    return value or None


def source_type_code(value: str) -> str:
    """``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`` -> ``trainedAlgorithmicMedia``."""
    return value.rstrip("/").rsplit("/", 1)[-1]


def _a1111_settings(text: str) -> tuple[str | None, str | None, dict[str, str]]:
    """(prompt, negative prompt, settings) of an A1111 ``parameters`` text; empty settings without a
    ``Steps:`` line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    idx = next((i for i in range(len(lines) - 1, -1, -1) if _A1111_SETTINGS.match(lines[i])), None)
    if idx is None:
        return parse_a1111_parameters(text), None, {}
    settings: dict[str, str] = {}
    for key, value in _A1111_PARAM.findall(lines[idx]):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        settings[key.strip()] = value
    negative = None
    for i, line in enumerate(lines[:idx]):
        if line.strip().lower().startswith("negative prompt:"):
            negative = "\n".join([line.split(":", 1)[1]] + lines[i + 1 : idx]).strip() or None
            break
    return parse_a1111_parameters(text), negative, settings


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


def _comfy_nodes(text: str | None) -> dict[str, dict]:
    graph = _json(text)
    if not isinstance(graph, dict):
        return {}
    return {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}


def _link(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0])
    return None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_claims(meta: Mapping[str, str], xmp: str | None) -> list[Claim]:
    """Every origin claim in a decoded image's ``metadata`` and XMP packet, in the order found."""
    lower = {k.lower(): v for k, v in meta.items() if isinstance(v, str)}
    claims: list[Claim] = []

    def add(source: str, kind: str, value: Any, model_hash: Any = None) -> None:
        value = _text(value)
        if value and not any(c.source == source and c.kind == kind and c.value == value for c in claims):
            claims.append(Claim(source, kind, value, _text(model_hash)))

    if xmp:
        dst = _xmp_value(_XMP_SOURCE_TYPE, xmp)
        if dst:
            add("xmp", "digital_source_type", source_type_code(dst))
        add("xmp", "software", _xmp_value(_XMP_CREATOR_TOOL, xmp))
    params = lower.get("parameters")
    doc = _json(params)
    if isinstance(doc, dict):  # Fooocus and SwarmUI write JSON into "parameters"
        sui = doc.get("sui_image_params")
        if isinstance(sui, dict):
            add("swarmui", "model", sui.get("model"))
        else:
            add("fooocus", "model", doc.get("base_model") or doc.get("Base Model"),
                doc.get("base_model_hash") or doc.get("Base Model Hash"))
    elif params:
        _, _, settings = _a1111_settings(params)
        if settings.get("Model") or settings.get("Model hash"):
            add("a1111", "model", settings.get("Model") or settings.get("Model hash"), settings.get("Model hash"))
    for node in _comfy_nodes(lower.get("prompt")).values():
        inputs = node["inputs"]
        for key in ("ckpt_name", "unet_name"):
            add("comfyui", "model", inputs.get(key))
    invoke = _json(lower.get("invokeai_metadata"))
    if isinstance(invoke, dict):
        model = invoke.get("model")
        if isinstance(model, dict):
            add("invokeai", "model", model.get("name") or model.get("model_name") or model.get("key"), model.get("hash"))
        else:
            add("invokeai", "model", model)
    if lower.get("software", "").strip().lower().startswith("novelai"):
        add("novelai", "model", lower.get("source"))
    add("png", "software", lower.get("software"))
    add("exif", "software", lower.get("exif:software"))
    return claims


def _a1111_parameters(text: str) -> GenerationParameters | None:
    prompt, negative, s = _a1111_settings(text)
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", s.get("Size", ""))
    try:
        steps, seed, cfg = int(s["Steps"]), int(s["Seed"]), float(s["CFG scale"])
    except (KeyError, ValueError):
        return None
    if not (prompt and size and s.get("Sampler")):
        return None
    sampler = s["Sampler"]
    if s.get("Schedule type") and s["Schedule type"].lower() not in ("automatic", ""):
        sampler = f"{sampler} {s['Schedule type']}"
    blocked = [k for k in ("Denoising strength", "Hires upscale", "Hires steps", "Variation seed", "Mask blur")
               if k in s]
    return GenerationParameters(
        source="a1111", prompt=collapse_whitespace(prompt), seed=seed, steps=steps, guidance=cfg,
        width=int(size.group(1)), height=int(size.group(2)), sampler=sampler, negative_prompt=negative,
        not_replayable=f"the file states {', '.join(blocked)}: not a plain text-to-image run" if blocked else None,
    )


def _comfy_parameters(text: str) -> GenerationParameters | None:
    nodes = _comfy_nodes(text)
    samplers = [(k, n) for k, n in nodes.items() if str(n.get("class_type")) in ("KSampler", "KSamplerAdvanced")]
    if len(samplers) != 1:
        return None  # none, or a multi-pass graph a single replay cannot follow
    _, node = samplers[0]
    inputs = node["inputs"]
    latent = nodes.get(_link(inputs.get("latent_image")) or "", {}).get("inputs", {})
    seed = inputs.get("seed", inputs.get("noise_seed"))
    values = (seed, inputs.get("steps"), inputs.get("cfg"), latent.get("width"), latent.get("height"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    prompt = parse_comfyui_prompt(text)
    sampler = _text(inputs.get("sampler_name"))
    if not prompt or not sampler:
        return None
    negative_node = nodes.get(_link(inputs.get("negative")) or "", {}).get("inputs", {})
    denoise = inputs.get("denoise", 1.0)
    return GenerationParameters(
        source="comfyui", prompt=collapse_whitespace(prompt), seed=int(values[0]), steps=int(values[1]),
        guidance=float(values[2]), width=int(values[3]), height=int(values[4]),
        sampler=f"{sampler} {inputs.get('scheduler', 'normal')}", negative_prompt=_text(negative_node.get("text")),
        not_replayable=None if denoise in (1, 1.0) else f"denoise {denoise}: not a plain text-to-image run",
    )


def generation_parameters(meta: Mapping[str, str]) -> GenerationParameters | None:
    """The complete generation settings the file states (prompt, seed, steps, guidance, size, sampler), or None."""
    lower = {k.lower(): v for k, v in meta.items() if isinstance(v, str)}
    if lower.get("parameters") and _A1111_SETTINGS.search(lower["parameters"]):
        found = _a1111_parameters(lower["parameters"])
        if found is not None:
            return found
    if lower.get("prompt"):
        return _comfy_parameters(lower["prompt"])
    return None


def container_fingerprint(meta: Mapping[str, str], data: bytes | None) -> str | None:
    """None when the file carries nothing the provenance stage reads from its container (no C2PA manifest, no
    XMP, no generator claim, no complete generation settings); else a digest of the file's bytes (of its
    metadata when there are none). Answers that depend on a container must not be shared between files that
    have the same pixels in different containers: the serving image cache keys on this."""
    lower = {k.lower() for k in meta}
    interesting = (
        (data is not None and (b"c2pa" in data or _XMP_START in data))
        or any(k in lower for k in _CLAIM_KEYS)
        or bool(read_claims(meta, None))
        or generation_parameters(meta) is not None
    )
    if not interesting:
        return None
    if data is not None:
        return hashlib.sha256(data).hexdigest()[:32]
    return hashlib.sha256(json.dumps(dict(meta), sort_keys=True).encode()).hexdigest()[:32]
