"""Errors of the serving layer, and the HTTP status of a refused image chosen by its error type."""

from __future__ import annotations

from ..errors import ImageError, ImageTooLarge, NotAnImage, RindexError


class Overloaded(RindexError):
    """Too many images are waiting for a batch (HTTP 503)."""


class ServiceClosed(RindexError):
    """The service is not running (HTTP 503)."""


def classify_image_error(exc: ImageError) -> tuple[int, str]:
    """HTTP status and reason for a refused image, by type: :class:`~resynth_index.errors.ImageTooLarge`
    413 ``bomb``, :class:`~resynth_index.errors.NotAnImage` 415 ``not_image``, any other image error 422
    ``bad_image``."""
    if isinstance(exc, ImageTooLarge):
        return 413, "bomb"
    if isinstance(exc, NotAnImage):
        return 415, "not_image"
    return 422, "bad_image"


__all__ = ["Overloaded", "ServiceClosed", "classify_image_error"]
