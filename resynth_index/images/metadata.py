"""Prompts that files carry in their metadata: A1111/Forge ``parameters``, ComfyUI ``prompt`` graphs and
``workflow`` JSON, and EXIF comments. Pure parsing of the text :func:`~resynth_index.images.decode.decode_image`
collected; no model is involved.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping


_SURROGATES = re.compile("[\ud800-\udfff]")

MAX_PROMPT_CHARS = 2000
"""A prompt read from metadata is cut to this many characters (at a word boundary when there is one): real
prompts are a few hundred characters, and a hostile 1 MB one would otherwise be held in every answer, the image
cache and the build queue."""


def collapse_whitespace(text: str) -> str:
    """One space for every run of white space; lone UTF-16 surrogates (which JSON escapes can carry and no
    UTF-8 encoder accepts) are dropped."""
    return re.sub(r"\s+", " ", _SURROGATES.sub("", text)).strip()


def _load_json(text: str) -> Any:
    """The parsed JSON, or None when the text is not JSON or nests deeper than the parser's recursion limit."""
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None


_A1111_STOP = re.compile(r"^\s*(Negative prompt:|Steps:\s*\d)", re.IGNORECASE)

# ComfyUI: node inputs that carry conditioning towards a sampler, and the text inputs of encoders.
_COND_INPUTS = ("positive", "conditioning", "conditioning_to", "conditioning_1", "conditioning_from",
                "conditioning_2", "cond", "base_positive")
_TEXT_INPUTS = ("text", "text_g", "t5xxl", "clip_l", "text_l", "prompt", "string", "value", "text_positive",
                "positive_prompt", "wildcard_text", "populated_text")


def parse_a1111_parameters(text: str) -> str | None:
    """The positive prompt of an A1111/Forge ``parameters`` text: every line before the first
    ``Negative prompt:`` line or the ``Steps: N, Sampler: ...`` settings line. None if that is empty."""
    if not text:
        return None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for line in lines:
        if _A1111_STOP.match(line):
            break
        kept.append(line)
    prompt = "\n".join(kept).strip()
    return prompt or None


def _looks_like_a1111(text: str) -> bool:
    return bool(re.search(r"^\s*(Negative prompt:|Steps:\s*\d)", text, re.IGNORECASE | re.MULTILINE))


def parse_comfyui_prompt(text: str) -> str | None:
    """The positive prompt of a ComfyUI API-format ``prompt`` graph (``{node_id: {class_type, inputs}}``).

    Follows each sampler node's ``positive`` input back through conditioning nodes (combine, ControlNet,
    FluxGuidance...) to text encoders and their text, resolving text that comes from another node. Without a
    sampler, takes the text encoders that do not feed any ``negative`` input. Several texts are joined with
    ", " in node order. None when nothing is found or the JSON is not a graph."""
    graph = _load_json(text)
    if not isinstance(graph, dict):
        return None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    if not nodes:
        return None

    def link(value: Any) -> str | None:
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            return str(value[0])
        return None

    def text_of(node_id: str, depth: int = 0) -> str | None:
        node = nodes.get(node_id)
        if node is None or depth > 20:
            return None
        inputs = node["inputs"]
        parts: list[str] = []
        for key in _TEXT_INPUTS:
            if key not in inputs:
                continue
            v = inputs[key]
            if isinstance(v, str):
                if v.strip() and v.strip() not in parts:
                    parts.append(v.strip())
            elif link(v) is not None:
                t = text_of(link(v), depth + 1)
                if t and t not in parts:
                    parts.append(t)
            if parts and key in ("text", "prompt", "string", "value"):
                break
        return ", ".join(parts) if parts else None

    def is_encoder(node: dict) -> bool:
        ct = str(node.get("class_type", ""))
        return "TextEncode" in ct or ct.lower().startswith("cliptext")

    def positive_texts(node_id: str, seen: set[str]) -> list[tuple[str, str]]:
        if node_id in seen:
            return []
        seen.add(node_id)
        node = nodes.get(node_id)
        if node is None:
            return []
        if is_encoder(node):
            t = text_of(node_id)
            return [(node_id, t)] if t else []
        out: list[tuple[str, str]] = []
        for key in _COND_INPUTS:
            src = link(node["inputs"].get(key))
            if src is not None:
                out.extend(positive_texts(src, seen))
        return out

    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for node_id in sorted(nodes, key=_node_order):
        src = link(nodes[node_id]["inputs"].get("positive"))
        if src is not None:
            found.extend(positive_texts(src, seen))
    if not found:
        negative_ids: set[str] = set()
        for node in nodes.values():
            src = link(node["inputs"].get("negative"))
            if src is not None:
                negative_ids.add(src)
        for node_id in sorted(nodes, key=_node_order):
            if is_encoder(nodes[node_id]) and node_id not in negative_ids:
                meta = nodes[node_id].get("_meta")
                title = str(meta.get("title", "")) if isinstance(meta, dict) else ""
                if "negative" in title.lower():
                    continue
                t = text_of(node_id)
                if t:
                    found.append((node_id, t))
    texts: list[str] = []
    for _, t in sorted(found, key=lambda p: _node_order(p[0])):
        if t not in texts:
            texts.append(t)
    prompt = ", ".join(texts).strip()
    return prompt or None


