"""Training throughput with and without augmentation (same model, data, seed and threads).

Runs `train_one_epoch` on the preprocessed MNIST training set (first `--samples` images) for
each setting, alternating them `--rounds` times so that machine noise hits both alike, and prints
samples/s and the ratio augmented / plain (the bar: >= 0.85).

    python ops/bench_train.py [--arch digitnet] [--samples 20000] [--rounds 4] [--threads 0]

Epoch rates on a shared 2-core machine swing by 10-20% from run to run, so it also times
`augment_batch` alone over the same batches: its cost per batch against a plain batch's time
is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from handwriting_ai.models import create_model
from handwriting_ai.training.augment import augment_batch
from handwriting_ai.training.config import AugmentConfig
from handwriting_ai.training.dataset import preprocessed_mnist
from handwriting_ai.training.loop import EpochPlan, train_one_epoch
from handwriting_ai.training.progress import NullReporter
from handwriting_ai.training.run import cpu_has_bf16


def epoch_rate(
    arch: str,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    aug: AugmentConfig,
    bf16: bool,
    batch: int,
) -> float:
    torch.manual_seed(0)
    model = create_model(arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    steps = -(-len(labels) // batch)
    plan = EpochPlan(bf16, 1, 1, batch, 0, steps, 0.003, 0)
    stats = train_one_epoch(
        model,
        optimizer,
        pixels,
        labels,
        plan,
        aug=aug,
        gen=torch.Generator().manual_seed(0),
        reporter=NullReporter(),
        should_stop=lambda: False,
    )
    return stats.samples / stats.time_s


def augment_ms_per_batch(pixels: torch.Tensor, batch: int) -> float:
    """`augment_batch` alone (robust settings) over the epoch's batches, in ms per batch."""
    gen = torch.Generator().manual_seed(0)
    cfg = AugmentConfig.robust()
    batches = [
        pixels[i : i + batch].unsqueeze(1).float().div_(255.0) for i in range(0, len(pixels), batch)
    ]
    started = time.perf_counter()
    for b in batches:
        augment_batch(b, cfg, gen)
    return (time.perf_counter() - started) / len(batches) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--arch", default="digitnet")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="0 = one per core")
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    bf16 = cpu_has_bf16()
    pixels, labels = preprocessed_mnist(args.data_root, "train")
    x = torch.from_numpy(pixels[: args.samples])
    y = torch.from_numpy(labels[: args.samples].astype(np.int64))
    rates: dict[str, list[float]] = {"plain": [], "augmented": []}
    for _ in range(args.rounds):
        rates["plain"].append(epoch_rate(args.arch, x, y, AugmentConfig(), bf16, args.batch_size))
        rates["augmented"].append(
            epoch_rate(args.arch, x, y, AugmentConfig.robust(), bf16, args.batch_size)
        )
    plain, augmented = statistics.median(rates["plain"]), statistics.median(rates["augmented"])
    print(
        f"arch {args.arch}, {len(y)} samples, batch {args.batch_size}, threads {threads}, "
        f"precision {'bf16' if bf16 else 'fp32'}, {args.rounds} rounds (median)"
    )
    for key, label in (("plain", "without augmentation"), ("augmented", "with augmentation")):
        runs = [round(r) for r in rates[key]]
        print(f"  {label:22s} {statistics.median(rates[key]):8.0f} samples/s   runs {runs}")
    print(f"  ratio: {augmented / plain:.3f}")
    aug_ms = augment_ms_per_batch(x, args.batch_size)
    plain_ms = args.batch_size / plain * 1000
    print(
        f"  augmentation alone: {aug_ms:.2f} ms per batch of {args.batch_size}, "
        f"{aug_ms / plain_ms:.1%} of a plain batch ({plain_ms:.1f} ms): "
        f"ratio {plain_ms / (plain_ms + aug_ms):.3f} from costs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
