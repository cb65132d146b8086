"""read_idx: IDX round trips, plain and gzip, and a precise DataError for each corruption."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mlpipe.core.errors import DataError
from mlpipe.ml.datasets.idx import read_idx
from tests.unit.idx_writer import idx_bytes, write_idx

IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


def error_message(path: Path) -> str:
    """The DataError message read_idx gives for ``path``, checked to name the file."""
    with pytest.raises(DataError) as excinfo:
        read_idx(path)
    message = str(excinfo.value)
    assert str(path) in message
    return message


def test_reads_uint8_images_with_their_shape(tmp_path: Path) -> None:
    loaded = read_idx(write_idx(tmp_path / "images-idx3-ubyte", IMAGES))

    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, IMAGES)


def test_reads_gzip_detected_by_content_not_by_name(tmp_path: Path) -> None:
    loaded = read_idx(write_idx(tmp_path / "images-idx3-ubyte", IMAGES, compress=True))

    np.testing.assert_array_equal(loaded, IMAGES)


def test_reads_a_plain_file_named_gz_as_plain(tmp_path: Path) -> None:
    loaded = read_idx(write_idx(tmp_path / "images-idx3-ubyte.gz", IMAGES))

    np.testing.assert_array_equal(loaded, IMAGES)


@pytest.mark.parametrize(
    "values",
    [
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-30000, 1], [2, 30000]], dtype=np.int16),
        np.array([-(2**31), -1, 0, 258, 2**31 - 1], dtype=np.int32),
        np.array([[1.5, -2.25], [3.0e30, 0.0]], dtype=np.float32),
        np.array([np.pi, -1e300], dtype=np.float64),
    ],
    ids=lambda values: str(values.dtype),
)
def test_decodes_big_endian_data_into_native_endian_values(tmp_path: Path, values: np.ndarray) -> None:
    loaded = read_idx(write_idx(tmp_path / "values-idx", values, compress=True))

    assert loaded.dtype == values.dtype
    assert loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, values)


def test_returns_a_writable_array(tmp_path: Path) -> None:
    loaded = read_idx(write_idx(tmp_path / "images-idx3-ubyte", IMAGES))

    loaded[0, 0, 0] = 200

    assert loaded[0, 0, 0] == 200


def test_missing_file_is_reported(tmp_path: Path) -> None:
    assert "not found" in error_message(tmp_path / "absent-idx3-ubyte")


def test_truncated_data_reports_expected_and_actual_byte_count(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(IMAGES)[:-5])

    message = error_message(path)

    # header 4 + 3 dims * 4 = 16 bytes, then 24 pixels
    assert "truncated: expected 40 bytes for a uint8 array of shape [2, 3, 4], got 35" in message


def test_truncated_decompressed_data_says_decompressed(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES)[:-1], mtime=0))

    assert "truncated: expected 40 bytes (decompressed)" in error_message(path)


def test_trailing_bytes_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(IMAGES) + b"\0\0\0")

    assert "3 trailing bytes: expected 40 bytes" in error_message(path)


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(IMAGES)[:10])

    assert "truncated header: 10 bytes, need 16 for 3 dimensions" in error_message(path)


def test_bad_magic_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "images.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))

    assert "bad magic 0x89504e47" in error_message(path)


def test_unknown_dtype_code_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(b"\0\0\x0a\x01" + (4).to_bytes(4, "big") + bytes(4))

    assert "unknown dtype code 0x0A" in error_message(path)


def test_truncated_gzip_stream_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(IMAGES), mtime=0)[:-12])

    assert "corrupt or truncated gzip stream" in error_message(path)


def test_corrupt_gzip_stream_is_reported(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(idx_bytes(IMAGES), mtime=0))
    compressed[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(bytes(compressed))

    message = error_message(path)

    assert "corrupt or truncated gzip stream" in message
    assert "CRC check failed" in message
