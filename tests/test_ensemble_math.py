"""Ensemble averaging and temperature scaling: the server's answer equals the maths done here.

The expected probabilities are computed in the test from fresh copies of the same weights, on the
same preprocessed input, with `torch.softmax` directly (not through `inference.calibration`).
Test-time augmentation is checked in `test_tta.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from conftest import Serve
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.calibration import calibrated_probs, ensemble_probs
from handwriting_ai.preprocessing import decode_image, preprocess_gray
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.settings import Settings
from helpers import (
    Artifact,
    Client,
    json_of,
    make_settings,
    png_bytes,
    post_read,
    seven,
    write_artifact,
)

IMAGE = png_bytes(seven())


def model_input(settings: Settings, data: bytes) -> torch.Tensor:
    gray = decode_image(data, limits_of(settings.digits), "image/png")
    return torch.from_numpy(preprocess_gray(gray).tensor).reshape(1, 1, 28, 28)


def expected_probs(
    members: Sequence[Artifact], temperatures: Sequence[float], views: torch.Tensor
) -> list[float]:
    """mean over members of (mean over views of softmax(logits / T_member))."""
    per_member = []
    with torch.no_grad():
        for artifact, t in zip(members, temperatures, strict=True):
            logits = artifact.module()(views)
            per_member.append(torch.softmax(logits / t, dim=-1).mean(dim=0))
    return [float(p) for p in torch.stack(per_member).mean(dim=0)]


def read(client: Client) -> ReadResponse:
    response = post_read(client, IMAGE)
    assert response.status_code == 200, response.text
    return structure(json_of(response), ReadResponse)


def assert_probs(got: Sequence[float], want: Sequence[float]) -> None:
    assert len(got) == 10
    assert sum(got) == pytest.approx(1.0, abs=1e-5)
    assert got == pytest.approx(want, abs=2e-6)  # the service rounds to 6 decimals


@pytest.fixture
def pair(model_dir: Path) -> tuple[Artifact, Artifact]:
    a = write_artifact(model_dir, "tiny_a", seed=11, prefer=7, temperature=0.5)
    b = write_artifact(model_dir, "tiny_b", seed=12, prefer=1, temperature=2.0)
    return a, b


def start(serve: Serve, model_dir: Path, ids: Sequence[str], **env: str) -> tuple[Client, Settings]:
    settings = make_settings(model_dir, ids, env)
    return serve(settings), settings


# --------------------------------------------------------------------------- pure maths


def test_ensemble_probs_is_the_mean_of_calibrated_softmax() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(1, 10) * 3, torch.randn(1, 10) * 3
    got = ensemble_probs([a, b], [0.5, 2.0])
    want = (torch.softmax(a / 0.5, dim=-1) + torch.softmax(b / 2.0, dim=-1))[0] / 2
    torch.testing.assert_close(got, want)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_views_are_averaged_per_member() -> None:
    torch.manual_seed(1)
    views = torch.randn(9, 10)
    torch.testing.assert_close(
        ensemble_probs([views], [1.5]), torch.softmax(views / 1.5, dim=-1).mean(dim=0)
    )


def test_temperature_softens() -> None:
    logits = torch.tensor([[4.0, 1.0, 0.0]])
    cold, hot = calibrated_probs(logits, 0.5), calibrated_probs(logits, 4.0)
    assert float(cold.max()) > float(calibrated_probs(logits, 1.0).max()) > float(hot.max())


def test_one_temperature_per_member() -> None:
    with pytest.raises(ValueError, match="one temperature per member"):
        ensemble_probs([torch.zeros(1, 10)], [1.0, 2.0])
    with pytest.raises(ValueError, match="one temperature per member"):
        ensemble_probs([], [])


# --------------------------------------------------------------------------- through HTTP


def test_two_members_average_their_calibrated_probs(
    serve: Serve, model_dir: Path, pair: tuple[Artifact, Artifact]
) -> None:
    client, settings = start(serve, model_dir, ["tiny_a", "tiny_b"])
    reading = read(client)
    x = model_input(settings, IMAGE)
    want = expected_probs(pair, [0.5, 2.0], x)
    assert reading.model_id == "ensemble_2_models"
    assert_probs(reading.probs, want)
    assert reading.digit == max(range(10), key=lambda i: want[i])
    assert reading.confidence == reading.probs[reading.digit]
    # The temperatures matter: plain averaging would give a measurably different answer.
    plain = expected_probs(pair, [1.0, 1.0], x)
    assert max(abs(p - q) for p, q in zip(plain, want, strict=True)) > 1e-3


def test_single_member_keeps_its_model_id(
    serve: Serve, model_dir: Path, pair: tuple[Artifact, Artifact]
) -> None:
    client, settings = start(serve, model_dir, ["tiny_b"])
    reading = read(client)
    assert reading.model_id == "tiny_b"
    assert_probs(reading.probs, expected_probs([pair[1]], [2.0], model_input(settings, IMAGE)))


def test_temperature_override_replaces_every_member_temperature(
    serve: Serve, model_dir: Path, pair: tuple[Artifact, Artifact]
) -> None:
    client, settings = start(
        serve, model_dir, ["tiny_a", "tiny_b"], DIGITS__ENSEMBLE_TEMPERATURE_OVERRIDE="3.0"
    )
    reading = read(client)
    x = model_input(settings, IMAGE)
    assert_probs(reading.probs, expected_probs(pair, [3.0, 3.0], x))
    own = expected_probs(pair, [0.5, 2.0], x)
    assert max(abs(p - q) for p, q in zip(reading.probs, own, strict=True)) > 1e-3


def test_missing_member_is_skipped(
    serve: Serve, model_dir: Path, pair: tuple[Artifact, Artifact]
) -> None:
    client, _ = start(serve, model_dir, ["tiny_a", "not_there"])
    assert read(client).model_id == "tiny_a"
