"""Every registered architecture, taken from the registry itself: it builds, answers a batch of
28x28 digits with 10 finite logits each, learns from one optimizer step, survives a save and a
`weights_only` load, and is served by the API with the answer its weights give."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from attrs import frozen
from torch import nn

from conftest import Serve
from handwriting_ai.api.schemas import ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.data.synthetic import render_digits
from handwriting_ai.models import create_model, list_models
from handwriting_ai.preprocessing import decode_image, preprocess_gray
from handwriting_ai.preprocessing.decode import limits_of
from handwriting_ai.training.loop import normalise
from helpers import json_of, make_settings, png_bytes, post_read, seven, state_of, write_artifact

ARCHS = list_models()
BATCH = 4


def test_the_documented_architectures_are_registered() -> None:
    assert {"digitnet", "digitnet_wide", "digitnet_deep", "digitnet_tiny", "resnet18"} <= set(ARCHS)


def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch: rendered digits as the models take them, (N, 1, 28, 28), and labels."""
    images, labels = render_digits(BATCH, seed=0)
    x = normalise(torch.from_numpy(images).float().div(255.0).unsqueeze(1))
    return x, torch.from_numpy(labels.astype("int64"))


def loss_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(123)  # the same dropout mask before and after the step
    return F.cross_entropy(model(x), y)


@frozen
class Stepped:
    """One architecture after one SGD step on the fixed batch."""

    arch: str
    model: nn.Module
    params_before: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float


@pytest.fixture(scope="module", params=ARCHS)
def stepped(request: pytest.FixtureRequest) -> Stepped:
    arch = str(request.param)
    torch.manual_seed(0)
    model = create_model(arch).train()
    x, y = digits_batch()
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = loss_on(model, x, y)
    optimizer.zero_grad()
    torch.autograd.backward(loss)
    optimizer.step()
    with torch.no_grad():
        after = loss_on(model, x, y)
    return Stepped(arch, model.eval(), before, float(loss.detach()), float(after))


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_and_gives_ten_finite_logits(arch: str) -> None:
    model = create_model(arch).eval()
    x, _ = digits_batch()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (BATCH, 10)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1]), "the answer does not depend on the input"


def test_one_step_changes_every_weight_and_lowers_the_loss(stepped: Stepped) -> None:
    model, before = stepped.model, stepped.params_before
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert unchanged == [], f"{stepped.arch}: parameters the step did not change: {unchanged}"
    assert stepped.loss_after < stepped.loss_before, stepped


def test_weights_round_trip_through_a_weights_only_load(stepped: Stepped) -> None:
    model = stepped.model  # its BatchNorm statistics moved off their defaults too
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, map_location="cpu", weights_only=True)
    torch.manual_seed(99)  # a fresh module starts elsewhere
    fresh = create_model(stepped.arch)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    x, _ = digits_batch()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_the_api_serves_it_with_the_answer_of_its_weights(
    stepped: Stepped, serve: Serve, model_dir: Path
) -> None:
    arch, model = stepped.arch, stepped.model
    model_id = f"mnist_{arch}_v1"
    write_artifact(model_dir, model_id, arch=arch, state=state_of(model))
    settings = make_settings(model_dir, [model_id])
    client = serve(settings)
    image = png_bytes(seven())
    response = post_read(client, image)
    assert response.status_code == 200, response.text
    reading = structure(json_of(response), ReadResponse)
    assert reading.model_id == model_id

    gray = decode_image(image, limits_of(settings.digits), "image/png")
    x = torch.from_numpy(preprocess_gray(gray).tensor).reshape(1, 1, 28, 28)
    with torch.no_grad():
        want = torch.softmax(model(x), dim=-1)[0].tolist()
    assert reading.probs == pytest.approx(want, abs=1e-4)
