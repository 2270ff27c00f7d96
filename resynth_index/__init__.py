"""resynth-index: tell which text-to-image model made an image, by resynthesis over a precomputed index.

>>> from resynth_index import Attributor                       # doctest: +SKIP
>>> with Attributor(index="cache") as engine:                   # no config: the embedded offline default
...     engine.build(limit=8)
...     print([r.prediction for r in engine.attribute(["samples/"])])
"""

from ._torchvision_compat import ensure_torchvision_importable

# Must run before anything imports torchvision (open_clip, timm and transformers' vision classes do).
ensure_torchvision_importable()

from .attribution.engine import Attributor  # noqa: E402
from .attribution.results import Attribution, BuildReport, Evidence  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import ConfigError, ImageError, ModelNotAvailableError, RindexError, UsageError  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "Attributor",
    "BuildReport",
    "Config",
    "ConfigError",
    "Evidence",
    "ImageError",
    "ModelNotAvailableError",
    "RindexError",
    "UsageError",
    "__version__",
    "load_config",
]
