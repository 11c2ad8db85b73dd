"""cora.serve.requests: the checks of what clients send, without a server (the server tests send the same
bad inputs over the wire)."""

import io

import numpy as np
import pytest
from PIL import Image

from cora.errors import UserError
from cora.export.triton import Limits
from cora.serve.requests import check_embeddings, check_float_image, check_names, check_prior, decode_image

LIMITS = Limits(max_image_bytes=100_000, max_image_side=64, max_classes=5)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def test_decode_png_and_gray_jpeg_as_pillow_reads_them():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = decode_image(encoded(rgb, "PNG"), LIMITS)
    assert out.dtype == np.float32 and out.shape == (3, 20, 30)
    np.testing.assert_array_equal(out, rgb.transpose(2, 0, 1) / np.float32(255))
    gray = encoded(np.full((8, 8), 128, np.uint8), "JPEG")
    np.testing.assert_allclose(decode_image(gray, LIMITS), 128 / 255, atol=2 / 255)  # gray -> 3 equal channels


@pytest.mark.parametrize("data, words", [
    (b"", "got an empty value"),
    (b"GIF89a broken", "cannot be decoded"),
    (encoded(np.zeros((8, 65, 3), np.uint8), "PNG"), "65 x 8 pixels, over the limit of 64"),
    (b"\x89PNG" + bytes(100_001), "bytes, over the limit of 100000"),
])
def test_bad_encoded_images(data, words):
    with pytest.raises(UserError, match=words):
        decode_image(data, LIMITS)


def test_float_image_checks_name_the_input():
    good = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(check_float_image(good, LIMITS), good)
    for bad, words in ((good * 255, r"image_float: .*\[0, 1\]"), (np.zeros((3, 0, 8), np.float32), "image_float"),
                       (np.zeros((3, 65, 8), np.float32), "over the limit of 64")):
        with pytest.raises(UserError, match=words):
            check_float_image(bad, LIMITS)
    nan = good.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(UserError, match="image_float"):
        check_float_image(nan, LIMITS)


def test_names_embeddings_and_prior():
    assert check_names(np.array([b" cat ", "dog".encode()], dtype=np.object_), LIMITS) == ["cat", "dog"]
    for values, words in ((np.zeros(0, dtype=np.object_), "1 to 5 class names, got 0"),
                          (np.array([b"a"] * 6, dtype=np.object_), "got 6"),
                          (np.array([b"a", b""], dtype=np.object_), r"class_names\[1\] is empty"),
                          (np.array([b"\xff"], dtype=np.object_), "not UTF-8")):
        with pytest.raises(UserError, match=words):
            check_names(values, LIMITS)
    text = np.ones((2, 4), np.float32)
    assert check_embeddings(text, 4, LIMITS) is text
    for values, words in ((np.ones((2, 3), np.float32), r"\[K, 4\]"), (np.ones((6, 4), np.float32), "6 classes"),
                          (np.full((2, 4), np.inf, np.float32), "finite")):
        with pytest.raises(UserError, match=f"text_embeddings.*{words}"):
            check_embeddings(values, 4, LIMITS)
    np.testing.assert_array_equal(check_prior(None, 3), np.ones(3, np.float32))
    for values in (np.ones(2, np.float32), np.array([1, -1, 1], np.float32), np.array([1, np.nan, 1], np.float32)):
        with pytest.raises(UserError, match="class_prior"):
            check_prior(values, 3)
