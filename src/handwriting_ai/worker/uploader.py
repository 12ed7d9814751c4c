"""Upload a run's artifacts to the API (`POST /v1/admin/models/upload`), retrying transient errors.

Transient: a connection error, a timeout, 429 or 5xx; those are retried with capped exponential
backoff until the caller's deadline, so an API that restarts for a minute costs a wait, never a
retrain (the artifacts stay on disk meanwhile). A refused key (401/403) is a configuration error
(`UploadKeyError`), checked once at worker start by `check_upload_key`; any other 4xx is a refusal
of these artifacts (`UploadRefusedError`), which retraining would not change.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
from attrs import frozen

from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE
from handwriting_ai.logging import get_logger

log = get_logger(__name__)
UPLOAD_TIMEOUT_S = 120.0
CHECK_TIMEOUT_S = 5.0
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0


class UploadError(RuntimeError):
    """The artifacts did not reach the API before the deadline."""


class UploadRefusedError(UploadError):
    """The API refused these artifacts (4xx other than a key problem): not worth a retry."""


class UploadKeyError(UploadError):
    """The API refused the upload key: the worker's configuration is wrong."""


def key_problem(status: int, api_url: str) -> str:
    return (
        f"the API at {api_url} refused the upload key (HTTP {status}): set HANDWRITING_API_KEY"
        " to the API's upload key (SECURITY__ADMIN_KEY, else SECURITY__API_KEY)"
    )


@frozen
class Uploaded:
    status: int
    version: str
    model_bytes: int
    manifest_bytes: int


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _parse(response: httpx.Response) -> Uploaded:
    try:
        body: object = response.json()
    except ValueError:
        raise UploadError(f"upload answer is not JSON: {response.text[:300]!r}") from None
    if not isinstance(body, dict):
        raise UploadError(f"unexpected upload answer {body!r}")
    version, model_bytes, manifest_bytes = (
        body.get("version"),
        body.get("model_bytes"),
        body.get("manifest_bytes"),
    )
    if not (
        isinstance(version, str)
        and isinstance(model_bytes, int)
        and isinstance(manifest_bytes, int)
    ):
        raise UploadError(f"unexpected upload answer {json.dumps(body)[:300]}")
    return Uploaded(response.status_code, version, model_bytes, manifest_bytes)


def backoff_s(attempt: int) -> float:
    """Delay after failed attempt `attempt` (from 1): 0.5, 1, 2, ... capped at 15 s."""
    return float(min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** min(attempt - 1, 16)))


async def upload_artifacts(
    directory: Path,
    model_id: str,
    *,
    api_url: str,
    api_key: str,
    deadline: float,
    on_retry: Callable[[], None] = lambda: None,
) -> Uploaded:
    """Upload until it succeeds, is refused, or `deadline` (event-loop time) passes; `on_retry`
    is called before each retry (the worker counts them)."""
    files = {
        "model": (MODEL_FILE, (directory / MODEL_FILE).read_bytes(), "application/octet-stream"),
        "manifest": (MANIFEST_FILE, (directory / MANIFEST_FILE).read_bytes(), "application/json"),
        "metrics": (METRICS_FILE, (directory / METRICS_FILE).read_bytes(), "application/json"),
    }
    url = api_url.rstrip("/") + "/v1/admin/models/upload"
    loop = asyncio.get_running_loop()
    problem = ""
    attempt = 0
    async with httpx.AsyncClient(timeout=UPLOAD_TIMEOUT_S) as client:
        while True:
            attempt += 1
            try:
                response = await client.post(
                    url, data={"model_id": model_id}, files=files, headers={"X-Api-Key": api_key}
                )
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in (200, 201):
                    return _parse(response)
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code in (401, 403):
                    raise UploadKeyError(key_problem(response.status_code, api_url))
                if not _transient(response.status_code):
                    raise UploadRefusedError(f"upload refused: {problem}")
            delay_s = backoff_s(attempt)
            if loop.time() + delay_s > deadline:
                break
            log.warning("upload_retry", attempt=attempt, problem=problem, retry_in_s=delay_s)
            on_retry()
            await asyncio.sleep(delay_s)
    raise UploadError(f"upload failed after {attempt} attempts: {problem}")


async def check_upload_key(api_url: str, api_key: str) -> str | None:
    """At worker start: the problem with the upload key, or None when the API accepts it or
    cannot say yet (unreachable, or an API without `/v1/admin/ping`)."""
    url = api_url.rstrip("/") + "/v1/admin/ping"
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as client:
            response = await client.get(url, headers={"X-Api-Key": api_key})
    except httpx.HTTPError as exc:
        log.warning("upload_key_unchecked", api_url=api_url, error=f"{type(exc).__name__}: {exc}")
        return None
    if response.status_code in (401, 403):
        return key_problem(response.status_code, api_url)
    return None
