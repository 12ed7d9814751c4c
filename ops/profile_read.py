"""Where the time of one read goes, stage by stage, in this process (one thread, warm).

Decode, preprocess, forward (every member), probabilities and the answer, timed separately on
the same uploads; the HTTP side (multipart parse, framework, response) is what
`ops/bench_read.py` measures beyond these, beside the floor's figure. Run it against another
checkout's code with `PYTHONPATH=/that/checkout/src` to compare before and after.

    python ops/profile_read.py [--backend onnxruntime|torch] [--repeats 1000]
    python ops/profile_read.py --phone 30     # 12 MP photos: decode, preprocess, right? decoders
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from handwriting_ai.inference.engine import Ensemble, load_ensemble
from handwriting_ai.preprocessing import ImageLimits, decode_image, preprocess_gray, preprocess_hash
from handwriting_ai.settings import SHIPPED_MODELS

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
LIMITS = ImageLimits(max_bytes=12 << 20, max_side_px=16384, max_pixels=64_000_000)


def pngs(count: int) -> list[bytes]:
    """MNIST test digits as 112 px dark-ink-on-white PNGs, as the peer's check.py makes them."""
    with gzip.open(MNIST) as f:
        digits = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    out = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(255 - digits[i]).resize((112, 112), Image.Resampling.BILINEAR).save(
            buf, "PNG"
        )
        out.append(buf.getvalue())
    return out


def median_ms(fn: Callable[[int], object], repeats: int, warmup: int = 100) -> float:
    times = []
    for i in range(repeats + warmup):
        started = time.perf_counter()
        fn(i)
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def load(backend: str) -> Ensemble:
    expected = preprocess_hash()
    if backend == "torch":  # no `backend` argument: older code (torch only) runs this too
        ensemble = load_ensemble(ROOT / "models", SHIPPED_MODELS, expected_hash=expected)
    else:
        ensemble = load_ensemble(
            ROOT / "models", SHIPPED_MODELS, expected_hash=expected, backend="onnxruntime"
        )
    if ensemble is None:
        raise SystemExit("the shipped models did not load")
    return ensemble


def phone_photos(ensemble: Ensemble, count: int) -> None:
    """12 MP photo-like JPEGs (every other one stored sideways) from make_realistic_set."""
    spec = importlib.util.spec_from_file_location("realistic", ROOT / "ops/make_realistic_set.py")
    if spec is None or spec.loader is None:
        raise SystemExit("cannot load ops/make_realistic_set.py")
    realistic = importlib.util.module_from_spec(spec)
    sys.modules["realistic"] = realistic
    spec.loader.exec_module(realistic)
    images, labels = realistic.load_mnist_test(MNIST.parent)
    decode_ms, preprocess_ms, right, shape = [], [], 0, (0, 0)
    for k, index in enumerate(range(100, 100 + count)):
        rng = np.random.default_rng([11, index])
        data = realistic.phone_photo(images[index], rng, quarter_turns=k % 2)
        started = time.perf_counter()
        gray = decode_image(data, LIMITS)
        decoded = time.perf_counter()
        pre = preprocess_gray(gray)
        decode_ms.append((decoded - started) * 1000)
        preprocess_ms.append((time.perf_counter() - decoded) * 1000)
        probs = ensemble.predict(torch.from_numpy(pre.tensor).reshape(1, 1, 28, 28))
        right += int(probs.argmax()) == int(labels[index])
        shape = gray.shape
    print(f"{count} phone photos, decoded at {shape[1]}x{shape[0]}:")
    print(f"| decode | {statistics.median(decode_ms):.1f} |")
    print(f"| preprocess | {statistics.median(preprocess_ms):.1f} |")
    print(f"read right: {right} of {count}")
    decoders_by_scale(realistic.phone_photo(images[100], np.random.default_rng([11, 100])))


def decoders_by_scale(data: bytes, repeats: int = 15) -> None:
    """The JPEG decode alone, luma only, at each of libjpeg's scales: Pillow's draft (what
    decode_image uses) and OpenCV's reduced reads. Median ms of `repeats`."""

    def pillow(scale: int, _: int) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("L", (image.size[0] // scale, image.size[1] // scale))
            image.load()

    def opencv(flag: int, _: int) -> None:
        cv2.imdecode(np.frombuffer(data, np.uint8), flag)

    def ms(fn: Callable[[int], object]) -> str:
        return f"{median_ms(fn, repeats, warmup=2):.1f}"

    reduced = {4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
    pillow_ms = [ms(partial(pillow, scale)) for scale in (1, 2, 4, 8)]
    opencv_ms = [ms(partial(opencv, reduced[scale])) for scale in (4, 8)]
    print(f"decode alone, one {len(data) / 1e6:.1f} MB photo, median ms of {repeats}:")
    print("| decoder | 1/1 | 1/2 | 1/4 | 1/8 |")
    print(f"| Pillow draft L | {' | '.join(pillow_ms)} |")
    print(f"| OpenCV reduced grayscale | | | {' | '.join(opencv_ms)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--phone", type=int, default=0, help="time this many 12 MP photos")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ensemble = load(args.backend)
    if args.phone:
        phone_photos(ensemble, args.phone)
        return 0
    uploads = pngs(100)
    grays = [decode_image(u, LIMITS) for u in uploads]
    inputs = [torch.from_numpy(preprocess_gray(g).tensor).reshape(1, 1, 28, 28) for g in grays]
    n = len(uploads)

    def forward(i: int) -> list[torch.Tensor]:
        with torch.inference_mode():
            return [m.forward_module(inputs[i % n]) for m in ensemble.members]

    stages = {
        "decode (112 px PNG)": lambda i: decode_image(uploads[i % n], LIMITS),
        "preprocess": lambda i: preprocess_gray(grays[i % n]),
        f"forward, {len(ensemble.members)} members ({args.backend})": forward,
        "predict (forward + calibrated mean)": lambda i: ensemble.predict(inputs[i % n]),
    }
    print(f"median ms of {args.repeats}, one thread, {n} distinct uploads")
    for name, fn in stages.items():
        print(f"| {name} | {median_ms(fn, args.repeats):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
