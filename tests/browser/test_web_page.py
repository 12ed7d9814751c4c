"""The web page as a person uses it, in a real Chromium against the real app over HTTP: draw or
photograph a digit and read it, correct a reading, train a model and watch it learn, type the
API key when the service has one, and do all of it from the keyboard.

Nothing is mocked: the shipped ensemble reads, a real Redis holds jobs and corrections, a real
worker process trains on tiny data and uploads to the API."""

from __future__ import annotations

import base64
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Page, Request, Route, expect

from browser.conftest import ADMIN_KEY, Site, shipped_models
from handwriting_ai.api.app import create_app
from handwriting_ai.api.web import CONTENT_SECURITY_POLICY
from handwriting_ai.settings import SHIPPED_MODELS
from handwriting_ai.streams.keys import FEEDBACK_STREAM
from helpers import make_settings, png_bytes, seven
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    kill_group,
    serve_app,
    start_worker_process,
    worker_env,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ops" / "samples" / "digit.jpg"  # a 7, photographed
READ_TIMEOUT_MS = 30_000  # a read under a loaded 2-core machine: normally well under a second
TRAIN_TIMEOUT_MS = 180_000  # worker start, preprocessing 400 digits, 2 epochs, upload
PAGE_KEY = "browser-test-key"
SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def open_page(page: Page, url: str) -> None:
    page.goto(f"{url}/")
    expect(page.locator("#service")).to_have_text(re.compile(r"Serving|API key"))


def draw(page: Page, *strokes: list[tuple[float, float]]) -> None:
    """Mouse strokes on the pad, in fractions of its side, with moves between the points."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    x0, y0, side = box["x"], box["y"], box["width"]
    for points in strokes:
        page.mouse.move(x0 + points[0][0] * side, y0 + points[0][1] * side)
        page.mouse.down()
        for fx, fy in points[1:]:
            page.mouse.move(x0 + fx * side, y0 + fy * side, steps=12)
        page.mouse.up()


def read_photo(page: Page, path: Path = SAMPLE) -> str:
    """Choose the photo in the file input; the read's request id (its X-Request-ID)."""
    with page.expect_response("**/v1/read") as answered:
        page.set_input_files("#photo", str(path))
    response = answered.value
    assert response.status == 200, response.text()
    expect(page.locator("#digit")).to_have_text("7", timeout=READ_TIMEOUT_MS)
    request_id = response.headers["x-request-id"]
    assert SAFE_ID.match(request_id)
    return request_id


def sent_json(request: Request) -> object:
    body: object = request.post_data_json
    return body


# --------------------------------------------------------------------------- the page itself


