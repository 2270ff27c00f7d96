"""Enrol names (resynth_index/gallery/names.py): control, format and invisible characters, odd whitespace,
length, and look-alikes of the reserved names `unknown` and `real` are refused, naming the name."""

import io
import unicodedata

import pytest
from hostile_cases import hostile_names
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resynth_index.errors import UsageError
from resynth_index.gallery.names import (
    LOOKALIKES,
    MAX_NAME_CHARS,
    check_generator_name,
    skeleton,
)
from resynth_index.gallery.references import Gallery

NAMES = hostile_names()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "expect", "why"), NAMES, ids=[why for _, _, why in NAMES])
def test_each_hostile_name(name, expect, why):
    if expect == "ok":
        assert check_generator_name(name) == name
        return
    with pytest.raises(UsageError) as info:
        check_generator_name(name)
    message = str(info.value)
    assert message.startswith("gallery name " + repr(name)[:60]) and " is refused: " in message
    assert message.isprintable() and len(message) < 300  # escaped and cut: safe for a terminal or a log


def test_gallery_refuses_before_writing_and_stores_accepted_names_exactly(tmp_path):
    png = _png()
    with Gallery(tmp_path) as gallery:
        for name, expect, _ in NAMES:
            if expect == "refused":
                with pytest.raises(UsageError):
                    gallery.enroll(name, [png])
        assert gallery.generators() == {} and gallery.version() == 0
        accepted = [name for name, expect, _ in NAMES if expect == "ok"]
        for name in accepted:
            assert gallery.enroll(name, [png]).added == 1
        assert sorted(gallery.generators()) == sorted(accepted)
        # removal is not restricted: a name stored by an earlier version can still be removed
        assert gallery.remove("Unknown") == 0 and gallery.remove("vendor x") == 1


@pytest.mark.parametrize("reserved", ["unknown", "real"])
def test_every_lookalike_of_every_letter_is_caught(reserved):
    """Each look-alike in the table, put in place of its letter (either case), gives a refused name."""
    for pos, letter in enumerate(reserved):
        alikes = [chr(code) for code, target in LOOKALIKES.items() if target.casefold() == letter]
        assert len(alikes) >= 3, letter
        for alike in alikes:
            name = reserved[:pos] + alike + reserved[pos + 1:]
            with pytest.raises(UsageError, match="looks like the reserved name"):
                check_generator_name(name)


def test_lookalike_table_targets_only_letters_of_the_reserved_names():
    letters = set("unknownreal")
    assert {t.casefold() for t in LOOKALIKES.values()} == letters
    for code in LOOKALIKES:
        assert unicodedata.normalize("NFKC", chr(code)) == chr(code), f"U+{code:04X} is folded by NFKC already"
    assert skeleton("UNKNOWN") == "unknown" and skeleton("rea1") == "real" and skeleton("unknovvn") == "unknown"


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(st.text(max_size=80))
def test_any_text_is_accepted_clean_or_refused_with_usage_error(name):
    try:
        check_generator_name(name)
    except UsageError:
        return
    assert 0 < len(name) <= MAX_NAME_CHARS and name == name.strip(" ") and name.strip()
    for c in name:
        assert c == " " or (unicodedata.category(c)[0] not in "CZ" and not c.isspace()), ascii(name)
    assert skeleton(name) != "unknown" and (skeleton(name) != "real" or name == "real")
