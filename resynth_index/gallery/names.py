"""Which names a generator may be enrolled under (``rindex enroll NAME``, :meth:`Gallery.enroll`).

An enrolled name is printed in results, tables, logs and ``/v1/index``, and two names are special:
``unknown`` is the answer when no generator is near enough and ``real`` holds the user's real photos. A name
that *looks like* one of them (``Unknown``, ``reаl`` with a Cyrillic ``а``, ``unknown`` plus a zero-width
space) would make an AI generator's answer read as "unknown" or "real" to a person. So a name must be:

* 1 to :data:`MAX_NAME_CHARS` characters, with at least one letter or digit;
* free of control, format, surrogate, private-use and unassigned characters (Unicode categories ``C*``), of
  line and paragraph separators, of invisible fillers (:data:`INVISIBLE`), and of any whitespace but a plain
  space between other characters (no tab, no no-break space, no leading or trailing space);
* not confusable with ``unknown``, nor with ``real`` unless it is exactly ``real``: two names are confusable
  when their :func:`skeleton` is equal.

The skeleton follows the idea of the Unicode confusable skeleton (UTS #39) for the two reserved words only:
NFKC (folds fullwidth and mathematical letters), drop format characters, invisible fillers and combining
marks, map look-alikes through :data:`LOOKALIKES`, casefold, map again (letters that casefolding produced).
The table holds every single character that Unicode's ``confusables.txt`` maps to a letter of ``unknown`` or
``real`` (either case) and that NFKC does not already fold, plus the small capitals of those letters
(``ᴀ ᴇ ʟ ɴ ʀ``, and ``к κ ĸ`` for ``k``), Cyrillic ``п`` and Greek ``η`` for ``n``, and ``vv`` for ``w``: these
read as the letter in lower case although the Unicode table maps them elsewhere or nowhere. It is stricter
than UTS #39 on purpose (case and diacritics are ignored): refusing ``Réal`` costs nothing.

Names already stored by an earlier version are still read and can still be removed (``rindex unenroll``).
"""

from __future__ import annotations

import unicodedata

from ..errors import UsageError

MAX_NAME_CHARS = 64
RESERVED_UNKNOWN = "unknown"
RESERVED_REAL = "real"

#: characters that render as nothing or as blank space but are not in a ``C*`` or ``Z*`` category
#: (default-ignorable code points outside ``Cf``, the Hangul fillers, the braille blank)
INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))  # variation selectors
    + "".join(map(chr, range(0xE0100, 0xE01F0)))  # variation selectors supplement
)

#: target letter -> characters that look like it (see the module docstring for where they come from)
_LOOKALIKE_SOURCES = {
    "A": "\u0391\u0410\u13aa\u15c5\ua4ee\U000102a0\U00016f40",
    "E": "\u0395\u0415\u13ac\u22ff\u2d39\ua4f0\U00010286\U000118a6\U000118ae",
    "K": "\u039a\u041a\u13e6\u16d5\u2c94\ua4d7\U00010518",
    "L": "\u13de\u14aa\u2cd0\ua4e1\U0001041b\U00010526\U000118a3\U000118b2\U00016f16\U0001d22a",
    "N": "\u039d\u2c9a\ua4e0\U00010513",
    "O": "0\u039f\u041e\u0555\u09e6\u0b20\u0b66\u12d0\u2c9e\u2d54\u3007\ua4f3\U00010292\U000102ab\U00010404"
         "\U000104c2\U00010516\U000114d0\U000118b5\U000118e0",
    "R": "\u01a6\u13a1\u13d2\u1587\ua4e3\U000104b4\U00016f35\U0001d216",
    "U": "\u054d\u1200\u144c\u222a\u22c3\ua4f4\U000104ce\U000118b8\U00016f42",
    "W": "\u051c\u13b3\u13d4\ua4ea\U000118e6\U000118ef",
    "a": "\u0251\u03b1\u0430\u237a\u1d00",
    "e": "\u0435\u04bd\u212e\uab32\u1d07",
    "k": "\u043a\u03ba\u0138\u1d0b\u2c95\uabb6",  # added: confusables.txt maps these to kra, not k
    "l": "1I|\u0196\u01c0\u0399\u0406\u04c0\u06f1\u16c1\u2223\u23fd\u2502\u2c92\u2d4f\ua4f2\U0001028a"
         "\U00010309\U00010320\U00016f28\u029f",
    "n": "\u0578\u057c\u043f\u03b7\u0274",  # Armenian vo and ra; added: Cyrillic pe, Greek eta, small N
    "o": "\u03bf\u03c3\u043e\u0585\u06f5\u0966\u0a66\u0ae6\u0be6\u0c02\u0c66\u0c82\u0ce6\u0d02\u0d20\u0d66"
         "\u0d82\u0e50\u0ed0\u101d\u1040\u10ff\u1d0f\u1d11\u2c9f\uab3d\U0001042c\U000104ea\U000118c8\U000118d7",
    "r": "\u0433\u1d26\u2c85\uab47\uab48\uab81\u0280",
    "u": "\u028b\u03c5\u057d\u1d1c\ua79f\uab4e\uab52\U000104f6\U000118d8",
    "w": "\u026f\u0461\u051d\u0561\u1d21\uab83\U0001170a\U0001170e\U0001170f",
}
LOOKALIKES = {ord(c): target for target, sources in _LOOKALIKE_SOURCES.items() for c in sources}


