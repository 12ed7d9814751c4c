"""Which members make the best ensemble: every member, and every subset of two or more, on the
validation split, the MNIST test set and a realistic set, in-process.

Subsets are ranked by validation accuracy (the split training selects on); the test and
realistic columns are printed beside it, never used to rank. Probabilities are each member's
temperature-scaled softmax, averaged: what `POST /v1/read` serves (TTA off). A member is
`MODEL_DIR/MODEL_ID` (its CURRENT version) or a version directory holding `manifest.json`.

    python ops/compare_members.py --data-root data --realistic /tmp/realistic \
        models/mnist_digitnet_a models/mnist_digitnet_c /tmp/probe/mnist_digitnet_p5

Without members, the shipped ones (`SHIPPED_MODELS` in `models/`). The realistic set is a folder
written by `ops/make_realistic_set.py`; it is preprocessed once per run (about 30 s for 2,800
images, the 12 MP photos most of it).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from handwriting_ai.inference.engine import Member, load_member
from handwriting_ai.inference.store import MANIFEST_FILE, current_version, version_dir
from handwriting_ai.preprocessing import (
    ImageLimits,
    decode_image,
    preprocess_gray,
    preprocess_hash,
)
from handwriting_ai.settings import SHIPPED_MODELS
from handwriting_ai.training.dataset import preprocessed_mnist, split_train_val
from handwriting_ai.training.loop import normalise

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
LIMITS = ImageLimits(max_bytes=12 << 20, max_side_px=16384, max_pixels=64_000_000)
# The split `digits train` validates and selects on (`TrainConfig.val_size`, split seed 0).
VAL_SIZE = 5000


def member_at(path: Path) -> Member:
    if not (path / MANIFEST_FILE).is_file():
        version = current_version(path.parent, path.name)
        if version is None:
            raise SystemExit(f"{path}: no manifest.json and no CURRENT version")
        path = version_dir(path.parent, path.name, version)
    return load_member(path, expected_hash=preprocess_hash())


def mnist_inputs(data_root: Path) -> dict[str, tuple[torch.Tensor, I64]]:
    train_px, train_y = preprocessed_mnist(data_root, "train")
    test_px, test_y = preprocessed_mnist(data_root, "test")
    _, val_idx = split_train_val(len(train_y), VAL_SIZE)

    def tensor(px: npt.NDArray[np.uint8]) -> torch.Tensor:
        return normalise(torch.from_numpy(px).unsqueeze(1).float() / 255.0)

    return {
        "val": (tensor(train_px[val_idx]), train_y[val_idx].astype(np.int64)),
        "mnist": (tensor(test_px), test_y.astype(np.int64)),
    }


def realistic_inputs(folder: Path) -> tuple[torch.Tensor, I64, npt.NDArray[np.str_]]:
    xs: list[F32] = []
    labels: list[int] = []
    kinds: list[str] = []
    for row in csv.DictReader((folder / "labels.csv").open()):
        gray = decode_image((folder / row["path"]).read_bytes(), LIMITS, None)
        xs.append(preprocess_gray(gray).tensor)
        labels.append(int(row["label"]))
        kinds.append(row.get("kind", "all"))
    return torch.from_numpy(np.stack(xs)).unsqueeze(1), np.array(labels), np.array(kinds)


def member_probs(members: list[Member], x: torch.Tensor) -> list[F32]:
    out: list[F32] = []
    with torch.inference_mode():
        for m in members:
            logits = torch.cat([m.forward_module(x[i : i + 1000]) for i in range(0, len(x), 1000)])
            out.append(torch.softmax(logits / m.manifest.temperature, dim=-1).numpy())
    return out


def accuracy(probs: list[F32], subset: tuple[int, ...], labels: I64) -> float:
    mean = sum(probs[i] for i in subset) / len(subset)
    return float((np.asarray(mean).argmax(1) == labels).mean()) * 100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="*", type=Path, help="MODEL_DIR/MODEL_ID or a version dir")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="holds MNIST")
    parser.add_argument("--realistic", type=Path, help="a folder from ops/make_realistic_set.py")
    parser.add_argument("--top", type=int, default=12, help="subsets to print, best by val")
    args = parser.parse_args()
    torch.set_num_threads(1)

    paths = args.members or [Path("models") / model_id for model_id in SHIPPED_MODELS]
    members = [member_at(p) for p in paths]
    names = [f"{m.manifest.model_id}@{m.manifest.version[:15]}" for m in members]
    sets = mnist_inputs(args.data_root)
    kinds: npt.NDArray[np.str_] | None = None
    if args.realistic:
        x, y, kinds = realistic_inputs(args.realistic)
        sets["realistic"] = (x, y)
    probs = {name: member_probs(members, x) for name, (x, _) in sets.items()}

    def row(subset: tuple[int, ...]) -> str:
        cells = [f"{name} {accuracy(probs[name], subset, y):6.2f}" for name, (_, y) in sets.items()]
        if kinds is not None:
            y = sets["realistic"][1]
            mean = np.asarray(sum(probs["realistic"][i] for i in subset) / len(subset))
            per = {
                k: float((mean.argmax(1)[kinds == k] == y[kinds == k]).mean()) for k in set(kinds)
            }
            worst = min(per, key=lambda k: per[k])
            cells.append(f"weakest kind {worst} {per[worst] * 100:.1f}")
        return "  ".join(cells)

    print("members:")
    for i, name in enumerate(names):
        print(f"  [{i}] {name:34s} {row((i,))}")
    subsets = [
        s
        for r in range(2, len(members) + 1)
        for s in itertools.combinations(range(len(members)), r)
    ]
    subsets.sort(key=lambda s: -accuracy(probs["val"], s, sets["val"][1]))
    print(f"subsets of two or more ({len(subsets)}), best {args.top} by val:")
    for s in subsets[: args.top]:
        print(f"  {list(s)!s:18s} {row(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
