"""The onnxruntime backend answers what the torch reference answers, and really serves the reads.

`DIGITS__BACKEND=onnxruntime` (the default) runs each member as an onnxruntime session exported
from the loaded torch module; `torch` runs the module itself. Both must give the same
probabilities (to float rounding) on the shipped ensemble, at batch 1 and for the 9 TTA views.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Serve
from handwriting_ai.inference.engine import Ensemble, load_ensemble
from handwriting_ai.inference.onnx_backend import Backend, OnnxRunner
from handwriting_ai.inference.tta import TtaProfile
from handwriting_ai.models import registry
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.settings import SHIPPED_MODELS
from helpers import make_settings, png_bytes, read_ok, seven, state_of, write_artifact

COUNTING_ARCH = "test_counting_net"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models"


def shipped(backend: Backend) -> Ensemble:
    ensemble = load_ensemble(
        SHIPPED_DIR, SHIPPED_MODELS, expected_hash=preprocess_hash(), backend=backend
    )
    assert ensemble is not None
    assert len(ensemble.members) == len(SHIPPED_MODELS)
    return ensemble


@pytest.mark.parametrize("profile", ["none", "strong"])
def test_shipped_ensemble_agrees_with_torch(profile: TtaProfile) -> None:
    reference, fast = shipped("torch"), shipped("onnxruntime")
    assert all(isinstance(m.forward_module, OnnxRunner) for m in fast.members)
    assert not any(isinstance(m.forward_module, OnnxRunner) for m in reference.members)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = torch.from_numpy(rng.normal(0, 1, (1, 1, 28, 28)).astype(np.float32))
        want = reference.predict(x, profile)
        got = fast.predict(x, profile)
        assert torch.allclose(got, want, atol=2e-6), (got - want).abs().max()
        assert int(got.argmax()) == int(want.argmax())


class CountingNet(nn.Module):
    """Counts how often its Python `forward` runs."""

    calls = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with CountingNet.lock:
            CountingNet.calls += 1
        out: torch.Tensor = self.linear(x.flatten(1))
        return out

    def __deepcopy__(self, memo: dict[int, object]) -> CountingNet:
        clone = CountingNet()
        clone.load_state_dict(copy.deepcopy(self.state_dict(), memo))
        return clone


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_reads_run_on_the_configured_backend(
    serve: Serve, model_dir: Path, monkeypatch: pytest.MonkeyPatch, backend: Backend
) -> None:
    monkeypatch.setitem(registry._REGISTRY, COUNTING_ARCH, CountingNet)
    torch.manual_seed(8)
    write_artifact(model_dir, "counting", arch=COUNTING_ARCH, state=state_of(CountingNet()))
    client = serve(make_settings(model_dir, ["counting"], {"DIGITS__BACKEND": backend}))
    before = CountingNet.calls  # the export traced forward once at load
    readings = [read_ok(client, png_bytes(seven())) for _ in range(5)]
    ran = CountingNet.calls - before
    # onnxruntime runs the exported graph: Python's forward never runs at read time.
    assert ran == (0 if backend == "onnxruntime" else 5)
    assert len({tuple(r.probs) for r in readings}) == 1


def test_models_load_on_several_threads_at_once() -> None:
    """Two reloads on the admin threads (or two apps in one process) export at the same time;
    torch's exporter keeps process-wide state, so each must still get its runner."""
    modules = [CountingNet() for _ in range(6)]
    barrier = threading.Barrier(len(modules))
    errors: list[BaseException] = []

    def load(module: CountingNet) -> None:
        barrier.wait(timeout=30)
        try:
            OnnxRunner(module)
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(m,)) for m in modules]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
