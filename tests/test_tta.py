"""Test-time augmentation checked against a second, plain implementation.

The README promises that `DIGITS__TTA_PROFILE=strong` averages 9 views: the input itself, a
one-pixel shift each way, rotations of +8 and -8 degrees and scales of 0.9 and 1.1 (both about
the centre of the 28x28 grid), with the area a view uncovers filled with the background. The
views are rebuilt here in float64 numpy (an inverse-mapped bilinear sampler, nothing from the
service), compared with the service's batch as a set, and a strong read over HTTP must equal the
ensemble mean over these views computed with the test's own copy of each model.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import Serve
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.tta import tta_batch, view_count
from handwriting_ai.models import registry
from helpers import (
    Artifact,
    json_of,
    make_settings,
    paper,
    png_bytes,
    post_read,
    state_of,
    write_artifact,
)

F64 = npt.NDArray[np.float64]
MEAN, STD = 0.1307, 0.3081  # MNIST normalisation (README: "MNIST normalisation")
BACKGROUND = (0.0 - MEAN) / STD  # what an empty (black) pixel becomes
SIDE = 28
CENTRE = (SIDE - 1) / 2  # pixel centres at 0..27


# --------------------------------------------------------------------------- the plain views


def shift(dx: float, dy: float) -> F64:
    """Forward map (content point -> view point), pixel coordinates, as a 3x3 matrix."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def about_centre(deg: float, scale: float) -> F64:
    rad = math.radians(deg)
    c, s = math.cos(rad) * scale, math.sin(rad) * scale
    linear = np.array([[c, -s], [s, c]])
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = np.array([CENTRE, CENTRE]) - linear @ np.array([CENTRE, CENTRE])
    return out


EXPECTED_VIEWS: dict[str, F64] = {
    "identity": shift(0, 0),
    "right": shift(1, 0),
    "left": shift(-1, 0),
    "down": shift(0, 1),
    "up": shift(0, -1),
    "rotate+8": about_centre(8, 1.0),
    "rotate-8": about_centre(-8, 1.0),
    "scale0.9": about_centre(0, 0.9),
    "scale1.1": about_centre(0, 1.1),
}


def warp(image: F64, forward: F64, background: float) -> F64:
    """Each view pixel takes the bilinear value at its preimage; outside the grid: background."""
    inverse = np.linalg.inv(forward)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    fx, fy = sx - x0, sy - y0

    def at(x: npt.NDArray[np.int_], y: npt.NDArray[np.int_]) -> F64:
        inside = (x >= 0) & (x < SIDE) & (y >= 0) & (y < SIDE)
        values = image[np.clip(y, 0, SIDE - 1), np.clip(x, 0, SIDE - 1)]
        return np.where(inside, values, background)

    out: F64 = (
        at(x0, y0) * (1 - fx) * (1 - fy)
        + at(x0 + 1, y0) * fx * (1 - fy)
        + at(x0, y0 + 1) * (1 - fx) * fy
        + at(x0 + 1, y0 + 1) * fx * fy
    )
    return out


def plain_views(image: F64, background: float = BACKGROUND) -> dict[str, F64]:
    return {name: warp(image, m, background) for name, m in EXPECTED_VIEWS.items()}


def match_views(got: torch.Tensor, want: dict[str, F64], atol: float) -> None:
    """`got` holds exactly the expected views, in any order."""
    assert tuple(got.shape) == (len(want), 1, SIDE, SIDE)
    remaining = [v[0].double().numpy() for v in got]
    for name, view in want.items():
        errors = [float(np.abs(r - view).max()) for r in remaining]
        best = int(np.argmin(errors))
        assert errors[best] < atol, (
            f"no service view matches {name} (closest off by {errors[best]})"
        )
        remaining.pop(best)


