"""Test helpers: tiny model artifacts on disk, synthetic digit images, and HTTP shortcuts.

Everything here is real: models are `create_model(...)` state dicts saved with `torch.save`,
manifests are written with `manifest_json`, images are encoded by Pillow, requests go through
the ASGI app. Nothing is mocked.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import struct
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

import cv2
import httpx
import numpy as np
import numpy.typing as npt
import torch
from attrs import frozen
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image
from torch import nn

from handwriting_ai.api.schemas import ErrorBody, ReadResponse
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.manifest import SCHEMA_VERSION, Manifest, manifest_json
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    set_current,
    version_dir,
)
from handwriting_ai.models import create_model
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.settings import Settings, load_settings

U8 = npt.NDArray[np.uint8]
StateDict = dict[str, torch.Tensor]
ManifestEdit = Callable[[dict[str, object]], None]
Client = TestClient[Litestar]

TINY_ARCH = "digitnet_tiny"  # registered for tests: a few thousand parameters


# --------------------------------------------------------------------------- models on disk


def final_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    assert linears, "the architecture has no Linear layer"
    return linears[-1]


def tiny_module(*, seed: int, prefer: int | None = None, arch: str = TINY_ARCH) -> nn.Module:
    """A seeded, untrained model; `prefer` raises one class's bias so its answer is known."""
    torch.manual_seed(seed)
    module = create_model(arch)
    if prefer is not None:
        with torch.no_grad():
            final_linear(module).bias[prefer] += 3.0
    return module.eval()


def state_of(module: nn.Module) -> StateDict:
    return {
        k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)
    }


def module_from(state: StateDict, arch: str = TINY_ARCH) -> nn.Module:
    """A fresh module with these weights: the test's own copy, independent of the server's."""
    module = create_model(arch)
    module.load_state_dict(state, strict=True)
    return module.eval()


def make_manifest(
    model_id: str, *, version: str, arch: str, seed: int, temperature: float
) -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model_id=model_id,
        arch=arch,
        n_classes=10,
        version=version,
        created_at="2025-01-01T00:00:00+00:00",
        preprocess_hash=preprocess_hash(),
        val_acc=0.99,
        temperature=temperature,
        training_recipe={"epochs": 1, "augment": True, "lr": 0.001},
        training_seed=seed,
        training_epochs=1,
        test_acc=None,
        recipe_hash="0123456789abcdef",
        run_id=f"run-{model_id}-{version}",
        parent_model_id=None,
    )


@frozen
class Artifact:
    model_id: str
    version: str
    directory: Path
    arch: str
    state: StateDict
    temperature: float

    def module(self) -> nn.Module:
        return module_from(self.state, self.arch)


def write_artifact(
    model_dir: Path,
    model_id: str,
    *,
    seed: int = 0,
    prefer: int | None = None,
    temperature: float = 1.0,
    version: str = "20250101T000000Z",
    arch: str = TINY_ARCH,
    state: StateDict | None = None,
    edit: ManifestEdit | None = None,
) -> Artifact:
    """`<model_dir>/<model_id>/<version>/{model.pt,manifest.json,metrics.json}` plus `CURRENT`.

    `edit` changes the manifest's JSON object before it is written (to make it wrong on purpose).
    """
    weights = state if state is not None else state_of(tiny_module(seed=seed, prefer=prefer))
    directory = version_dir(model_dir, model_id, version)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(weights, directory / MODEL_FILE)
    manifest = make_manifest(
        model_id, version=version, arch=arch, seed=seed, temperature=temperature
    )
    text = manifest_json(manifest)
    if edit is not None:
        raw: object = json.loads(text)
        assert isinstance(raw, dict)
        data: dict[str, object] = {str(k): v for k, v in raw.items()}
        edit(data)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    (directory / MANIFEST_FILE).write_text(text)
    (directory / METRICS_FILE).write_text(json.dumps({"val_acc": 0.99}) + "\n")
    set_current(model_dir, model_id, version)
    return Artifact(model_id, version, directory, arch, weights, temperature)


def make_settings(
    model_dir: Path, active: Sequence[str], extra: Mapping[str, str] | None = None
) -> Settings:
    env = {
        "DIGITS__MODEL_DIR": str(model_dir),
        "DIGITS__ACTIVE_MODEL": ",".join(active),
        "APP__THREADS": "2",
        **(extra or {}),
    }
    return load_settings(env)


# --------------------------------------------------------------------------- images


def paper(side: int = 200, value: int = 245) -> U8:
    return np.full((side, side), value, dtype=np.uint8)


def draw_seven(canvas: U8, *, ink: int = 20, thickness: int = 12) -> U8:
    """A '7' in the middle of the canvas: a top bar and a long diagonal (not symmetric)."""
    out = canvas.copy()
    s = out.shape[0]
    top, left, right, bottom = int(s * 0.25), int(s * 0.32), int(s * 0.68), int(s * 0.78)
    cv2.line(out, (left, top), (right, top), int(ink), thickness, cv2.LINE_AA)
    cv2.line(out, (right, top), (int(s * 0.45), bottom), int(ink), thickness, cv2.LINE_AA)
    return out


def seven(side: int = 200) -> U8:
    return draw_seven(paper(side))


def png_bytes(gray: U8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(gray: U8, *, orientation: int | None = None, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(gray, mode="L")
    if orientation is None:
        image.save(buf, format="JPEG", quality=quality)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        image.save(buf, format="JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def encoded(gray: U8, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray, mode="L").convert("RGB").save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims `width` x `height` (a decompression bomb shape).

    Only one row of pixel data follows: the service must refuse it from the header, before any
    decoding, so the data never matters.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\xff" * width, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- HTTP


def post_read(
    client: Client,
    data: bytes,
    *,
    filename: str = "digit.png",
    content_type: str = "image/png",
    fields: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        "/v1/read",
        files={"file": (filename, data, content_type)},
        data=dict(fields or {}),
        headers=dict(headers or {}),
    )


def read_ok(client: Client, data: bytes, **fields: str) -> ReadResponse:
    """A read that must succeed, as the typed response body."""
    response = post_read(client, data, fields=fields)
    assert response.status_code == 200, response.text
    return structure(json_of(response), ReadResponse)


def visual_pixels(reading: ReadResponse) -> U8:
    """The returned visual: a 28x28 grayscale PNG, as pixels."""
    assert reading.visual_png_b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(reading.visual_png_b64)))
    assert image.format == "PNG"
    assert image.mode == "L"
    pixels: U8 = np.asarray(image, dtype=np.uint8)
    return pixels


def json_of(response: httpx.Response) -> object:
    body: object = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> ErrorBody:
    """The stable error body: exactly `{code, message, request_id}`, id echoed in the header."""
    assert response.status_code == status, response.text
    body = structure(json_of(response), ErrorBody)
    assert body.code == code, body
    assert body.message.strip(), body
    assert body.request_id == response.headers["x-request-id"]
    return body


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def load_script(path: Path, name: str) -> ModuleType:
    """An `ops/` script imported by path (they are scripts, not a package). Registered in
    `sys.modules` before it runs: its dataclasses resolve annotations through it."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
