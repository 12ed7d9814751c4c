"""Phone photos through `POST /v1/read` with the default settings and the shipped ensemble.

A chat user photographs a digit: a 12 MP JPEG (4032x3024, a few MB), sometimes stored sideways
with an EXIF orientation; a chat app may pass on a 1280 px copy; a screenshot tool a big PNG.
All of them are read. Decompression bombs are still refused from the header, before a pixel is
decoded, and shapes no camera makes are `bad_dimensions`. Big JPEGs are decoded small by libjpeg
(DCT scaling), other big images reduced after decoding, never below 1000 px on the long side;
images up to 1999 px decode exactly as before.

The photos come from `ops/make_realistic_set.py`'s `phone_photo`, drawn from MNIST test digits
(`../shared/data/mnist`, beside the checkout) or, where those files are absent, from the
synthetic MNIST look-alike the other tests train on.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
from litestar.testing import TestClient
from PIL import Image, ImageFile

from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.preprocessing import decode_image
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.settings import DigitsSettings, load_settings
from helpers import (
    U8,
    Client,
    assert_error,
    json_of,
    load_script,
    png_bytes,
    png_claiming,
    post_read,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ops" / "make_realistic_set.py"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"
SEED = 20251201
# Test-set positions: four different digits upright, two more stored sideways (with MNIST:
# 7, 2, 0, 4 and 9, 6; with the look-alike: 4, 9, 2, 3 and 1, 2).
UPRIGHT = (0, 1, 3, 4)
SIDEWAYS = ((7, 1), (11, 3))  # (position, quarter turns)
LIMITS = limits_of(DigitsSettings())
PHONE = (4032, 3024)


@pytest.fixture(scope="module")
def realistic() -> ModuleType:
    return load_script(SCRIPT, "make_realistic_set")


@pytest.fixture(scope="module")
def digits(realistic: ModuleType) -> tuple[U8, U8]:
    """(images, labels): MNIST's test set when it is beside the checkout, else the look-alike."""
    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        images, labels = realistic.load_mnist_test(MNIST_DIR)
        return images, labels
    return render_digits(20, 0)


def phone_photo(
    realistic: ModuleType, digits: tuple[U8, U8], position: int, **kwargs: int
) -> tuple[int, bytes]:
    images, labels = digits
    rng = np.random.default_rng([SEED, position])
    data: bytes = realistic.phone_photo(images[position], rng, **kwargs)
    return int(labels[position]), data


@pytest.fixture(scope="module")
def photos(realistic: ModuleType, digits: tuple[U8, U8]) -> list[tuple[int, bytes]]:
    """(label, 12 MP JPEG) for each upright position."""
    return [phone_photo(realistic, digits, i) for i in UPRIGHT]


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The default settings (the shipped ensemble, the default limits), one app for the module."""
    model_dir = tmp_path_factory.mktemp("phone") / "models"
    settings = load_settings({"DIGITS__MODEL_DIR": str(model_dir), "APP__THREADS": "2"})
    assert limits_of(settings.digits) == LIMITS
    with TestClient(create_app(settings)) as client:
        yield client


def read_jpeg(client: Client, data: bytes, name: str = "photo.jpg") -> ReadResponse:
    response = post_read(client, data, filename=name, content_type="image/jpeg")
    assert response.status_code == 200, response.text
    return structure(json_of(response), ReadResponse)


def luma(data: bytes) -> U8:
    """What Pillow decodes without any help: the full-size image, as grey levels."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("RGB", "YCbCr"):
            image.draft("L", image.size)  # the luma plane itself, at full size
        pixels: U8 = np.asarray(image.convert("L"), dtype=np.uint8)
    return pixels


