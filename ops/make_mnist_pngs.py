"""Write MNIST test digits as PNG files with `labels.csv`, for `ops/eval_read.py` over HTTP.

python ops/make_mnist_pngs.py --data-root data --out /tmp/mnist_png [--limit 10000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image

from handwriting_ai.data.mnist import load_mnist


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=10_000)
    args = parser.parse_args()
    images, labels = load_mnist(args.data_root, "test")
    (args.out / "mnist_test").mkdir(parents=True, exist_ok=True)
    with (args.out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "kind", "source_index"])
        for i in range(min(args.limit, len(labels))):
            rel = f"mnist_test/{i:05d}_{labels[i]}.png"
            Image.fromarray(images[i], mode="L").save(args.out / rel)
            writer.writerow([rel, int(labels[i]), "mnist_test", i])
    print(f"wrote {min(args.limit, len(labels))} PNGs to {args.out}")


if __name__ == "__main__":
    main()
