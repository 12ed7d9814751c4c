"""The HTTP floor for `POST /v1/read`: Litestar + uvicorn with no model and no preprocessing.

It parses the multipart form like the real handler (`await request.form()`, reads the `file`
part) and answers a fixed `{digit, confidence, probs}`, under the same uvicorn settings as
`digits serve` (one process, loopback, no access log). `ops/bench_read.py` starts it to measure
what any server on this stack pays before reading a digit.

    python ops/read_floor.py --port 8001     # ready when GET /readyz answers 200
"""

from __future__ import annotations

import argparse
import sys

import uvicorn
from litestar import Litestar, Request, get, post
from litestar.datastructures import State, UploadFile
from litestar.exceptions import ClientException

from handwriting_ai.supervisor.up import API_GRACEFUL_S

# Far above any upload the benchmark sends (a 12 MP JPEG is a few MB): the floor never refuses.
MAX_BODY_BYTES = 256 * 1024 * 1024
FIXED_PROBS = [0.001] * 10
FIXED_PROBS[7] = 0.991
FIXED_ANSWER: dict[str, int | float | list[float]] = {
    "digit": 7,
    "confidence": 0.991,
    "probs": FIXED_PROBS,
}


@post("/v1/read", status_code=200)
async def read(request: Request[object, object, State]) -> dict[str, int | float | list[float]]:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ClientException("Missing the 'file' part (an image file).")
    await upload.read()
    await upload.close()
    return FIXED_ANSWER


@get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[read, readyz],
        request_max_body_size=MAX_BODY_BYTES,
        multipart_form_part_limit=16,
        logging_config=None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=API_GRACEFUL_S,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
