"""Forward-pass cost of the shipped ensemble per image, by backend and batch size, on one thread.

Whether dynamic batching (several requests' inputs in one forward pass, as Triton and BentoML do)
can pay on this machine: it can only save what a batch saves per image over batch 1.

    python ops/bench_forward.py [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from handwriting_ai.inference.engine import Ensemble, load_ensemble
from handwriting_ai.inference.onnx_backend import Backend
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.settings import SHIPPED_MODELS

MODELS = Path(__file__).resolve().parents[1] / "models"
BATCHES = (1, 2, 4, 8, 16, 32)


def ensemble(backend: Backend) -> Ensemble:
    loaded = load_ensemble(MODELS, SHIPPED_MODELS, expected_hash=preprocess_hash(), backend=backend)
    if loaded is None:
        raise SystemExit(f"the shipped models in {MODELS} did not load")
    return loaded


def per_image_ms(ens: Ensemble, batch: int, repeats: int) -> float:
    x = torch.randn(batch, 1, 28, 28)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 20):
            started = time.perf_counter()
            for member in ens.members:
                member.forward_module(x)
            if i >= 20:
                times.append((time.perf_counter() - started) * 1000 / batch)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{len(SHIPPED_MODELS)} members, one thread, median of {args.repeats}")
    print("| backend | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    backends: tuple[Backend, ...] = ("onnxruntime", "torch")
    for backend in backends:
        ens = ensemble(backend)
        cells = [f"{per_image_ms(ens, b, args.repeats):.3f}" for b in BATCHES]
        print(f"| {backend} (ms per image) | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