def test_plain_views_are_sane() -> None:
    """The second implementation itself: shifts move content, the identity keeps it."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(SIDE, SIDE))
    views = plain_views(image)
    np.testing.assert_allclose(views["identity"], image, atol=1e-12)
    np.testing.assert_allclose(views["right"][:, 1:], image[:, :-1], atol=1e-12)
    np.testing.assert_allclose(views["right"][:, 0], BACKGROUND, atol=1e-12)
    np.testing.assert_allclose(views["up"][:-1], image[1:], atol=1e-12)
    # A quarter turn of the plain rotation is the exact array rotation: the centre is right.
    np.testing.assert_allclose(
        warp(image, about_centre(90, 1.0), 0.0), np.rot90(image, -1), atol=1e-9
    )


def test_strong_views_match_the_plain_implementation() -> None:
    rng = np.random.default_rng(1)
    # Random values reach every border: uncovered areas must be the background, nothing else.
    image = rng.normal(size=(SIDE, SIDE)) * 1.5 + 0.5
    x = torch.from_numpy(image.astype(np.float32)).reshape(1, 1, SIDE, SIDE)
    got = tta_batch(x, "strong", background=BACKGROUND)
    assert view_count("strong") == 9
    match_views(got, plain_views(image.astype(np.float32).astype(np.float64)), atol=1e-4)


def test_empty_input_stays_background() -> None:
    x = torch.full((1, 1, SIDE, SIDE), BACKGROUND)
    got = tta_batch(x, "strong", background=BACKGROUND)
    torch.testing.assert_close(got, torch.full_like(got, BACKGROUND), atol=1e-5, rtol=0)


def test_profile_none_is_the_input() -> None:
    x = torch.zeros(1, 1, SIDE, SIDE)
    assert tta_batch(x, "none", background=BACKGROUND) is x
    assert view_count("none") == 1


# --------------------------------------------------------------------------- through HTTP


LINEAR_ARCH = "test_linear_net"


def linear_net() -> nn.Module:
    """Logits straight from the pixels: every view moves them (a CNN with global pooling, like
    the tiny test models, hardly notices a one-pixel shift)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 10))


@pytest.fixture
def linear_members(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> list[Artifact]:
    """Two members of a test-only architecture, registered for this test only."""
    monkeypatch.setitem(registry._REGISTRY, LINEAR_ARCH, linear_net)
    torch.manual_seed(3)
    return [
        write_artifact(
            model_dir, f"linear_{i}", arch=LINEAR_ARCH, state=state_of(linear_net()), temperature=t
        )
        for i, t in enumerate((1.0, 0.5))
    ]


def digit_page() -> npt.NDArray[np.uint8]:
    """An asymmetric mark ('4'-like) so that every view really differs from the others."""
    page = paper(160)
    cv2.line(page, (60, 30), (40, 100), 20, 10, cv2.LINE_AA)
    cv2.line(page, (40, 100), (115, 100), 20, 10, cv2.LINE_AA)
    cv2.line(page, (95, 40), (95, 135), 20, 10, cv2.LINE_AA)
    return page


def model_input_of(reading: ReadResponse) -> F64:
    """The visual is the 28x28 the model saw; normalised the MNIST way it is the input."""
    assert reading.visual_png_b64 is not None
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(reading.visual_png_b64))))
    tensor = ((pixels.astype(np.float32) / 255.0) - np.float32(MEAN)) / np.float32(STD)
    return tensor.astype(np.float64)


def ensemble_mean(members: Sequence[Artifact], views: Sequence[F64]) -> list[float]:
    """mean over members of (mean over views of softmax(logits / T)), the test's own models."""
    batch = torch.from_numpy(np.stack(views).astype(np.float32)).reshape(-1, 1, SIDE, SIDE)
    per_member = []
    with torch.no_grad():
        for artifact in members:
            logits = artifact.module()(batch).double()
            per_member.append(torch.softmax(logits / artifact.temperature, dim=-1).mean(dim=0))
    return [float(p) for p in torch.stack(per_member).mean(dim=0)]


def read(serve: Serve, model_dir: Path, ids: Sequence[str], profile: str) -> ReadResponse:
    client = serve(make_settings(model_dir, ids, {"DIGITS__TTA_PROFILE": profile}))
    response = post_read(client, png_bytes(digit_page()), fields={"visualize": "true"})
    assert response.status_code == 200, response.text
    return structure(json_of(response), ReadResponse)


def test_strong_read_is_the_ensemble_mean_over_the_plain_views(
    serve: Serve, model_dir: Path, linear_members: list[Artifact]
) -> None:
    members = linear_members
    ids = [m.model_id for m in members]
    strong = read(serve, model_dir, ids, "strong")
    plain = read(serve, model_dir, ids, "none")
    x = model_input_of(strong)
    assert np.array_equal(x, model_input_of(plain))

    want = ensemble_mean(members, list(plain_views(x).values()))
    assert sum(strong.probs) == pytest.approx(1.0, abs=1e-5)
    assert strong.probs == pytest.approx(want, abs=1e-5)
    assert strong.digit == int(np.argmax(want))
    # The views matter: without them the answer is the single-view mean, measurably different.
    single = ensemble_mean(members, [x])
    assert plain.probs == pytest.approx(single, abs=1e-5)
    assert max(abs(p - q) for p, q in zip(strong.probs, single, strict=True)) > 1e-3