def area_halved(gray: U8, factor: int) -> U8:
    h, w = gray.shape
    size = (-(-w // factor), -(-h // factor))
    return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def mean_abs(a: U8, b: U8) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow decodes pixels of, in this process (executor threads too)."""
    seen: list[tuple[int, int]] = []
    file_load = ImageFile.ImageFile.load
    plain_load = Image.Image.load

    def spy_file(self: ImageFile.ImageFile) -> object:
        seen.append(self.size)
        return file_load(self)

    def spy_plain(self: Image.Image) -> object:
        seen.append(self.size)
        return plain_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_file)
    monkeypatch.setattr(Image.Image, "load", spy_plain)
    return seen


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims `width` x `height`."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, format="JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --------------------------------------------------------------------------- (a)-(c) reads


def test_twelve_megapixel_photos_are_read_with_the_default_settings(
    real_client: Client, photos: list[tuple[int, bytes]]
) -> None:
    assert len({label for label, _ in photos}) == len(photos), "several different digits"
    for label, data in photos:
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == PHONE
        reading = read_jpeg(real_client, data)
        assert reading.digit == label, reading
        assert reading.confidence > 0.7, reading


@pytest.mark.parametrize(("position", "turns"), SIDEWAYS)
def test_photos_stored_sideways_are_turned_upright(
    real_client: Client,
    realistic: ModuleType,
    digits: tuple[U8, U8],
    position: int,
    turns: int,
) -> None:
    label, sideways = phone_photo(realistic, digits, position, quarter_turns=turns)
    with Image.open(io.BytesIO(sideways)) as image:
        assert image.size == PHONE[::-1]  # stored portrait, shown landscape
        assert image.getexif()[0x0112] == {1: 6, 3: 8}[turns]
    # Decoded small, then turned back: the stored pixels, quartered and turned upright.
    turned = decode_image(sideways, LIMITS)
    assert turned.shape == (PHONE[1] // 4, PHONE[0] // 4)
    stored = area_halved(luma(sideways), 4)
    assert mean_abs(turned, np.rot90(stored, -turns)) < 2.0
    assert mean_abs(turned, np.rot90(stored, 2 - turns)) > 2 * mean_abs(
        turned, np.rot90(stored, -turns)
    )  # the other way round is clearly wrong: the check can tell
    reading = read_jpeg(real_client, sideways)
    assert reading.digit == label, reading
    assert reading.confidence > 0.7, reading


def test_a_chat_apps_1280_px_copy_is_read(
    real_client: Client, photos: list[tuple[int, bytes]]
) -> None:
    label, data = photos[0]
    with Image.open(io.BytesIO(data)) as image:
        small = image.resize((1280, 960), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    reading = read_jpeg(real_client, buf.getvalue(), "chat.jpg")
    assert reading.digit == label, reading


def test_a_big_png_is_read(
    real_client: Client, realistic: ModuleType, digits: tuple[U8, U8]
) -> None:
    label, jpeg = phone_photo(realistic, digits, UPRIGHT[2], width=3000, height=2000)
    buf = io.BytesIO()
    with Image.open(io.BytesIO(jpeg)) as image:
        image.save(buf, format="PNG", compress_level=1)
    response = post_read(real_client, buf.getvalue(), filename="big.png")
    assert response.status_code == 200, response.text
    reading = structure(json_of(response), ReadResponse)
    assert reading.digit == label, reading


def test_a_panorama_is_not_an_absurd_shape(realistic: ModuleType, digits: tuple[U8, U8]) -> None:
    _, data = phone_photo(realistic, digits, UPRIGHT[0], width=4000, height=500)  # 8:1
    # Passes the limits and is decoded at a quarter (4000 // 8 would be under 1000 px).
    assert decode_image(data, LIMITS).shape == (125, 1000)


# --------------------------------------------------------------------------- (d)-(e) refusals


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_a_decompression_bomb_is_refused_before_any_pixel_is_decoded(
    real_client: Client, loads: list[tuple[int, int]], kind: str
) -> None:
    # 72 MP: over the 64 MP limit, under Pillow's own bomb threshold (89 MP), so the refusal
    # is ours; a few hundred bytes on the wire.
    bomb = png_claiming(9000, 8000) if kind == "png" else jpeg_claiming(9000, 8000)
    assert len(bomb) < 2_000
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (9000, 8000)
    blank = png_bytes(np.full((64, 64), 255, dtype=np.uint8))
    loads.clear()  # making the test's own images loaded some
    response = post_read(real_client, bomb, content_type=f"image/{kind}")
    body = assert_error(response, 413, "too_large")
    assert body.message.startswith("Image has 72000000 pixels (limit 64000000)")
    assert loads == [], "pixels were decoded before the refusal"
    # The spy sees what the service decodes, in its executor thread: a real image is.
    assert_error(post_read(real_client, blank), 400, "preprocessing_failed")
    assert loads
    assert set(loads) == {(64, 64)}


@pytest.mark.parametrize(
    ("width", "height", "why"),
    [
        (5000, 50, "the long side may be at most 20 times the short side"),
        (50, 5000, "the long side may be at most 20 times the short side"),
        (20000, 10, "each side must be at most 16384 px"),
    ],
)
def test_an_absurd_shape_is_bad_dimensions(
    real_client: Client, loads: list[tuple[int, int]], width: int, height: int, why: str
) -> None:
    data = png_bytes(np.full((height, width), 255, dtype=np.uint8))
    loads.clear()
    body = assert_error(post_read(real_client, data), 400, "bad_dimensions")
    assert body.message == f"Image is {width}x{height}; {why}."
    assert loads == [], "refused from the header"


# --------------------------------------------------------------------------- (f) decoding


def test_libjpeg_decodes_a_phone_photo_small_itself(
    photos: list[tuple[int, bytes]], loads: list[tuple[int, int]]
) -> None:
    """Not decoded at full size and shrunk afterwards (the same picture, four times the work)."""
    _, data = photos[0]
    loads.clear()
    decode_image(data, LIMITS)
    assert loads
    assert max(max(size) for size in loads) == PHONE[0] // 4, loads


def test_a_phone_photo_is_decoded_at_reduced_size(photos: list[tuple[int, bytes]]) -> None:
    _, data = photos[0]
    gray = decode_image(data, LIMITS)
    assert 1000 <= max(gray.shape) < PHONE[0]
    # libjpeg's DCT scaling by 1/4 (1/8 would be 504 px, under the 1000 px floor).
    assert gray.shape == (PHONE[1] // 4, PHONE[0] // 4)
    assert mean_abs(gray, area_halved(luma(data), 4)) < 2.0


@pytest.mark.parametrize(("width", "height"), [(1000, 750), (1999, 1100), (1100, 1999)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_images_up_to_1999_px_decode_at_full_size(width: int, height: int, mode: str) -> None:
    page = np.full((height, width, 3), (225, 220, 205), dtype=np.uint8)
    cv2.line(page, (width // 3, height // 4), (width // 2, 3 * height // 4), (30, 30, 60), 9)
    buf = io.BytesIO()
    Image.fromarray(page).convert(mode).save(buf, format="JPEG", quality=90)
    gray = decode_image(buf.getvalue(), LIMITS)
    assert gray.shape == (height, width)
    assert np.array_equal(gray, luma(buf.getvalue()))


def test_from_2000_px_a_jpeg_is_decoded_at_half_size() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1100), (230, 230, 230)).save(buf, format="JPEG")
    assert decode_image(buf.getvalue(), LIMITS).shape == (550, 1000)


def test_a_big_png_is_reduced_by_a_whole_factor() -> None:
    rng = np.random.default_rng(SEED)
    gray = rng.integers(150, 256, (2400, 3000), dtype=np.uint8)
    out = decode_image(png_bytes(gray), LIMITS)
    assert out.shape == (800, 1000)  # 3000 // 1000 = 3: the long side stays >= 1000
    assert mean_abs(out, area_halved(gray, 3)) < 1.0
