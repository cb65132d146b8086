"""Image files as pixels: how `prepare` read the training images, and how the server reads an
image a client sends, with one function for both (`decode_image`), so the two never differ.

An image is converted to the model's channels first (1: 8-bit grey, Pillow's "L", ITU-R 601-2
luma; 3: RGB, an alpha channel dropped), then resized, if the data was, to height x width with
Pillow's bilinear filter. EXIF orientation is not applied. Pillow is imported when an image is
read, so these contracts load without it.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlpipe.core.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

# The formats read: those of the image-folder reader's suffixes. Pillow opens many more, some of
# them through outside programs (EPS runs Ghostscript), which a server must not do for a client.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP")
FORMAT_NAMES = "PNG, JPEG or BMP"
BILINEAR = "bilinear"
RESIZE_METHODS = (BILINEAR,)
CHANNEL_MODES = {1: "L", 3: "RGB"}
# Pillow modes whose pixels are colour; a palette image ("P", "PA") is colour when its palette is.
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})
PALETTE_MODES = frozenset({"P", "PA"})


class ImageError(DataError):
    """Bytes that are not an image the model can take: not an image, corrupt, or the wrong size."""


@dataclass(frozen=True)
class ImageDecoding:
    """How an image file becomes a model's pixels: uint8 [height, width] (1 channel) or
    [height, width, 3] (RGB), resized with ``resize`` or, when it is None, required to be that
    size already."""

    height: int
    width: int
    channels: int
    resize: str | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {sorted(CHANNEL_MODES)}, got {self.channels}")
        if self.resize is not None and self.resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS} or null, got {self.resize!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")

    @property
    def size(self) -> str:
        """``height``x``width``, as the error messages say it."""
        return f"{self.height}x{self.width}"

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "channels": self.channels, "resize": self.resize}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ImageDecoding:
        """Parse the JSON form; KeyError, TypeError or ValueError if it is malformed."""
        resize = raw["resize"]
        return cls(
            height=int(raw["height"]),
            width=int(raw["width"]),
            channels=int(raw["channels"]),
            resize=None if resize is None else str(resize),
        )


# What Pillow raises for bytes it cannot read: OSError for unidentified, truncated or undecodable
# data, the others from inside its format plugins on malformed headers and chunks.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its size and whether its pixels are colour."""

    height: int
    width: int
    colour: bool


def _open(source: bytes | Path) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as e:
        raise ImageError(f"unreadable image (not a {FORMAT_NAMES} image)") from e
    except (*DECODE_ERRORS, Image.DecompressionBombError) as e:
        raise ImageError(f"unreadable image ({e})") from e


def is_colour(image: Image.Image) -> bool:
    """Whether ``image``'s mode holds colour: RGB and the like, or a palette with a colour in it."""
    if image.mode in PALETTE_MODES:
        palette = image.getpalette() or []
        return any(len(set(palette[i : i + 3])) > 1 for i in range(0, len(palette), 3))
    return image.mode in COLOUR_MODES


def read_header(source: bytes | Path) -> ImageHeader:
    """The size and colour of an image, from its header alone; ImageError if it is no image."""
    with _open(source) as image:
        width, height = image.size
        return ImageHeader(height, width, is_colour(image))


def decode_image(source: bytes | Path, decoding: ImageDecoding, max_pixels: int | None = None) -> np.ndarray:
    """The image's pixels as ``decoding`` says: uint8 [H, W] or [H, W, 3].

    ImageError says what is wrong: not an image, corrupt or truncated, not of the size the model
    takes (when it resizes none), or larger than ``max_pixels`` (checked before decoding).
    """
    from PIL import Image

    with _open(source) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                f"image is {height}x{width} pixels, more than the {max_pixels} this model decodes; "
                "send a smaller image"
            )
        if decoding.resize is None and (height, width) != (decoding.height, decoding.width):
            raise ImageError(
                f"image is {height}x{width} (height x width); this model takes {decoding.size} images "
                "and resizes none: send images of that size"
            )
        try:
            converted = image.convert(CHANNEL_MODES[decoding.channels])
        except (*DECODE_ERRORS, Image.DecompressionBombError) as e:
            raise ImageError(f"unreadable image ({e})") from e
    if decoding.resize is not None:
        converted = converted.resize((decoding.width, decoding.height), Image.Resampling.BILINEAR)
    return np.array(converted, dtype=np.uint8)
