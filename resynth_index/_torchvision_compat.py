"""Make ``import torchvision`` work when its native library cannot load.

The registry's torchvision 0.28.0 wheel carries a CUDA-only ``_C`` library. On the CPU build of torch 2.13.0
that library fails to load, and torchvision's own import then dies while registering fake kernels for
``torchvision::nms`` / ``torchvision::qnms`` because those operators were never declared. open_clip, timm and
transformers' vision classes import torchvision, so without this step none of them import.

:func:`ensure_torchvision_importable` declares the two operator schemas when (and only when) the native library
cannot provide them. The pure-Python parts of torchvision then import; its native ops (nms, roi_align, ...)
stay unavailable, which this project never uses. It is idempotent and a no-op where torchvision works.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

# Keep the Library object alive for the life of the process: dropping it would unregister the schemas.
_declared_library = None

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _torchvision_ops_declared(torch) -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup resolves the schema or raises
        return True
    except (AttributeError, RuntimeError):
        return False


def _try_load_native_library(torch) -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for location in spec.submodule_search_locations:
        for lib in glob.glob(os.path.join(location, "_C*.so")) + glob.glob(os.path.join(location, "_C*.pyd")):
            try:
                torch.ops.load_library(lib)
                return True
            except (OSError, RuntimeError, ImportError):
                continue
    return False


def ensure_torchvision_importable() -> str:
    """Declare torchvision's nms schemas if its native library cannot load.

    Returns what happened: ``"absent"`` (torchvision not installed), ``"native"`` (its library or an earlier
    import already provides the operators), or ``"declared"`` (this call or an earlier one declared them).
    """
    global _declared_library
    if _declared_library is not None:
        return "declared"
    if importlib.util.find_spec("torchvision") is None:
        return "absent"
    import torch

    if _torchvision_ops_declared(torch):
        return "native"
    if "torchvision" not in sys.modules and _try_load_native_library(torch) and _torchvision_ops_declared(torch):
        return "native"
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _declared_library = library
    return "declared"
