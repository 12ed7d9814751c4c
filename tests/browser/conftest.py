"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, the real app over real
HTTP (the shipped ensemble, a real Redis), and on failure a screenshot and the page's console.

The browser is `/usr/bin/chromium` (`apt-get install chromium`; `.ci/run` installs it): a
downloaded Playwright browser is never used. Without it every test here is skipped, saying so.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis
from attrs import frozen
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.settings import SHIPPED_MODELS
from helpers import make_settings
from redis_server import RedisServer
from worker_support import API_KEY, serve_app

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_KEY = API_KEY  # the upload key: what the training test's worker sends as its key
VIEWPORT = {"width": 1280, "height": 900}
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()

redis_server = stream_helpers.redis_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without the browser, the tests that need it are skipped, saying why."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: apt-get install chromium (CI does)")
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Each phase's report on the item, for the page fixture to see whether the test failed."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@frozen
class Site:
    url: str
    model_dir: Path
    redis_url: str


def shipped_models(model_dir: Path) -> Path:
    """The shipped ensemble, copied as `tests/test_cli_read.py` does."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for model_id in SHIPPED_MODELS:
        shutil.copytree(REPO / "models" / model_id, model_dir / model_id)
    return model_dir


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Site]:
    """The API as `digits up` runs it: the shipped ensemble, Redis (training, corrections, the
    registry), uploads behind the admin key, no API key (the page asks for none)."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    model_dir = shipped_models(tmp_path_factory.mktemp("site") / "models")
    settings = make_settings(
        model_dir,
        SHIPPED_MODELS,
        {"REDIS_URL": redis_server.url, "SECURITY__ADMIN_KEY": ADMIN_KEY},
    )
    with serve_app(create_app(settings)) as url:
        yield Site(url, model_dir, redis_server.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module, not session: while the sync API is open it keeps an event loop running in this
    # thread, and every later test that calls `asyncio.run` would fail ("cannot be called from a
    # running event loop"): seen when the whole suite ran in one process.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120]


def _save_artifacts(page: Page, console: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(folder / "screenshot.png"), full_page=True)
    except PlaywrightError as exc:  # a crashed page still leaves its console
        console.append(f"(no screenshot: {exc.message})")
    (folder / "console.log").write_text("\n".join(console) + "\n")
    print(f"browser artifacts (screenshot, console log): {folder}")


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A fresh page (own storage) whose console is recorded. On failure its screenshot and
    console log are saved under `<tmp_path>/test-artifacts/`. Whatever the outcome, an uncaught
    script error or a Content-Security-Policy violation fails the test."""
    context = browser.new_context(
        viewport={"width": VIEWPORT["width"], "height": VIEWPORT["height"]}
    )
    opened = context.new_page()
    console: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text}")

    def on_error(error: PlaywrightError) -> None:
        console.append(f"pageerror: {error.message}")

    opened.on("console", on_console)
    opened.on("pageerror", on_error)
    try:
        yield opened
        reports = request.node.stash.get(REPORTS, {})
        if any(report.failed for report in reports.values()):
            _save_artifacts(opened, console, tmp_path / "test-artifacts" / _safe(request.node.name))
    finally:
        context.close()
    broken = [
        line for line in console if line.startswith("pageerror") or "Content Security" in line
    ]
    assert not broken, broken
