"""Fixtures shared by the model tests."""

import json

import pytest


@pytest.fixture(scope="module")
def register_tiny_clip(tmp_path_factory):
    """Register a tiny open_clip architecture (random init) through open_clip's own config mechanism; returns
    ``register(name, vision_layers) -> name``."""
    import open_clip

    def register(name: str, vision_layers: int = 2) -> str:
        d = tmp_path_factory.mktemp("clip_cfg")
        cfg = {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": vision_layers, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
        }
        (d / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(d / f"{name}.json")
        return name

    return register
