"""Untrusted upload bytes to a grayscale array: format by content, limits, EXIF, alpha on white."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from attrs import frozen
from PIL import Image, ImageOps, UnidentifiedImageError

from handwriting_ai.errors import (
    BadDimensionsError,
    InvalidImageError,
    TooLargeError,
    UnsupportedMediaTypeError,
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
ACCEPTED_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/pjpeg"})


@frozen
class ImageLimits:
    max_bytes: int
    max_side_px: int
    max_pixels: int


# Formats we recognise but do not accept: refused as 415 whatever the client declares.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
)


def sniff_format(data: bytes) -> str | None:
    """The accepted format the bytes are in (`PNG`, `JPEG`), or None."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def sniff_other(data: bytes) -> str | None:
    """A recognised image format that is not accepted (GIF, BMP, WebP, HEIC, ...), or None."""
    for magic, name in _OTHER_MAGIC:
        if data.startswith(magic):
            return name
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # reserved bytes are zero
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def check_media_type(data: bytes, content_type: str | None) -> str:
    """Judge by content; the client's header only decides between 415 and 400 for garbage."""
    fmt = sniff_format(data)
    if fmt is not None:
        return fmt
    other = sniff_other(data)
    if other is not None:
        raise UnsupportedMediaTypeError(
            f"Only PNG and JPEG images are accepted (the content is {other})."
        )
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in ACCEPTED_CONTENT_TYPES:
        raise InvalidImageError(
            f"Failed to decode image: content is not a valid {declared.split('/')[1].upper()}."
        )
    raise UnsupportedMediaTypeError(
        f"Only PNG and JPEG images are accepted (got {declared or 'unknown content'})."
    )


def decode_image(
    data: bytes, limits: ImageLimits, content_type: str | None = None
) -> npt.NDArray[np.uint8]:
    """Return the upright image as uint8 grayscale, transparent areas composited onto white."""
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"File exceeds {limits.max_bytes / (1024 * 1024):.3g} MB limit.")
    fmt = check_media_type(data, content_type)
    try:
        # Our own pixel limit runs before `load()` and sits far below Pillow's bomb limit.
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width * height > limits.max_pixels:
            raise TooLargeError(
                f"Image has {width * height} pixels (limit {limits.max_pixels}): "
                "refused as a possible decompression bomb."
            )
        if max(width, height) > limits.max_side_px:
            raise BadDimensionsError(
                f"Image is {width}x{height}; each side must be at most {limits.max_side_px} px."
            )
        if fmt == "JPEG" and image.mode in ("RGB", "YCbCr"):
            # Let libjpeg hand over the luma plane: no chroma upsampling, no colour conversion
            # (half the decode time of a phone photo; the same grey levels within rounding).
            image.draft("L", image.size)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of upright images
        if min(image.size) < 1:
            raise BadDimensionsError("Image has an empty dimension.")
        return to_gray(image)
    except Image.DecompressionBombError as exc:
        raise TooLargeError(f"Image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"Failed to decode image: {exc}") from None


def to_gray(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Composite alpha onto white; when that leaves no contrast, the alpha itself is the drawing."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr32 = np.asarray(image, dtype=np.float64)
        top = float(arr32.max()) or 1.0
        return np.clip(arr32 / top * 255.0, 0, 255).astype(np.uint8)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(rgba.convert("L"), dtype=np.float32)
    composed = gray * alpha + 255.0 * (1.0 - alpha)
    # White strokes on a transparent canvas vanish on white: read the alpha as ink instead.
    if float(np.ptp(composed)) < 32.0 and float(np.ptp(alpha)) > 0.5:
        composed = 255.0 * (1.0 - alpha)
    return np.asarray(np.clip(composed, 0, 255), dtype=np.uint8)
