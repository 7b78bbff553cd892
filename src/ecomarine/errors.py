"""Exceptions raised by ecomarine.

Every error the library raises on purpose derives from :class:`EcomarineError`, so callers
can catch one type. The CLI turns these into a one-line message and exit code 2.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "ConfigError",
    "DataError",
    "EcomarineError",
    "GalleryError",
    "ImageTooLargeError",
    "InvalidImageError",
    "UnsafeFileError",
    "WeightsNotFoundError",
]


class EcomarineError(Exception):
    """Base class of every error ecomarine raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take extra constructor arguments; rebuild from args + attributes so
        # that errors survive copy, pickle and multiprocessing.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[EcomarineError], args: tuple[Any, ...], state: dict[str, Any]
) -> EcomarineError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class InvalidImageError(EcomarineError, ValueError):
    """An image source could not be read: missing, not an image, truncated or corrupt.

    Attributes:
        source: A short description of the source (a path, or ``<bytes: N bytes>``).
        reason: Why it could not be read.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")

    def renamed(self, source: str) -> InvalidImageError:
        """The same error, naming ``source`` (e.g. a path after reading its bytes)."""
        clone = copy.copy(self)
        clone.source = source
        clone.args = (f"cannot read image {source}: {self.reason}",)
        return clone


class ImageTooLargeError(InvalidImageError):
    """An image has more pixels than the configured cap (checked before decoding).

    Attributes:
        pixels: The image's pixel count, when the header could be read.
        max_pixels: The cap that was applied.
    """

    def __init__(self, source: str, pixels: int | None, max_pixels: int, detail: str = "") -> None:
        self.pixels = pixels
        self.max_pixels = max_pixels
        size = f"{detail} = {pixels:,} pixels" if pixels is not None else (detail or "size")
        super().__init__(
            source,
            f"{size} exceeds the cap of {max_pixels:,} pixels "
            "(pass a larger max_pixels if you trust this file)",
        )


class WeightsNotFoundError(EcomarineError, FileNotFoundError):
    """Model weights or one of their files could not be found or downloaded."""


class ConfigError(EcomarineError, ValueError):
    """A configuration (``config.json``, arguments) is invalid or of an unknown version."""


class DataError(EcomarineError, ValueError):
    """A data file (CSV, manifest, metadata) is malformed: missing columns, bad values."""


class GalleryError(EcomarineError, ValueError):
    """A gallery is inconsistent, corrupt, or incompatible with the model in use."""


class UnsafeFileError(EcomarineError):
    """Loading a file would execute pickled code and the caller did not opt in."""
