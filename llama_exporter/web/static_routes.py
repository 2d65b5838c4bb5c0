"""GET / and GET /ui/{path}: the page's files, read once at start-up, with a strict CSP.

Only files that exist under ``static/`` when the app is built can be served: the
path in a request is a key into that table, never joined onto a folder, so no
request can reach a file outside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}

# Same origin only: scripts, styles and connections (fetch and WebSocket) from the
# service itself, nothing inline, nothing framed. uPlot sets styles through the CSSOM
# (element.style), which style-src does not restrict.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Revalidate every time (cheap with the ETag): an upgraded service never serves
    # a page whose modules no longer match its API.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    """One file of the page, held in memory."""

    body: bytes
    content_type: str
    etag: str


def load_assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file under root, keyed by its path relative to root ('js/api.js')."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if not path.is_file() or content_type is None:
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, content_type, etag)
    if INDEX not in assets:
        raise RuntimeError(f"the page's {INDEX} is missing from {root}: reinstall llama-exporter")
    return assets


def _respond(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    return web.Response(body=asset.body, headers=headers)


def add_routes(app: web.Application, root: Path = STATIC_DIR) -> None:
    """Serve the page at GET / and its assets at GET /ui/{path} (public, no token)."""
    assets = load_assets(root)

    async def index(request: web.Request) -> web.Response:
        """The operator page."""
        return _respond(request, assets[INDEX])

    async def asset(request: web.Request) -> web.Response:
        """A static asset of the page (scripts, styles, the vendored chart library)."""
        path = request.match_info["path"]
        found = assets.get(path)
        if found is None:
            raise web.HTTPNotFound(text=f"no page asset {path!r}")
        return _respond(request, found)

    app.router.add_get("/", index)
    app.router.add_get("/ui/{path:.+}", asset)
