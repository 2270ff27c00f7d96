"""Exceptions raised by resynth-index. Every one is a :class:`RindexError`, so callers can catch them all."""


class RindexError(Exception):
    """Base class of all errors this package raises on purpose."""


class ConfigError(RindexError):
    """A configuration file or dictionary is invalid (names the key)."""


class ModelNotAvailableError(RindexError):
    """A model source cannot be loaded: not found locally and the hub is unreachable, or invalid."""


class ImageError(RindexError):
    """An input image cannot be decoded or is refused by the size guard (names the image)."""
