"""Two running servers measured in turn, round after round: one client's p50, then 8 and 32
clients' req/s, per round and as medians (Linux; `ops/bench_read.py`'s load generator and its
phases, `measure`, once per server per round).

A setting's effect is a few percent, and this machine's speed drifts by more than that within a
minute; alternating the servers (A, B, then B, A) in one sitting makes them share the drift.

    DIGITS__INLINE_READ_MS=0 digits serve --port 8770 &    # A: every read on a read thread
    digits serve --port 8771 &                               # B: the defaults
    ./dev run python ops/bench_read_ab.py http://127.0.0.1:8770 http://127.0.0.1:8771 --set png
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

import bench_read as br


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("urls", nargs=2, metavar="URL")
    parser.add_argument("--set", choices=tuple(br.SET_TITLES), default="png")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="per phase")
    args = parser.parse_args(argv)
    realistic = br.load_realistic()
    images, _labels = realistic.load_mnist_test(br.SHARED / "data" / "mnist")
    (upload_set,) = br.build_sets([args.set], None, realistic, images)
    figures: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for url in args.urls if r % 2 == 0 else args.urls[::-1]:
            got = br.measure(url, upload_set.uploads, args.requests)
            figures.setdefault((url, "1 client p50 ms"), []).append(
                br.pct(got.sequential.ms(200), 0.5)
            )
            for clients, phase in got.concurrent.items():
                if phase.counts()[200] != len(phase.answers):
                    br.note(f"{url}, {clients} clients: {br.errors(phase)}")
                figures.setdefault((url, f"{clients} clients req/s"), []).append(phase.rps(200))
    print(f"### {upload_set.title}: {args.rounds} rounds of {args.requests} requests a phase\n")
    print("| server | figure | median | by round |\n|---|---|---|---|")
    for (url, figure), values in figures.items():
        each = ", ".join(f"{v:,.2f}" for v in values)
        print(f"| {url} | {figure} | **{statistics.median(values):,.2f}** | {each} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
