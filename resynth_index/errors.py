"""Exceptions raised by resynth-index. Every one is a :class:`RindexError`, so callers can catch them all.

The type says what went wrong, so callers (the HTTP service's status codes, the CLI's exit codes) choose by
type and never by the wording of a message.
"""


class RindexError(Exception):
    """Base class of all errors this package raises on purpose."""


class ConfigError(RindexError):
    """A configuration file or dictionary is invalid (names the key)."""


class UsageError(RindexError):
    """A caller's argument is invalid (a name, a count, a file it points to), outside any configuration."""


class ModelNotAvailableError(RindexError):
    """A model source cannot be loaded: not found locally and the hub is unreachable, or invalid."""


class ImageError(RindexError):
    """An input image cannot be read or decoded, or is refused by a guard (the message names the image)."""


class ImageUnreadable(ImageError):
    """The input cannot be read at all: missing file, a directory, a permission or I/O error."""


class NotAnImage(ImageError):
    """The bytes are not an image in any accepted format (empty, text, an unknown or refused format)."""


class ImageTooLarge(ImageError):
    """The image is refused by a size guard before or while decoding (pixel limit, decompression bomb)."""


class CorruptImage(ImageError):
    """The format is recognised but the image cannot be decoded (truncated, damaged, an unconvertible mode)."""
