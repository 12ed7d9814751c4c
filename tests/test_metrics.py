"""`GET /metrics` of a live API on a real Redis, read as Prometheus reads it: the exposition
format parsed by prometheus-client's own parser, never grepped. Reads by outcome and code, the
latency and stage histograms, the served versions, and the gauges of live state (reads in flight,
the read queue, open SSE streams) move with what the API does."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

import stream_helpers
from handwriting_ai.api.app import create_app
from helpers import Artifact, make_settings, png_bytes, seven
from stream_helpers import completed, publish, started
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_reads_refusals_and_event_streams(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    settings = make_settings(model_dir, ["tiny_seven"], {"REDIS_URL": redis_url})
    with serve_app(create_app(settings)) as api, httpx.Client(base_url=api, timeout=30) as http:
        before = scrape(http)
        assert value(before, "digits_reads_total", outcome="ok", code="") == 0
        served = {k: v for k, v in before.items() if k[0] == "digits_model_served"}
        labels = (("arch", seven_model.arch), ("model_id", "tiny_seven"))
        assert served == {("digits_model_served", (*labels, ("version", seven_model.version))): 1}
        assert value(before, "digits_model_swaps_total") == 0
        assert value(before, "digits_reads_in_flight") == 0
        assert value(before, "digits_read_queue_depth") == 0

        image = png_bytes(seven())
        for _ in range(3):
            ok = http.post("/v1/read", files={"file": ("d.png", image, "image/png")})
            assert ok.status_code == 200, ok.text
        gif = http.post("/v1/read", files={"file": ("d.png", b"GIF89a" + bytes(64), "image/png")})
        assert gif.status_code == 415
        blank = http.post("/v1/read", files={"file": ("b.png", png_bytes(seven() * 0 + 255))})
        assert blank.status_code == 400
        assert http.get("/v1/nothing-here").status_code == 404  # not a read: not counted

        after = scrape(http)
        assert value(after, "digits_reads_total", outcome="ok", code="") == 3
        assert (
            value(after, "digits_reads_total", outcome="refused", code="unsupported_media_type")
            == 1
        )
        assert (
            value(after, "digits_reads_total", outcome="refused", code="preprocessing_failed") == 1
        )
        assert sum(v for (name, _), v in after.items() if name == "digits_reads_total") == 5
        assert value(after, "digits_read_seconds_count") == 3
        assert value(after, "digits_read_seconds_sum") > 0
        for stage in ("decode", "preprocess", "forward"):
            assert value(after, "digits_read_stage_seconds_count", stage=stage) == 3
            assert value(after, "digits_read_stage_seconds_sum", stage=stage) > 0
        # The stages happen inside the read: together they cannot take longer than it.
        stages = sum(
            value(after, "digits_read_stage_seconds_sum", stage=s)
            for s in ("decode", "preprocess", "forward")
        )
        assert stages <= value(after, "digits_read_seconds_sum")
        assert value(after, "digits_read_seconds_bucket", le="+Inf") == 3

        # An open event stream shows while it is open, and goes when it ends.
        posted = http.post("/v1/train", json={"request_id": "m-1", "model_id": "mnist_digitnet_v1"})
        assert posted.status_code == 202, posted.text
        opened, done = threading.Event(), threading.Event()

        def follow() -> None:
            with httpx.stream("GET", f"{api}/v1/train/m-1/events", timeout=30) as response:
                opened.set()
                for _ in response.iter_lines():
                    pass
            done.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(10)
        assert value(scrape(http), "digits_sse_streams_open") == 1
        publish(redis_url, started("m-1"), completed("m-1"))
        assert done.wait(10)
        reader.join(5)
        assert value(scrape(http), "digits_sse_streams_open") == 0
