"""The operator page's routes: files, headers (CSP), no inline code, every asset present."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from test_api import API, Client, MakeClient, make_config

from llama_exporter.http import api_json
from llama_exporter.http.app import create_app
from llama_exporter.web.static_routes import STATIC_DIR, add_routes, load_assets


@pytest.fixture
async def client(aiohttp_client: MakeClient) -> Client:
    """The page's routes behind the API's error middleware, as in the service."""
    app = web.Application(middlewares=[api_json.error_middleware])
    add_routes(app)
    return await aiohttp_client(app)


def _csp(header: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


async def test_index_is_served_with_a_strict_policy(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>llama-exporter</title>" in await resp.text()
    csp = _csp(resp.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert not any("unsafe" in value or "*" in value for v in csp.values() for value in v)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/js/main.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("/ui/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
        ("/ui/vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ],
)
async def test_assets_have_their_types(client: Client, path: str, content_type: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200, path
    assert resp.headers["Content-Type"] == content_type
    assert resp.headers["Content-Security-Policy"]
    assert (STATIC_DIR / path.removeprefix("/ui/")).read_bytes() == await resp.read()


async def test_revalidation_answers_304(client: Client) -> None:
    first = await client.get("/ui/js/api.js")
    etag = first.headers["ETag"]
    again = await client.get("/ui/js/api.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert first.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nothing.js",
        "/ui/../static_routes.py",
        "/ui/%2e%2e/static_routes.py",
        "/ui/js/../../static_routes.py",
        "/ui/js",
        "/ui//etc/passwd",
    ],
)
async def test_nothing_outside_the_page_is_served(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    body = await resp.json()
    assert body["error"]["code"] == 404


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.refs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            self._in_script = True
            if not names.get("src"):
                self.problems.append("<script> without src")
        for key in ("src", "href"):
            value = names.get(key)
            if value and value.startswith("/ui/"):
                self.refs.append(value)
            elif value and key == "src":
                self.problems.append(f"{tag} {key}={value} is not a local asset")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")


def test_index_has_no_inline_code_and_every_reference_exists() -> None:
    parser = _Inline()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.problems == []
    assets = load_assets()
    assert parser.refs, "the page references no assets"
    for ref in parser.refs:
        assert ref.removeprefix("/ui/") in assets, ref


def _imports(path: Path) -> list[str]:
    text = path.read_text()
    return re.findall(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", text, flags=re.M | re.S)


def test_every_module_import_resolves_to_a_served_file() -> None:
    assets = load_assets()
    modules = sorted((STATIC_DIR / "js").glob("*.js"))
    assert len(modules) >= 5
    for module in modules:
        for target in _imports(module):
            assert target.startswith("./"), f"{module.name} imports {target}: only local modules"
            assert f"js/{target.removeprefix('./')}" in assets, f"{module.name} imports {target}"


def test_scripts_never_write_html_or_evaluate_strings() -> None:
    for module in (STATIC_DIR / "js").glob("*.js"):
        text = module.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function"):
            assert banned not in text, f"{module.name} uses {banned}"
        assert "console.log" not in text, f"{module.name} logs to the console"


def test_vendored_chart_library_keeps_its_licence() -> None:
    vendor = STATIC_DIR / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    banner = (vendor / "uPlot.iife.min.js").read_text()[:60]
    assert banner.startswith("/*! https://github.com/leeoniya/uPlot (v")
    assert "npm pack uplot@" in (vendor / "SOURCE.txt").read_text()


async def test_the_service_serves_the_page_and_the_host_values(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin)))
    page = await client.get("/")
    assert page.status == 200
    assert "Content-Security-Policy" in page.headers
    # The host is sampled from the start, with no model ready: the page shows it at once.
    status = await (await client.get(f"{API}/status")).json()
    host = status["host"]
    assert set(host) == {"cpu_utilization_ratio", "memory_total_bytes", "memory_used_bytes"}
    assert 0 <= host["cpu_utilization_ratio"] <= 1
    assert 0 < host["memory_used_bytes"] <= host["memory_total_bytes"]


def test_every_page_file_ships_in_the_package() -> None:
    """pyproject's package-data globs cover every file the page serves (wheel installs)."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["llama_exporter.web"]
    package = STATIC_DIR.parent
    shipped = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert files - shipped == set()
    assert {f"static/{name}" for name in load_assets()} <= {
        p.relative_to(package).as_posix() for p in shipped
    }


def test_every_module_is_preloaded() -> None:
    """The page names each module up front, so the browser fetches them in parallel."""
    parser = _Inline()
    parser.feed((STATIC_DIR / "index.html").read_text())
    modules = {f"/ui/js/{p.name}" for p in (STATIC_DIR / "js").glob("*.js")}
    assert modules - {"/ui/js/main.js"} <= set(parser.refs)
