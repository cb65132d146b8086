"""decode_image: an image file read as `prepare` reads it (and the server, the same way), and an
ImageError that says what is wrong with anything else."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlpipe.contracts.images import (
    BILINEAR,
    ImageDecoding,
    ImageError,
    decode_image,
    read_header,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def palette_image(colours: list[tuple[int, int, int]]) -> Image.Image:
    image = Image.fromarray(np.arange(6 * 5, dtype=np.uint8).reshape(6, 5) % len(colours), mode="P")
    image.putpalette([value for colour in colours for value in colour])
    return image


def refusal(data: bytes, decoding: ImageDecoding, max_pixels: int | None = None) -> str:
    with pytest.raises(ImageError) as error:
        decode_image(data, decoding, max_pixels)
    return str(error.value)


def test_an_rgb_png_is_read_exactly_as_rgb_and_as_pillow_luma_for_one_channel() -> None:
    png = encoded(Image.fromarray(RGB))

    np.testing.assert_array_equal(decode_image(png, ImageDecoding(6, 5, 3)), RGB)
    luma = np.array(Image.fromarray(RGB).convert("L"))
    np.testing.assert_array_equal(decode_image(png, ImageDecoding(6, 5, 1)), luma)


def test_a_grayscale_image_read_as_rgb_has_its_grey_in_every_channel() -> None:
    pixels = decode_image(encoded(Image.fromarray(GREY)), ImageDecoding(6, 5, 3))

    assert pixels.shape == (6, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], GREY)


def test_alpha_is_dropped() -> None:
    rgba = np.concatenate([RGB, np.full((6, 5, 1), 7, dtype=np.uint8)], axis=2)

    np.testing.assert_array_equal(decode_image(encoded(Image.fromarray(rgba)), ImageDecoding(6, 5, 3)), RGB)


def test_resizing_converts_first_then_resizes_bilinearly() -> None:
    png = encoded(Image.fromarray(RGB))
    expected = np.array(Image.fromarray(RGB).convert("L").resize((3, 4), Image.Resampling.BILINEAR))

    np.testing.assert_array_equal(decode_image(png, ImageDecoding(4, 3, 1, BILINEAR)), expected)


@pytest.mark.parametrize(
    ("image", "colour"),
    [
        (Image.fromarray(RGB), True),
        (Image.fromarray(np.dstack([RGB, RGB[..., :1]])), True),  # RGBA
        (palette_image([(255, 0, 0), (0, 0, 255)]), True),
        (palette_image([(0, 0, 0), (128, 128, 128), (255, 255, 255)]), False),
        (Image.fromarray(GREY), False),
        (Image.fromarray(GREY).convert("LA"), False),
    ],
    ids=["rgb", "rgba", "colour-palette", "grey-palette", "grey", "grey-alpha"],
)
def test_the_header_says_whether_an_image_is_colour(image: Image.Image, colour: bool) -> None:
    header = read_header(encoded(image))

    assert (header.height, header.width, header.colour) == (6, 5, colour)


def test_an_image_of_another_size_is_refused_when_nothing_is_resized() -> None:
    message = refusal(encoded(Image.fromarray(RGB)), ImageDecoding(8, 8, 3))

    assert message == (
        "image is 6x5 (height x width); this model takes 8x8 images and resizes none: "
        "send images of that size"
    )


def test_an_image_larger_than_max_pixels_is_refused_before_it_is_decoded() -> None:
    # a 5,000 x 4,000 PNG of zeros: 20 kB that would decode to 20 MB
    huge = encoded(Image.new("L", (4_000, 5_000)))

    message = refusal(huge, ImageDecoding(8, 8, 1, BILINEAR), max_pixels=2**20)

    assert message.startswith("image is 5000x4000 pixels, more than the 1048576 this model decodes")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n not really a png",
        encoded(Image.fromarray(RGB), "GIF"),
    ],
    ids=["empty", "text", "png-signature-only", "gif"],
)
def test_what_is_not_a_png_jpeg_or_bmp_is_refused(data: bytes) -> None:
    assert refusal(data, ImageDecoding(6, 5, 3)) == "unreadable image (not a PNG, JPEG or BMP image)"


def test_a_truncated_image_is_refused() -> None:
    png = encoded(Image.fromarray(RGB))

    assert refusal(png[: len(png) // 2], ImageDecoding(6, 5, 3)).startswith("unreadable image (")


# a damaged header may announce a huge image, which Pillow warns of before refusing it
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP"])
def test_every_truncation_and_byte_flip_is_read_or_refused_with_an_image_error(image_format: str) -> None:
    """What a careless client or an attacker sends: never an exception other than ImageError."""
    data = encoded(Image.fromarray(RGB), image_format)
    damaged = [data[:cut] for cut in range(len(data))]
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 0xFF
        damaged.append(bytes(flipped))
    for variant in damaged:
        try:
            pixels = decode_image(variant, ImageDecoding(6, 5, 3, BILINEAR), max_pixels=2**16)
        except ImageError:
            continue
        assert pixels.shape == (6, 5, 3)


def test_decoding_round_trips_through_json_and_checks_its_values() -> None:
    decoding = ImageDecoding(16, 12, 3, BILINEAR)

    assert ImageDecoding.from_json(decoding.to_json()) == decoding
    with pytest.raises(ValueError, match="channels must be one of"):
        ImageDecoding(16, 12, 2)
    with pytest.raises(ValueError, match="resize must be one of"):
        ImageDecoding(16, 12, 3, "nearest")
