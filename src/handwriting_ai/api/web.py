"""The web page: `GET /` and its files under `/web/`, from the package, with a strict CSP.

The page is plain HTML, CSS and JavaScript modules in `handwriting_ai/web/` (they travel inside
the wheel; nothing is fetched from elsewhere). It holds no secret: the API key, when the service
has one, is typed by the person and sent by the page's own requests as `X-Api-Key`. The routes
stay out of the OpenAPI document, which describes the API, not its page.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from attrs import frozen
from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from handwriting_ai.errors import NotFoundError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# No inline script or style, nothing from another origin; images may be the reading's data URL.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@frozen
class WebFile:
    body: bytes
    media_type: str
    etag: str


@cache
def web_files(directory: Path = WEB_DIR) -> dict[str, WebFile]:
    """Every servable file of the page by name, read once: a name is never a path."""
    files: dict[str, WebFile] = {}
    for path in sorted(directory.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        files[path.name] = WebFile(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:16]}"')
    return files


def _answer(request: Request[object, object, State], name: str) -> Response[bytes]:
    found = web_files().get(name)
    if found is None:
        raise NotFoundError(f"No page file {name[:64]!r}.")
    # Revalidated on every load (an upgrade shows at once), answered 304 while unchanged.
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": found.etag}
    if request.headers.get("if-none-match") == found.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@get("/", include_in_schema=False)
async def index_page(request: Request[object, object, State]) -> Response[bytes]:
    return _answer(request, "index.html")


@get("/web/{name:str}", include_in_schema=False)
async def web_file(request: Request[object, object, State], name: FromPath[str]) -> Response[bytes]:
    return _answer(request, name)


ROUTES = [index_page, web_file]
