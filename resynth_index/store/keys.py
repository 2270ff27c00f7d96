"""Prompt normalisation and cache keys.

A cache key is ``sha256(namespace digest, normalized prompt)``. Both halves are defined here so that every
module (the cache, the CLI, resumable builds) derives exactly the same key.

Normalisation is deliberately *conservative*: it removes only noise that cannot change what a text-to-image
model is asked to draw, so two prompts that differ in words never share a key (near-duplicates are the
prompt-embedding index's job, see :mod:`resynth_index.store.lookup`). In order, :func:`normalize_prompt`:

1. applies Unicode **NFKC** (full-width letters, ligatures, compatibility forms, non-breaking spaces);
2. maps typographic punctuation to ASCII: curly single/double quotes and primes to ``'`` / ``"``, the dashes
   U+2010..U+2015 and the minus sign to ``-``, the ellipsis to ``...``;
3. drops invisible format characters (Unicode category Cf: zero-width space/joiners, BOM, soft hyphen) and
   turns control characters into spaces;
4. **case-folds** (``str.casefold``; CLIP's tokenizer lower-cases anyway);
5. **whitespace**: every run of whitespace becomes one space, leading and trailing whitespace is removed;
6. **punctuation spacing**: no space before ``, . ; : ! ? ) ] }``, none after ``( [ {``, and exactly one space
   after ``, ; :`` when a letter follows (``"red,blue"`` -> ``"red, blue"``; digits are left alone so that
   ``"1,000"`` and ``"16:9"`` keep their meaning);
7. strips **trailing sentence punctuation** (``.``, ``!``, ``?``, ``,``, ``;``, ``:``) and trailing
   whitespace: captioners end a caption with a full stop or not at random.

Everything else is kept: words, word order, digits, internal punctuation (``"a cat, a dog"`` stays
distinct from ``"a cat a dog"``), hyphens, parentheses and prompt-weighting syntax such as ``(cat:1.2)``.
Generators should be fed the *normalized* prompt, so that what made the cached vectors is exactly what the
key names.

>>> normalize_prompt("  A  Photo of a CAT ,sitting on a mat . ")
'a photo of a cat, sitting on a mat'
>>> normalize_prompt("ａ ｃａｔ") == normalize_prompt("a cat")
True
>>> normalize_prompt("a cat") == normalize_prompt("a dog")
False
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping

from ..errors import ConfigError

#: Bumped whenever the key derivation, the normalisation or the stored record format changes; it is hashed
#: into every namespace, so a new version never reads vectors written by an old one.
SCHEMA_VERSION = 1

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'", "\u0060": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
        "\u2026": "...",
    }
)
_WS = re.compile(r"\s+")
_SPACE_BEFORE = re.compile(r" (?=[,.;:!?)\]}])")
_SPACE_AFTER_OPEN = re.compile(r"(?<=[(\[{]) ")
_MISSING_SPACE_AFTER = re.compile(r"([,;:])(?=[^\W\d_])")
_TRAILING = re.compile(r"[\s.,;:!?]+$")


def normalize_prompt(text: str) -> str:
    """Return the canonical form of a prompt (see the module docstring for the exact rules).

    Raises :class:`~resynth_index.errors.ConfigError` when ``text`` is not a string. An empty or
    whitespace-only prompt normalises to ``""`` (callers decide whether that is acceptable).
    """
    if not isinstance(text, str):
        raise ConfigError(f"prompt must be a str, got {type(text).__name__}")
    s = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    if not s.isascii():
        s = "".join(
            "" if (cat := unicodedata.category(ch)) == "Cf" else (" " if cat == "Cc" else ch) for ch in s
        )
    else:
        s = "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in s) if not s.isprintable() else s
    s = s.casefold()
    s = _WS.sub(" ", s).strip()
    s = _SPACE_BEFORE.sub("", s)
    s = _SPACE_AFTER_OPEN.sub("", s)
    s = _MISSING_SPACE_AFTER.sub(r"\1 ", s)
    s = _TRAILING.sub("", s)
    return s


def _check_json(value: object, where: str) -> object:
    """Reject values whose JSON form would not be stable (NaN, infinities, non-string keys, odd types)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"namespace part {where} is {value!r}: not a finite number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"namespace part {where}: key {k!r} is not a string")
            out[k] = _check_json(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_check_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(
        f"namespace part {where} has type {type(value).__name__}; use str, int, float, bool, None, list or dict"
    )


def namespace_digest(parts: Mapping[str, object]) -> str:
    """SHA-256 hex digest of everything that changes the stored vectors, plus :data:`SCHEMA_VERSION`.

    ``parts`` is a JSON-like mapping (generator source and revision, scheduler, steps, guidance, size,
    seeds, embedder id and layer, ...). It is serialised with sorted keys and no whitespace, so the digest
    does not depend on dict order; tuples and lists hash alike. Any change of any value changes the digest.

    >>> namespace_digest({"steps": 10, "source": "zoo:tiny"}) == namespace_digest({"source": "zoo:tiny", "steps": 10})
    True
    """
    if not isinstance(parts, Mapping):
        raise ConfigError(f"namespace parts must be a mapping, got {type(parts).__name__}")
    doc = {"schema_version": SCHEMA_VERSION, "parts": _check_json(parts, "parts")}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_namespace_digest(value: object) -> bool:
    """True for a namespace digest as :func:`namespace_digest` writes it (64 lowercase hex characters)."""
    return isinstance(value, str) and _HEX64.match(value) is not None


def prompt_key(namespace_digest: str, normalized_prompt: str) -> bytes:
    """The 32-byte LMDB key of ``normalized_prompt`` under ``namespace_digest`` (a 64-char hex digest).

    The prompt must already be normalised; this function does not normalise again (it is on the hot path).
    """
    if not is_namespace_digest(namespace_digest):
        raise ConfigError(f"namespace digest must be 64 lowercase hex characters, got {namespace_digest!r}")
    h = hashlib.sha256()
    h.update(namespace_digest.encode("ascii"))
    h.update(b"\x00")
    h.update(normalized_prompt.encode("utf-8"))
    return h.digest()


__all__ = ["SCHEMA_VERSION", "is_namespace_digest", "namespace_digest", "normalize_prompt", "prompt_key"]