def skeleton(name: str) -> str:
    """What ``name`` looks like, reduced for comparison with the reserved names (see the module docstring)."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) not in ("Cf", "Mn", "Me") and c not in INVISIBLE)
    text = text.translate(LOOKALIKES).casefold().translate(LOOKALIKES).casefold()
    return text.replace("vv", "w").strip()


_RESERVED_SKELETONS = {skeleton(RESERVED_UNKNOWN): RESERVED_UNKNOWN, skeleton(RESERVED_REAL): RESERVED_REAL}


def _shown(name: str) -> str:
    """The name for an error message: escaped (``repr``) and cut, so that it cannot drive a terminal."""
    text = repr(name)
    return text if len(text) <= 90 else text[:80] + "...'"


def _bad_character(name: str) -> str | None:
    """Why a character of ``name`` is refused, or None."""
    for i, c in enumerate(name):
        cat = unicodedata.category(c)
        code = f"U+{ord(c):04X}"
        if c == " ":
            if i == 0 or i == len(name) - 1:
                return "it starts or ends with a space"
        elif cat[0] == "C" or cat in ("Zl", "Zp"):
            return f"it contains {code} ({_CATEGORY_WORDS.get(cat, cat)})"
        elif cat == "Zs" or c.isspace():
            return f"it contains {code}, whitespace other than a plain space"
        elif c in INVISIBLE:
            return f"it contains {code}, an invisible character"
    return None


_CATEGORY_WORDS = {"Cc": "a control character", "Cf": "a format character",
                   "Cs": "a lone surrogate: bytes that are not UTF-8", "Co": "a private-use character",
                   "Cn": "an unassigned code point", "Zl": "a line separator", "Zp": "a paragraph separator"}


def check_generator_name(name: object) -> str:
    """``name`` when it may be enrolled; otherwise :class:`UsageError` naming it and saying why."""
    if not isinstance(name, str):
        raise UsageError(f"gallery name must be a string, got {type(name).__name__}")
    problem = None
    if not name.strip():
        problem = "it is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"it has {len(name):,} characters, over the limit of {MAX_NAME_CHARS}"
    else:
        problem = _bad_character(name)
    if problem is None and not any(unicodedata.category(c)[0] in "LN" for c in name):
        problem = "it has no letter or digit"
    if problem is None:
        reserved = _RESERVED_SKELETONS.get(skeleton(name))
        if reserved == RESERVED_UNKNOWN:
            problem = ("'unknown' is reserved (the answer when no generator is near enough)" if name == reserved
                       else "it looks like the reserved name 'unknown'")
        elif reserved == RESERVED_REAL and name != RESERVED_REAL:
            problem = "it looks like the reserved name 'real' (enrol real photos under exactly 'real')"
    if problem is not None:
        raise UsageError(f"gallery name {_shown(name)} is refused: {problem}")
    return name


__all__ = ["INVISIBLE", "LOOKALIKES", "MAX_NAME_CHARS", "check_generator_name", "skeleton"]
