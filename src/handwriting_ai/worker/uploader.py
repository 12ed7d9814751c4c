"""Upload a run's artifacts to the API (`POST /v1/admin/models/upload`), retrying transient errors.

Transient: a connection error, a timeout, 429 or 5xx. Anything else (a wrong key, a refused
manifest) fails at once; either way the caller treats a failed upload as a system failure.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from attrs import frozen

from handwriting_ai.inference.store import MANIFEST_FILE, METRICS_FILE, MODEL_FILE
from handwriting_ai.logging import get_logger

log = get_logger(__name__)
UPLOAD_TIMEOUT_S = 120.0
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


class UploadError(RuntimeError):
    """The artifacts did not reach the API; the job is failed as a system failure."""


@frozen
class Uploaded:
    status: int
    version: str
    model_bytes: int
    manifest_bytes: int


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _parse(response: httpx.Response) -> Uploaded:
    body: object = response.json()
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


async def upload_artifacts(
    directory: Path,
    model_id: str,
    *,
    api_url: str,
    api_key: str,
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
) -> Uploaded:
    files = {
        "model": (MODEL_FILE, (directory / MODEL_FILE).read_bytes(), "application/octet-stream"),
        "manifest": (MANIFEST_FILE, (directory / MANIFEST_FILE).read_bytes(), "application/json"),
        "metrics": (METRICS_FILE, (directory / METRICS_FILE).read_bytes(), "application/json"),
    }
    url = api_url.rstrip("/") + "/v1/admin/models/upload"
    problem = ""
    async with httpx.AsyncClient(timeout=UPLOAD_TIMEOUT_S) as client:
        for attempt, delay_s in enumerate((*retry_delays_s, None), start=1):
            try:
                response = await client.post(
                    url, data={"model_id": model_id}, files=files, headers={"X-Api-Key": api_key}
                )
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 201 or response.status_code == 200:
                    return _parse(response)
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if not _transient(response.status_code):
                    raise UploadError(f"upload refused: {problem}")
            log.warning("upload_retry", attempt=attempt, problem=problem)
            if delay_s is None:
                break
            await asyncio.sleep(delay_s)
    raise UploadError(f"upload failed after {len(retry_delays_s) + 1} attempts: {problem}")
