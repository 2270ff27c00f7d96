"""resynth-index: tell which text-to-image model made an image, by resynthesis over a precomputed index."""

from ._torchvision_compat import ensure_torchvision_importable

# Must run before anything imports torchvision (open_clip, timm and transformers' vision classes do).
ensure_torchvision_importable()

from .errors import ConfigError, ImageError, ModelNotAvailableError, RindexError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ImageError",
    "ModelNotAvailableError",
    "RindexError",
    "__version__",
]