def parse_comfyui_workflow(text: str) -> str | None:
    """Fallback for files that carry only ComfyUI's UI ``workflow`` JSON: the first widget text of each
    text-encoder node whose output feeds a ``positive`` input (or, if links cannot tell, whose title does not
    say negative)."""
    wf = _load_json(text)
    nodes = wf.get("nodes") if isinstance(wf, dict) else None
    if not isinstance(nodes, list):
        return None
    nodes = [n for n in nodes if isinstance(n, dict)]
    positive_links: set[int] = set()
    negative_links: set[int] = set()
    for node in nodes:
        for inp in _list(node.get("inputs")):
            if not isinstance(inp, dict) or not isinstance(inp.get("link"), int):
                continue
            name = str(inp.get("name", ""))
            if name == "positive":
                positive_links.add(inp["link"])
            elif name == "negative":
                negative_links.add(inp["link"])
    texts: list[str] = []
    for node in sorted(nodes, key=lambda n: _workflow_order(n.get("order", n.get("id", 0)))):
        if "TextEncode" not in str(node.get("type", "")):
            continue
        out_links = {lk for o in _list(node.get("outputs")) if isinstance(o, dict)
                     for lk in _list(o.get("links")) if isinstance(lk, int)}
        if out_links & negative_links and not out_links & positive_links:
            continue
        if not out_links & positive_links and "negative" in str(node.get("title", "")).lower():
            continue
        widgets = _list(node.get("widgets_values"))
        t = next((w for w in widgets if isinstance(w, str) and w.strip()), None)
        if t and t.strip() not in texts:
            texts.append(t.strip())
    return ", ".join(texts) or None


def _list(value: Any) -> list:
    """``value`` when it is a list, else empty: a workflow written by hand or by an attacker may put anything
    where a list belongs."""
    return value if isinstance(value, list) else []


def _workflow_order(value: Any) -> tuple[int, int | float, str]:
    """A sort key for a workflow node's ``order`` that never compares a number with a string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
        return (0, value, "")
    return (1, 0, str(value))


def _node_order(node_id: str) -> tuple[int, str]:
    m = re.match(r"\d+", node_id)
    return (int(m.group()) if m else 1 << 30, node_id)


def bounded_prompt(text: str, limit: int = MAX_PROMPT_CHARS) -> str | None:
    """``text`` with collapsed white space, cut to ``limit`` characters; None when nothing in it is a letter or a
    digit (``!!!``, a zero-width space), which would normalise to an empty prompt."""
    p = collapse_whitespace(text)
    if len(p) > limit:
        cut = p[:limit]
        p = (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut).rstrip()
    return p if any(ch.isalnum() for ch in p) else None


def prompt_from_metadata(meta: Mapping[str, str]) -> tuple[str, str] | None:
    """(prompt, source) from a decoded image's metadata, in the order of trust :class:`MetadataInverter`
    documents, or None when the file carries no usable prompt. Prompts are bounded by :func:`bounded_prompt`:
    one with no letter or digit counts as none, so the next inverter of the chain answers."""
    for prompt, source in _metadata_prompts(meta):
        p = bounded_prompt(prompt)
        if p:
            return p, source
    return None


def _metadata_prompts(meta: Mapping[str, str]):
    """Every (raw prompt, source) the metadata carries, most trusted first."""
    lower = {k.lower(): v for k, v in meta.items() if isinstance(v, str)}
    params = lower.get("parameters")
    if params:
        p = parse_a1111_parameters(params)
        if p:
            yield p, "metadata:parameters"
    if lower.get("prompt"):
        p = parse_comfyui_prompt(lower["prompt"])
        if p:
            yield p, "metadata:comfyui"
    if lower.get("workflow"):
        p = parse_comfyui_workflow(lower["workflow"])
        if p:
            yield p, "metadata:comfyui"
    for key, source in (("exif:usercomment", "metadata:exif-usercomment"),
                        ("exif:imagedescription", "metadata:exif-imagedescription")):
        text = lower.get(key)
        if not text or not text.strip():
            continue
        p = parse_a1111_parameters(text) if _looks_like_a1111(text) else text
        if p and p.strip():
            yield p, source