def test_the_page_is_served_from_the_package_with_a_strict_policy(site: Site) -> None:
    with httpx.Client(base_url=site.url) as http:
        index = http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert index.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "default-src 'self'" in CONTENT_SECURITY_POLICY
        assert "img-src 'self' data:" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        assert index.headers["x-content-type-options"] == "nosniff"
        # Nothing from elsewhere and no inline script or style in the markup.
        assert not re.search(r"(src|href)=\"(https?:)?//", index.text)
        assert "<script>" not in index.text
        assert "style=" not in index.text
        module = http.get("/web/main.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.headers["x-content-type-options"] == "nosniff"
        again = http.get("/web/main.js", headers={"If-None-Match": module.headers["etag"]})
        assert again.status_code == 304
        for path in ("/web/nope.js", "/web/..%2Fapi%2Fweb.py", "/web/"):
            missing = http.get(path)
            assert missing.status_code == 404, path
            assert missing.json()["code"] == "not_found"
        schema = http.get("/schema/openapi.json").json()
        assert "/" not in schema["paths"]
        assert not [p for p in schema["paths"] if p.startswith("/web")]


# --------------------------------------------------------------------------- read


def test_drawing_a_one_with_the_mouse_reads_1(page: Page, site: Site) -> None:
    open_page(page, site.url)
    with page.expect_response("**/v1/read") as answered:
        draw(page, [(0.5, 0.18), (0.5, 0.5), (0.5, 0.82)])  # read when the pen lifts
    assert answered.value.status == 200
    expect(page.locator("#digit")).to_have_text("1", timeout=READ_TIMEOUT_MS)
    expect(page.locator("#confidence")).to_contain_text("confident")


def test_a_photo_reads_7_with_ten_bars_and_the_image_the_model_saw(
    page: Page, site: Site, tmp_path: Path
) -> None:
    open_page(page, site.url)
    read_photo(page)
    bars = page.locator("#bars li")
    expect(bars).to_have_count(10)
    values = [float(v.rstrip("%")) for v in page.locator("#bars .bar-value").all_inner_texts()]
    assert len(values) == 10
    assert max(values) == values[7]
    assert sum(values) == pytest.approx(100, abs=1)
    expect(page.locator("#bars li.best")).to_have_count(1)
    visual = page.locator("#visual")
    expect(visual).to_be_visible()
    assert (visual.get_attribute("src") or "").startswith("data:image/png;base64,")
    natural = page.evaluate(
        "() => [document.getElementById('visual').naturalWidth,"
        " document.getElementById('visual').naturalHeight]"
    )
    assert natural == [28, 28]
    expect(page.locator("#uncertain")).to_be_hidden()

    # Dropped on the panel: read as well.
    dropped = base64.b64encode(png_bytes(seven())).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "seven.png", { type: "image/png" }));
            return data;
        }""",
        dropped,
    )
    with page.expect_response("**/v1/read") as answered:
        page.dispatch_event("#read", "drop", {"dataTransfer": transfer})
    assert answered.value.status == 200

    # The service's refusal shows as its error body's message.
    junk = tmp_path / "note.png"
    junk.write_bytes(b"this is not an image")
    with httpx.Client(base_url=site.url) as http:
        refused = http.post(
            "/v1/read", files={"file": ("note.png", junk.read_bytes(), "image/png")}
        )
    assert refused.status_code == 400, refused.text  # content, not the name, decides
    page.set_input_files("#photo", str(junk))
    expect(page.locator("#read-error")).to_have_text(refused.json()["message"])


def test_it_was_a_4_sends_the_correction_and_shows_the_answer(page: Page, site: Site) -> None:
    open_page(page, site.url)
    request_id = read_photo(page)
    with page.expect_request("**/v1/feedback") as sent:
        page.get_by_role("button", name="It was a 4").click()
    assert sent.value.method == "POST"
    assert sent_json(sent.value) == {"request_id": request_id, "label": 4}
    answer = sent.value.response()
    assert answer is not None
    assert answer.status == 201, answer.text()
    expect(page.locator("#feedback")).to_have_text("Thanks — saved as a 4.")
    with redis.Redis.from_url(site.redis_url, decode_responses=True) as client:
        entries = client.xrange(FEEDBACK_STREAM)
    mine = [fields for _, fields in entries if fields.get("request_id") == request_id]
    assert len(mine) == 1, entries
    assert mine[0]["label"] == "4"
    assert mine[0]["predicted"] == "7"
    # One correction per reading: the buttons stay disabled after it is saved.
    expect(page.get_by_role("button", name="It was a 3")).to_be_disabled()


# --------------------------------------------------------------------------- train


@pytest.fixture
def worker(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real worker process on tiny MNIST, uploading to the site's API with the admin key."""
    root = tmp_path_factory.mktemp("worker")
    data_root = write_tiny_mnist(root / "data")
    env = worker_env(site.redis_url, data_root, root, LiveApi(site.url, site.model_dir))
    process = start_worker_process(env)
    try:
        yield
    finally:
        kill_group(process, signal.SIGTERM)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.slow
def test_a_training_job_runs_live_to_completed_with_one_point_per_epoch(
    page: Page, site: Site, worker: None
) -> None:
    open_page(page, site.url)
    page.fill("#train-model", TINY_MODEL_ID)
    page.fill("#train-epochs", "2")
    page.uncheck("#train-augment")
    with page.expect_request("**/v1/train") as sent:
        page.click("#train-start")
    assert sent_json(sent.value) == {
        "model_id": TINY_MODEL_ID,
        "epochs": 2,
        "augment": False,
        "use_feedback": False,
    }
    job = page.locator("#job")
    expect(job).to_have_attribute("data-state", "completed", timeout=TRAIN_TIMEOUT_MS)
    expect(page.locator("#job-percent")).to_have_text("100.0%")
    assert page.eval_on_selector("#job-progress", "el => el.value") == 1
    expect(page.locator("#chart .loss .point")).to_have_count(2)
    expect(page.locator("#chart .acc .point")).to_have_count(2)
    expect(page.locator("#chart .loss .line")).to_have_count(1)
    log = page.locator("#job-log li").all_inner_texts()
    assert [line.split(":")[0] for line in log if line.startswith("Epoch")] == [
        "Epoch 1/2",
        "Epoch 2/2",
    ]
    assert any(line.startswith("⭐ New best") for line in log), log
    assert any(line.startswith("📦 Uploaded to the API (HTTP 201") for line in log), log
    expect(page.locator("#job-state")).to_contain_text("✅ Completed: val_acc")
    # The recent jobs list keeps it (localStorage) and shows its status from the API.
    recent = page.locator("#jobs li")
    expect(recent).to_have_count(1)
    expect(recent.locator(".job-status")).to_have_text("completed")
    stored = page.evaluate("() => localStorage.getItem('handwriting-ai.jobs')")
    assert isinstance(stored, str)
    ids = [job["request_id"] for job in json.loads(stored)]
    assert ids == [recent.get_attribute("data-request-id")]
    # The new version is stored, and the models panel lists it.
    expect(page.locator(f"#models-list [data-model-id='{TINY_MODEL_ID}']")).to_be_visible()


