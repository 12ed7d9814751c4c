"""`POST /v1/read` through real HTTP: answers, every error code, limits, auth, request ids, fuzz."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from conftest import Serve
from handwriting_ai.api import read as read_api
from handwriting_ai.api.schemas import ErrorBody, ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.read import Reading, read_digit
from helpers import (
    Artifact,
    Client,
    assert_error,
    encoded,
    jpeg_bytes,
    json_of,
    make_settings,
    paper,
    png_bytes,
    png_claiming,
    post_read,
    read_ok,
    seven,
    visual_pixels,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- answers


def test_reads_a_png_and_answers_the_full_body(client: Client) -> None:
    reading = read_ok(client, png_bytes(seven()))
    assert reading.digit == 7
    assert reading.model_id == "tiny_seven"
    assert len(reading.probs) == 10
    assert sum(reading.probs) == pytest.approx(1.0, abs=1e-5)
    assert reading.confidence == max(reading.probs) == reading.probs[7]
    assert reading.uncertain is (reading.confidence < 0.80)
    assert reading.visual_png_b64 is None


def test_reads_a_jpeg_and_visualizes_the_model_input(client: Client) -> None:
    response = post_read(
        client,
        jpeg_bytes(seven()),
        filename="digit.jpg",
        content_type="image/jpeg",
        fields={"visualize": "true"},
    )
    assert response.status_code == 200, response.text
    pixels = visual_pixels(structure(json_of(response), ReadResponse))
    assert pixels.shape == (28, 28)
    assert pixels.max() == 255
    assert pixels[0].max() == 0  # MNIST-style: ink bright on black, a clear border


def test_exif_rotated_jpeg_is_read_upright(client: Client) -> None:
    upright = seven()
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # pixels turned 90° counter-clockwise
    fields = {"visualize": "true"}
    expected = visual_pixels(read_ok(client, jpeg_bytes(upright), **fields)).astype(np.float32)
    tagged = visual_pixels(read_ok(client, jpeg_bytes(stored, orientation=6), **fields))
    untagged = visual_pixels(read_ok(client, jpeg_bytes(stored), **fields))
    # Orientation 6 means "rotate 90° clockwise to display": the service must apply it.
    assert np.abs(tagged.astype(np.float32) - expected).mean() < 2.0
    assert np.abs(untagged.astype(np.float32) - expected).mean() > 15.0


def test_flags_are_parsed_and_invert_is_respected(client: Client) -> None:
    white_on_black = 255 - seven()
    auto = visual_pixels(read_ok(client, png_bytes(white_on_black), visualize="1"))
    forced = visual_pixels(
        read_ok(client, png_bytes(white_on_black), visualize="yes", invert="true")
    )
    assert np.array_equal(auto, forced)
    # An empty flag means "not given"; what `center` does is checked in test_read_promises.py.
    assert read_ok(client, png_bytes(seven()), center="", invert="").digit == 7


def test_invalid_flag_value_is_invalid_request(client: Client) -> None:
    response = post_read(client, png_bytes(seven()), fields={"invert": "maybe"})
    body = assert_error(response, 400, "invalid_request")
    assert body.message == "Field 'invert' must be true or false, got 'maybe'."


# --------------------------------------------------------------------------- error codes


def test_png_magic_then_garbage_is_invalid_image(client: Client) -> None:
    data = b"\x89PNG\r\n\x1a\n" + b"this is not a png at all" * 4
    assert_error(post_read(client, data), 400, "invalid_image")


def test_truncated_jpeg_is_invalid_image(client: Client) -> None:
    data = jpeg_bytes(seven())
    response = post_read(client, data[: len(data) // 2], content_type="image/jpeg")
    body = assert_error(response, 400, "invalid_image")
    assert body.message.startswith("Failed to decode image")


def test_garbage_declared_as_png_is_invalid_image(client: Client) -> None:
    assert_error(post_read(client, b"hello, world"), 400, "invalid_image")


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_are_unsupported_even_when_declared_png(client: Client, fmt: str) -> None:
    data = encoded(seven(64), fmt)
    body = assert_error(
        post_read(client, data, content_type="image/png"), 415, "unsupported_media_type"
    )
    assert fmt in body.message


def test_text_declared_as_text_is_unsupported(client: Client) -> None:
    response = post_read(client, b"just some text\n", filename="a.txt", content_type="text/plain")
    body = assert_error(response, 415, "unsupported_media_type")
    assert body.message == "Only PNG and JPEG images are accepted (got text/plain)."


def test_too_wide_image_is_bad_dimensions(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    client = serve(
        make_settings(model_dir, [seven_model.model_id], {"DIGITS__MAX_IMAGE_SIDE_PX": "1024"})
    )
    wide = np.full((10, 1100), 255, dtype=np.uint8)
    body = assert_error(post_read(client, png_bytes(wide)), 400, "bad_dimensions")
    assert body.message == "Image is 1100x10; each side must be at most 1024 px."


def test_file_over_the_size_limit_is_too_large(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    client = serve(
        make_settings(model_dir, [seven_model.model_id], {"DIGITS__MAX_IMAGE_MB": "0.01"})
    )
    data = png_bytes(seven()) + bytes(20_000)  # a valid PNG start, 20 KB on the wire
    body = assert_error(post_read(client, data), 413, "too_large")
    assert body.message == "File exceeds 0.01 MB limit."


def test_body_over_the_request_limit_is_too_large(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    client = serve(
        make_settings(model_dir, [seven_model.model_id], {"DIGITS__MAX_IMAGE_MB": "0.01"})
    )
    body = assert_error(post_read(client, bytes(300_000)), 413, "too_large")
    assert body.message == "Request body exceeds the 0.01 MB upload limit."


def test_decompression_bomb_header_is_too_large(client: Client) -> None:
    data = png_claiming(12_000, 12_000)
    assert len(data) < 20_000
    assert_error(post_read(client, data), 413, "too_large")


def test_pixel_limit_is_checked_before_decoding(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    extra = {"DIGITS__MAX_IMAGE_SIDE_PX": "10000", "DIGITS__MAX_IMAGE_PIXELS": "1000000"}
    client = serve(make_settings(model_dir, [seven_model.model_id], extra))
    data = png_bytes(paper(3000, 255))  # 9 megapixels, a few KB on disk
    assert len(data) < 100_000
    body = assert_error(post_read(client, data), 413, "too_large")
    assert body.message.startswith("Image has 9000000 pixels (limit 1000000)")


@pytest.mark.parametrize("value", [255, 0], ids=["blank_white", "uniform_black"])
def test_image_without_a_digit_is_preprocessing_failed(client: Client, value: int) -> None:
    body = assert_error(
        post_read(client, png_bytes(paper(120, value))), 400, "preprocessing_failed"
    )
    assert body.message.startswith("No digit found")


def test_not_multipart_is_malformed_form(client: Client) -> None:
    response = client.post("/v1/read", json={"file": "seven.png"})
    body = assert_error(response, 422, "malformed_form")
    assert body.message == "Expected multipart/form-data with a 'file' part."


def test_missing_file_part_is_malformed_form(client: Client) -> None:
    response = client.post(
        "/v1/read",
        data={"invert": "true"},
        files={"image": ("a.png", png_bytes(seven()), "image/png")},
    )
    body = assert_error(response, 422, "malformed_form")
    assert body.message == "Missing the 'file' part (an image file)."


def test_file_sent_as_a_plain_field_is_malformed_form(client: Client) -> None:
    response = client.post("/v1/read", files={"file": (None, b"not a file")})
    assert_error(response, 422, "malformed_form")


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("multipart/form-data; boundary=XYZ", b"--ABC\r\nnot a part\r\n"),
        ("multipart/form-data; boundary=XYZ", b"--XYZ\r\nContent-Disposition: form-data; name="),
        ("multipart/form-data", b"--XYZ\r\n\r\n--XYZ--\r\n"),
    ],
    ids=["wrong_boundary", "cut_short", "boundary_missing"],
)
def test_broken_multipart_is_malformed_form(
    client: Client, content_type: str, payload: bytes
) -> None:
    response = client.post("/v1/read", content=payload, headers={"content-type": content_type})
    assert_error(response, 422, "malformed_form")


def test_timeout_is_504(
    serve: Serve, model_dir: Path, seven_model: Artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read that runs well past the limit. (A real read of a tiny model against a 1 us limit
    # raced: a read that finishes while the loop waits for the GIL is answered, by design.)
    def slow_read(data: bytes, **kwargs: object) -> Reading:
        time.sleep(0.5)
        return read_digit(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(read_api, "read_digit", slow_read)
    extra = {"DIGITS__PREDICT_TIMEOUT_SECONDS": "0.05"}
    client = serve(make_settings(model_dir, [seven_model.model_id], extra))
    body = assert_error(post_read(client, png_bytes(seven())), 504, "timeout")
    assert body.message == "Prediction did not finish within 0.05 s."


def test_no_model_is_not_ready(serve: Serve, model_dir: Path) -> None:
    client = serve(make_settings(model_dir, ["absent_model"]))
    body = assert_error(post_read(client, png_bytes(seven())), 503, "not_ready")
    assert body.message == "No model is loaded yet."


def test_wrong_method_and_unknown_path_keep_the_error_body(client: Client) -> None:
    assert_error(client.get("/v1/read"), 405, "method_not_allowed")
    assert_error(client.get("/v1/nothing"), 404, "not_found")


# --------------------------------------------------------------------------- API key


def test_api_key_guards_read_but_not_health(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    extra = {"SECURITY__API_KEY": "s3cret"}
    client = serve(make_settings(model_dir, [seven_model.model_id], extra))
    data = png_bytes(seven())
    missing = assert_error(post_read(client, data), 401, "unauthorized")
    assert missing.message == "Missing or wrong X-Api-Key."
    assert_error(post_read(client, data, headers={"X-Api-Key": "s3cret!"}), 401, "unauthorized")
    assert_error(client.get("/v1/models/active"), 401, "unauthorized")
    assert post_read(client, data, headers={"X-Api-Key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


# --------------------------------------------------------------------------- request ids


def test_request_id_is_echoed_in_header_and_error_body(client: Client) -> None:
    ok = post_read(client, png_bytes(seven()), headers={"X-Request-ID": "abc-123"})
    assert ok.headers["x-request-id"] == "abc-123"
    failed = post_read(client, b"nope", headers={"X-Request-ID": "req.42:retry-1"})
    body = assert_error(failed, 400, "invalid_image")
    assert body.request_id == "req.42:retry-1"


@pytest.mark.parametrize(
    "sent", [None, "has spaces in it", "x" * 300, 'quote"and;semicolon', ""], ids=repr
)
def test_missing_or_unsafe_request_id_is_replaced(client: Client, sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    body = assert_error(post_read(client, b"nope", headers=headers), 400, "invalid_image")
    assert HEX32.match(body.request_id)
    assert body.request_id != sent


def test_request_id_is_in_every_log_line_of_the_request(client: Client) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        post_read(client, png_bytes(seven()), headers={"X-Request-ID": "trace-7"})
        post_read(client, b"nope", headers={"X-Request-ID": "trace-8"})
    by_event = {(e["event"], e.get("request_id")) for e in logs}
    assert ("digit_read", "trace-7") in by_event
    assert ("http_request", "trace-7") in by_event
    assert ("request_refused", "trace-8") in by_event
    assert ("http_request", "trace-8") in by_event
    summary = [e for e in logs if e["event"] == "http_request" and e["request_id"] == "trace-8"]
    assert summary[0]["status"] == 400
    assert summary[0]["path"] == "/v1/read"


# --------------------------------------------------------------------------- no 500, ever


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "cut"])
    if kind == "flip":
        for _ in range(rng.randint(1, 24)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == "truncate":
        out = out[: rng.randrange(1, len(out))]
    elif kind == "insert":
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        start = rng.randrange(8, len(out))
        del out[start : rng.randrange(start, len(out) + 1)]
    return bytes(out)


def test_fuzzed_uploads_never_get_a_server_error(client: Client) -> None:
    rng = random.Random(20250101)
    small = seven(64)
    bases = [png_bytes(small), jpeg_bytes(small), jpeg_bytes(small, orientation=6)]
    statuses: set[int] = set()
    for i in range(60):
        if i % 4 == 0:
            prefix = rng.choice([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"])
            data = prefix + rng.randbytes(rng.randint(0, 400))
        else:
            data = _mutate(rng.choice(bases), rng)
        content_type = rng.choice(["image/png", "image/jpeg", "application/octet-stream"])
        response = post_read(client, data, content_type=content_type)
        statuses.add(response.status_code)
        assert response.status_code < 500, (i, response.text)
        if response.status_code != 200:
            code = structure(json_of(response), ErrorBody).code
            assert_error(response, response.status_code, code)
    assert {200, 400, 415} <= statuses, "the fuzz should reach answers and refusals alike"
