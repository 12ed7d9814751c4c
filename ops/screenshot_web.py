"""The README's picture of the web page: the API with the shipped ensemble on loopback, a 7 drawn
on the pad with the mouse and read, then a screenshot of the whole page (docs/web-page.png).

It drives Debian's Chromium (`apt-get install chromium`) through Playwright, as the browser tests
do; it never downloads a browser. The app runs in this process (uvicorn in a thread) on a port
the kernel picks, with a throwaway model directory seeded from the shipped models.

    ./dev run python ops/screenshot_web.py                     # writes docs/web-page.png
    ./dev run python ops/screenshot_web.py --width 400 --out /tmp/phone.png   # a phone's width
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from playwright.sync_api import Page, sync_playwright

from handwriting_ai.api.app import create_app
from handwriting_ai.logging import configure_logging
from handwriting_ai.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 60.0


@contextmanager
def serving(model_dir: Path) -> Iterator[str]:
    """The real app, shipped ensemble, no Redis (training shows its form only): its URL."""
    settings = load_settings({"DIGITS__MODEL_DIR": str(model_dir), "APP__LOG_LEVEL": "warning"})
    configure_logging(settings.app.log_level, settings.app.log_format)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("screenshot_web: the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def draw_seven(page: Page) -> None:
    """A 7 with the mouse: a top bar, then a long diagonal, as a person draws it."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    x0, y0, side = box["x"], box["y"], box["width"]

    def stroke(points: list[tuple[float, float]]) -> None:
        page.mouse.move(x0 + points[0][0] * side, y0 + points[0][1] * side)
        page.mouse.down()
        for fx, fy in points[1:]:
            page.mouse.move(x0 + fx * side, y0 + fy * side, steps=8)
        page.mouse.up()

    stroke([(0.28, 0.25), (0.72, 0.25)])
    stroke([(0.72, 0.25), (0.58, 0.5), (0.45, 0.8)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "web-page.png")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS px")
    parser.add_argument("--height", type=int, default=900, help="viewport height in CSS px")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"screenshot_web: {CHROMIUM} is missing: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(Path(tmp) / "models") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{url}/")
            page.locator("#models-list .model").first.wait_for()
            draw_seven(page)
            page.locator("#reading").wait_for(state="visible", timeout=30_000)
            page.locator("#visual").wait_for(state="visible")
            digit = page.locator("#digit").inner_text()
            page.screenshot(path=str(args.out), full_page=True)
        finally:
            browser.close()
    print(f"screenshot_web: read {digit}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