def test_cancelling_a_queued_job_ends_its_live_view_as_cancelled(page: Page, site: Site) -> None:
    open_page(page, site.url)  # no worker runs here: the job stays queued until cancelled
    page.fill("#train-model", "mnist_digitnet_v1")
    page.click("#train-start")
    job = page.locator("#job")
    expect(job).to_have_attribute("data-state", "queued")
    expect(page.locator("#job-state")).to_have_text("Queued: waiting for a worker.")
    with page.expect_response("**/cancel") as answered:
        page.click("#job-cancel")
    assert answered.value.status == 202
    expect(job).to_have_attribute("data-state", "cancelled")
    expect(page.locator("#job-state")).to_have_text("⏹️ Cancelled by request.")
    expect(page.locator("#job-cancel")).to_be_hidden()
    expect(page.locator("#jobs li .job-status").first).to_have_text("cancelled")


def test_the_event_stream_parser_takes_frames_split_anywhere(page: Page, site: Site) -> None:
    """The page reads SSE with fetch(): frames cut mid-line or mid-CRLF, comments, several
    `data:` lines, and an `id:` each (what Last-Event-ID resumes from)."""
    open_page(page, site.url)
    frames = page.evaluate(
        r"""async () => {
            const { SseParser } = await import("/web/sse.js");
            const parser = new SseParser();
            const text = ": connected\r\n\r\nevent: digits.train.started.v1\r\n" +
                "data: {\"a\":\r\ndata: 1}\r\nid: 5-0\r\n\r\n: keep-alive\n\n" +
                "event: digits.train.completed.v1\ndata: {}\nid: 6-0\n\n";
            const out = [];
            for (let i = 0; i < text.length; i += 3) out.push(...parser.push(text.slice(i, i + 3)));
            return out;
        }"""
    )
    assert frames == [
        {"event": "digits.train.started.v1", "data": '{"a":\n1}', "id": "5-0"},
        {"event": "digits.train.completed.v1", "data": "{}", "id": "6-0"},
    ]


def test_a_dropped_event_stream_is_resumed_with_last_event_id(page: Page, site: Site) -> None:
    """The first connection ends after one event, before the job's end (as when a proxy drops
    it): the page reconnects with that event's id as Last-Event-ID and gets the rest."""
    with httpx.Client(base_url=site.url) as http:
        queued = http.post("/v1/train", json={"model_id": "mnist_digitnet_v1"})
        request_id = queued.json()["request_id"]
        assert http.post(f"/v1/train/{request_id}/cancel").status_code == 202
    seen: list[dict[str, str]] = []

    def events(route: Route) -> None:
        seen.append(route.request.headers)
        if len(seen) > 1:
            route.continue_()
            return
        started = {
            "type": "digits.train.started.v1",
            "request_id": request_id,
            "user_id": 0,
            "model_id": "mnist_digitnet_v1",
            "run_id": None,
            "ts": "2026-01-01T00:00:00.000Z",
            "total_epochs": 1,
            "attempt": 1,
        }
        frame = f"event: {started['type']}\ndata: {json.dumps(started)}\nid: 0-1\n\n"
        route.fulfill(status=200, content_type="text/event-stream", body=": connected\n\n" + frame)

    page.route(f"**/v1/train/{request_id}/events", events)
    open_page(page, site.url)
    jobs = [{"request_id": request_id, "model_id": "mnist_digitnet_v1", "created": ""}]
    page.evaluate(
        "(jobs) => localStorage.setItem('handwriting-ai.jobs', JSON.stringify(jobs))", jobs
    )
    page.reload()
    page.get_by_role("button", name=f"Watch job {request_id}").click()
    expect(page.locator("#job")).to_have_attribute("data-state", "cancelled")
    assert len(seen) == 2
    assert "last-event-id" not in seen[0]
    assert seen[1]["last-event-id"] == "0-1"
    log = page.locator("#job-log li").all_inner_texts()
    assert log[:2] == ["Started", "The event stream ended early; reconnecting…"], log


# --------------------------------------------------------------------------- models


