"""Accuracy of `POST /v1/read` on a labelled image folder, per kind, through real HTTP.

The folder has `labels.csv` (`path,label,kind[,source_index]`), as written by
`ops/make_realistic_set.py` or `ops/make_mnist_pngs.py`. Without `--url` the app runs in-process
(Litestar's test client: the real ASGI app, settings from the environment); with `--url` it talks
to a running server.

    python ops/eval_read.py --set /tmp/realistic [--url http://127.0.0.1:8081] [--json out.json]

`--light-ink-kinds chalkboard,chalk_thin` sends each upload with its true polarity (`invert`
true for those kinds, false for the rest) instead of letting the service decide: what the
readings would be if the polarity were always judged right.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from handwriting_ai.api.app import create_app
from handwriting_ai.logging import configure_logging
from handwriting_ai.settings import load_settings


@contextmanager
def client_for(url: str | None) -> Iterator[httpx.Client]:
    if url:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
        return
    from litestar.testing import TestClient

    configure_logging("warning")
    with TestClient(create_app(load_settings())) as client:
        yield client


def expected_calibration_error(confidences: list[tuple[float, bool]], bins: int = 15) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    total = len(confidences)
    ece = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(c, ok) for c, ok in confidences if low < c <= high]
        if members:
            accuracy = sum(ok for _, ok in members) / len(members)
            confidence = sum(c for c, _ in members) / len(members)
            ece += len(members) / total * abs(accuracy - confidence)
    return ece


UNCERTAIN_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def uncertain_curve(
    confidences: list[tuple[float, bool]], thresholds: tuple[float, ...] = UNCERTAIN_THRESHOLDS
) -> list[dict[str, float]]:
    """For each threshold t (a reading is `uncertain` when its confidence < t): the share of
    wrong readings it flags, and the share of right ones it flags too."""
    wrong = [c for c, ok in confidences if not ok]
    right = [c for c, ok in confidences if ok]
    return [
        {
            "threshold": t,
            "wrong_flagged": sum(c < t for c in wrong) / max(len(wrong), 1),
            "right_flagged": sum(c < t for c in right) / max(len(right), 1),
        }
        for t in thresholds
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", type=Path, required=True, help="folder with labels.csv")
    parser.add_argument("--url", default=None, help="running server; default: in-process app")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per kind")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--errors", type=Path, default=None, help="write mistakes as CSV here")
    parser.add_argument(
        "--light-ink-kinds",
        default=None,
        help="comma-separated kinds written light on dark: force every upload's true polarity",
    )
    args = parser.parse_args()
    light_kinds = None if args.light_ink_kinds is None else set(args.light_ink_kinds.split(","))

    rows = list(csv.DictReader((args.set / "labels.csv").open()))
    total: dict[str, int] = defaultdict(int)
    correct: dict[str, int] = defaultdict(int)
    refused: dict[str, int] = defaultdict(int)
    mistakes: list[tuple[str, str, str]] = []
    confidences: list[tuple[float, bool]] = []
    flagged = {True: 0, False: 0}  # the server's own `uncertain`, by right/wrong
    model_id = ""
    started = time.perf_counter()
    with client_for(args.url) as client:
        for row in rows:
            kind = row.get("kind", "all")
            if args.limit and total[kind] >= args.limit:
                continue
            path = args.set / row["path"]
            mime = "image/png" if path.suffix == ".png" else "image/jpeg"
            form = {} if light_kinds is None else {"invert": str(kind in light_kinds).lower()}
            resp = client.post(
                "/v1/read", files={"file": (path.name, path.read_bytes(), mime)}, data=form
            )
            total[kind] += 1
            if resp.status_code != 200:
                refused[kind] += 1
                mistakes.append(
                    (row["path"], row["label"], f"{resp.status_code}:{resp.json()['code']}")
                )
                continue
            body = resp.json()
            model_id = body["model_id"]
            right = int(body["digit"]) == int(row["label"])
            confidences.append((float(body["confidence"]), right))
            flagged[right] += bool(body["uncertain"])
            if right:
                correct[kind] += 1
            else:
                mistakes.append((row["path"], row["label"], str(body["digit"])))
    elapsed = time.perf_counter() - started
    n, ok = sum(total.values()), sum(correct.values())
    results = {
        kind: {"n": total[kind], "accuracy": correct[kind] / total[kind], "refused": refused[kind]}
        for kind in sorted(total)
    }
    print(f"model {model_id}, {n} images in {elapsed:.1f} s")
    for kind, r in results.items():
        print(f"  {kind:24s} {r['accuracy'] * 100:6.2f}%  (n={r['n']}, refused {r['refused']})")
    print(f"  {'ALL':24s} {ok / max(n, 1) * 100:6.2f}%  (n={n})")
    ece = expected_calibration_error(confidences)
    print(f"  expected calibration error (15 bins): {ece:.4f}")
    wrong_n = len(confidences) - ok
    print(
        f"  the server's `uncertain`: {flagged[False]}/{wrong_n} wrong readings flagged, "
        f"{flagged[True]}/{ok} right ones"
    )
    curve = uncertain_curve(confidences)
    print("  uncertain below   wrong flagged   right flagged")
    for point in curve:
        print(
            f"  {point['threshold']:>15.2f} {point['wrong_flagged'] * 100:14.1f}% "
            f"{point['right_flagged'] * 100:14.2f}%"
        )
    if args.json:
        summary = {
            "model_id": model_id,
            "overall": ok / max(n, 1),
            "ece": ece,
            "uncertain": {"wrong_flagged": flagged[False], "right_flagged": flagged[True]},
            "curve": curve,
            "kinds": results,
        }
        args.json.write_text(json.dumps(summary, indent=2))
    if args.errors:
        with args.errors.open("w") as fh:
            csv.writer(fh).writerows([("path", "label", "got"), *mistakes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
