"""The onnxruntime backend: a loaded torch member exported once, run by onnxruntime at read time.

Why: at batch 1 on a CPU, eager torch spends most of a compact CNN's forward pass in per-operator
dispatch; onnxruntime runs the same graph (Conv + BatchNorm folded by its optimiser) several times
faster, with the same outputs to ~1e-6 (`ops/BENCHMARKS.md`). torch stays the reference: training,
the manifests' accuracies and `DIGITS__BACKEND=torch` use it, and a test holds the two together.
"""

from __future__ import annotations

import tempfile
import threading
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

Backend = Literal["onnxruntime", "torch"]
_INPUT = "x"


# torch's exporter keeps process-wide state (`GLOBALS.in_onnx_export`): two exports at once (two
# reloads on the admin threads, two apps in one process) fail. One at a time.
_EXPORT_LOCK = threading.Lock()


def export_onnx(module: nn.Module) -> bytes:
    """The eval-mode module as an ONNX graph with a dynamic batch axis (TTA sends 9 views)."""
    with (
        _EXPORT_LOCK,
        tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp,
        warnings.catch_warnings(),
    ):
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript and takes seconds; this one exports a plain CNN exactly, in ~0.2 s.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, 1, 28, 28),),
            path,
            input_names=[_INPUT],
            output_names=["logits"],
            dynamic_axes={_INPUT: {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        return path.read_bytes()


class OnnxRunner:
    """A callable like the module it came from: (N, 1, 28, 28) tensor -> (N, 10) logits."""

    def __init__(self, module: nn.Module) -> None:
        options = ort.SessionOptions()
        # One thread per read, like torch: the read executor's size is the parallelism.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            export_onnx(module), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # `run` is thread-safe and releases the GIL; concurrent reads share one session.
        feed = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        (logits,) = self._session.run(None, {_INPUT: feed})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))