def test_models_panel_lists_the_registry_and_acts_with_the_admin_key(
    page: Page, site: Site
) -> None:
    open_page(page, site.url)
    for model_id in SHIPPED_MODELS:
        card = page.locator(f"#models-list [data-model-id='{model_id}']")
        expect(card.locator(".badge.served")).to_be_visible()
        expect(card.locator("tbody tr")).to_have_count(1)
    expect(page.locator("#models-summary")).to_contain_text("Served: " + ", ".join(SHIPPED_MODELS))
    expect(page.get_by_role("button", name=f"Pin {SHIPPED_MODELS[0]}")).to_have_count(0)

    page.fill("#admin-key", "wrong")
    page.get_by_role("button", name=f"Pin {SHIPPED_MODELS[0]}").click()
    expect(page.locator("#models-error")).to_contain_text("Missing or wrong X-Api-Key.")

    page.fill("#admin-key", ADMIN_KEY)
    with page.expect_request(f"**/v1/admin/models/{SHIPPED_MODELS[0]}/pin") as sent:
        page.get_by_role("button", name=f"Pin {SHIPPED_MODELS[0]}").click()
    assert sent.value.headers["x-api-key"] == ADMIN_KEY
    card = page.locator(f"#models-list [data-model-id='{SHIPPED_MODELS[0]}']")
    expect(card.locator("h3")).to_contain_text("pinned")
    expect(page.locator("#models-summary")).to_contain_text(f"Pin {SHIPPED_MODELS[0]}: done.")
    page.get_by_role("button", name=f"Unpin {SHIPPED_MODELS[0]}").click()
    expect(card.locator("h3")).not_to_contain_text("pinned")


# --------------------------------------------------------------------------- API key


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shipped ensemble behind `SECURITY__API_KEY`, no Redis."""
    model_dir = shipped_models(tmp_path_factory.mktemp("keyed") / "models")
    settings = make_settings(model_dir, SHIPPED_MODELS, {"SECURITY__API_KEY": PAGE_KEY})
    with serve_app(create_app(settings)) as url:
        yield url


def test_with_an_api_key_the_page_asks_for_it_and_reads_work_after(
    page: Page, keyed_url: str
) -> None:
    page.goto(f"{keyed_url}/")
    assert PAGE_KEY not in page.content()
    panel = page.locator("#key-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#api-key")).to_be_focused()
    expect(page.locator("#service")).to_have_text("Needs the API key.")

    page.fill("#api-key", "wrong-key")
    page.press("#api-key", "Enter")
    expect(panel).to_be_visible()  # the 401 asks again
    expect(page.locator("#key-why")).to_contain_text("refused this API key")

    page.fill("#api-key", PAGE_KEY)
    page.press("#api-key", "Enter")
    expect(panel).to_be_hidden()
    expect(page.locator("#service")).to_have_text("Serving ensemble_3_models (3 models)")
    with page.expect_request("**/v1/read") as sent:
        read_photo(page)
    assert sent.value.headers["x-api-key"] == PAGE_KEY
    assert page.evaluate("() => sessionStorage.getItem('handwriting-ai.api-key')") == PAGE_KEY


# --------------------------------------------------------------------------- keyboard


def focused(page: Page) -> str:
    """What has the focus: its id, else its accessible label, else its text."""
    described: object = page.evaluate(
        """() => {
            const el = document.activeElement;
            return el.id || el.getAttribute("aria-label") || el.textContent.trim();
        }"""
    )
    assert isinstance(described, str)
    return described


def tab_to(page: Page, target: str, *, limit: int = 60) -> list[str]:
    """Press Tab until `target` has the focus; the stops on the way, the target last."""
    stops: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        stops.append(focused(page))
        if stops[-1] == target:
            outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
            assert outline != "none", f"no visible focus on {target}"
            return stops
    raise AssertionError(f"Tab never reached {target!r}: {stops}")


def test_the_keyboard_reaches_the_photo_input_corrections_and_train_form(
    page: Page, site: Site
) -> None:
    open_page(page, site.url)
    page.locator("body").click(position={"x": 2, "y": 2})
    assert "read-drawing" in tab_to(page, "photo")
    read_photo(page)  # a file chooser cannot be driven by keys: the file is set on the input

    with page.expect_request("**/v1/feedback") as sent:
        stops = tab_to(page, "It was a 2")
        page.keyboard.press("Enter")
    assert stops[:3] == ["It was a 0", "It was a 1", "It was a 2"]
    body = sent_json(sent.value)
    assert isinstance(body, dict)
    assert body["label"] == 2

    read_photo(page)  # a new reading: the buttons are offered again
    page.focus("#photo")
    with page.expect_request("**/v1/feedback") as sent:
        tab_to(page, "It was a 5")
        page.keyboard.press("Space")
    body = sent_json(sent.value)
    assert isinstance(body, dict)
    assert body["label"] == 5

    page.focus("#photo")
    tab_to(page, "train-model")
    assert tab_to(page, "train-start") == [
        "train-epochs",
        "train-augment",
        "train-feedback",
        "train-start",
    ]
