"""Prompts from file metadata: hostile or malformed ComfyUI JSON and odd text give None or a clean prompt,
never an exception (one bad file must not fail its neighbours in a batch)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from resynth_index.images.metadata import prompt_from_metadata
from resynth_index.store.keys import normalize_prompt, prompt_key

DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 50_000 + "1" + "}" * 50_000


def _workflow(*nodes) -> str:
    return json.dumps({"nodes": list(nodes)})


HOSTILE = [
    DEEP_ARRAY,
    DEEP_OBJECT,
    json.dumps({"1": {"class_type": "KSampler", "inputs": {"positive": [["x"], 0]}}}),
    json.dumps({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a"}, "_meta": "not a dict"}}),
    _workflow(1, "x", None),
    _workflow({"type": "CLIPTextEncode", "widgets_values": "abc", "outputs": "x", "inputs": 5}),
    _workflow({"type": "CLIPTextEncode", "outputs": [{"links": [[1], "2"]}], "widgets_values": ["p"]}),
    '{"nodes": [{"type": "CLIPTextEncode", "order": ' + "9" * 400 + ', "widgets_values": ["z"]}]}',
]


def test_hostile_comfyui_json_never_raises():
    for text in HOSTILE:
        for key in ("prompt", "workflow"):
            found = prompt_from_metadata({key: text})
            assert found is None or (isinstance(found[0], str) and found[0]), (key, text[:80])


def test_mixed_order_types_sort_numbers_first():
    text = _workflow({"type": "CLIPTextEncode", "order": "a", "widgets_values": ["second"]},
                     {"type": "CLIPTextEncode", "order": 1, "widgets_values": ["first"]})
    assert prompt_from_metadata({"workflow": text}) == ("first, second", "metadata:comfyui")


def test_lone_surrogates_are_dropped_so_the_prompt_can_be_keyed():
    text = json.dumps({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "\ud800 a cat \udfff"}}})
    prompt, source = prompt_from_metadata({"prompt": text})
    assert (prompt, source) == ("a cat", "metadata:comfyui")
    prompt_key("0" * 64, normalize_prompt(prompt))  # encodes as UTF-8 without error


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)
NODE_KEYS = st.sampled_from(["class_type", "inputs", "_meta", "type", "order", "id", "outputs", "widgets_values",
                             "text", "positive", "negative", "links", "link", "name", "nodes", "title"])
COMFY_LIKE = st.recursive(
    st.none() | st.integers() | st.text(max_size=8) | st.sampled_from(["CLIPTextEncode", "KSampler", "positive"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NODE_KEYS | st.text(max_size=4), children,
                                                                      max_size=5),
    max_leaves=30,
)


GRAPH = st.dictionaries(  # ComfyUI API format: {node id: {class_type, inputs, _meta}}
    st.from_regex(r"\A[0-9]{1,2}\Z"),
    st.fixed_dictionaries({"class_type": st.sampled_from(["CLIPTextEncode", "KSampler", "ConditioningCombine"]),
                           "inputs": st.dictionaries(NODE_KEYS, COMFY_LIKE, max_size=4)},
                          optional={"_meta": COMFY_LIKE}),
    max_size=4,
)
WORKFLOW = st.fixed_dictionaries({"nodes": st.lists(  # ComfyUI UI format: {"nodes": [{type, inputs, outputs...}]}
    COMFY_LIKE | st.fixed_dictionaries({"type": st.just("CLIPTextEncode")},
                                       optional={k: COMFY_LIKE for k in ("inputs", "outputs", "order", "id",
                                                                         "widgets_values", "title")}),
    max_size=4)})


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["prompt", "workflow", "parameters", "exif:usercomment"]),
       doc=st.one_of(JSON, COMFY_LIKE, GRAPH, WORKFLOW))
def test_any_json_document_gives_none_or_a_clean_prompt(key, doc):
    found = prompt_from_metadata({key: json.dumps(doc)})
    if found is not None:
        prompt, source = found
        assert prompt == prompt.strip() and source.startswith("metadata:")
        prompt.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(meta=st.dictionaries(st.sampled_from(["parameters", "prompt", "workflow", "exif:UserComment",
                                             "exif:ImageDescription", "other"]), st.text(), max_size=4))
def test_any_text_gives_none_or_a_clean_prompt(meta):
    found = prompt_from_metadata(meta)
    if found is not None:
        found[0].encode("utf-8")
