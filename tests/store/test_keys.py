import pytest

from resynth_index.errors import ConfigError
from resynth_index.store.keys import SCHEMA_VERSION, namespace_digest, normalize_prompt, prompt_key


@pytest.mark.parametrize(
    "a, b",
    [
        ("A photo of a cat", "a photo of a cat"),
        ("  a   photo\tof a\ncat  ", "a photo of a cat"),
        ("ａ ｐｈｏｔｏ ｏｆ ａ ｃａｔ", "a photo of a cat"),  # full-width (NFKC)
        ("a\u00a0photo of a cat", "a photo of a cat"),  # no-break space
        ("a pho\u200bto of a cat", "a photo of a cat"),  # zero-width space
        ("a cat , a dog", "a cat, a dog"),
        ("a cat,a dog", "a cat, a dog"),
        ("a photo of a cat.", "a photo of a cat"),
        ("a photo of a cat !", "a photo of a cat"),
        ("\u201ca cat\u201d", '"a cat"'),
        ("a cat \u2014 watercolor", "a cat - watercolor"),
        ("( cat:1.2 ) on a mat", "(cat:1.2) on a mat"),
        ("STRASSE", "strasse"),
        ("ﬁsh", "fish"),
    ],
)
def test_noise_shares_a_key(a, b):
    assert normalize_prompt(a) == normalize_prompt(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("a photo of a cat", "a photo of a dog"),
        ("a cat, a dog", "a cat a dog"),
        ("a red car", "a red cars"),
        ("1,000 cats", "1, 000 cats"),
        ("a 16:9 poster", "a 16: 9 poster"),
        ("a cat on a mat", "a mat on a cat"),
        ("a (cat:1.2)", "a (cat:1.3)"),
    ],
)
def test_words_and_numbers_do_not_share_a_key(a, b):
    assert normalize_prompt(a) != normalize_prompt(b)


def test_digits_keep_their_punctuation():
    assert normalize_prompt("1,000 cats") == "1,000 cats"
    assert normalize_prompt("16:9") == "16:9"


def test_normalize_is_idempotent():
    for s in ["  A Cat ,on a MAT . ", "ｈｅｌｌｏ  world!!", "x ( y ) z"]:
        n = normalize_prompt(s)
        assert normalize_prompt(n) == n


def test_normalize_rejects_non_strings():
    with pytest.raises(ConfigError):
        normalize_prompt(None)


def test_namespace_digest_is_order_independent_and_sensitive():
    base = {"source": "zoo:tiny-sd", "revision": "abc", "scheduler": "ddim", "steps": 10, "guidance": 7.5,
            "size": [64, 64], "seeds": [0, 1, 2, 3], "embedder": "clip-vit-b32", "layer": 6}
    d = namespace_digest(base)
    assert len(d) == 64 and d == namespace_digest(dict(reversed(list(base.items()))))
    assert d == namespace_digest({**base, "size": (64, 64)})  # tuples hash like lists
    for key, value in [("revision", "abd"), ("scheduler", "euler"), ("steps", 11), ("guidance", 7.0),
                       ("size", [64, 32]), ("seeds", [0, 1, 2]), ("embedder", "other"), ("layer", 12)]:
        assert namespace_digest({**base, key: value}) != d, key


def test_namespace_digest_includes_schema_version(monkeypatch):
    import resynth_index.store.keys as prompts

    d = namespace_digest({"a": 1})
    monkeypatch.setattr(prompts, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert prompts.namespace_digest({"a": 1}) != d


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {1: "a"}, ["not", "a", "mapping"]])
def test_namespace_digest_rejects_unstable_values(bad):
    with pytest.raises(ConfigError):
        namespace_digest(bad)


def test_prompt_key():
    ns1, ns2 = namespace_digest({"g": 1}), namespace_digest({"g": 2})
    k = prompt_key(ns1, "a cat")
    assert isinstance(k, bytes) and len(k) == 32
    assert k == prompt_key(ns1, "a cat")
    assert k != prompt_key(ns2, "a cat") and k != prompt_key(ns1, "a dog")
    with pytest.raises(ConfigError):
        prompt_key("not-a-digest", "a cat")
